"""One function per kind of stage (:class:`~fsr_hub.attack_registry.Kind`), each measuring one stage of an
:class:`~fsr_hub.evaluate.runner.EvaluationRun` and recording its report entry there: the batch-wise attacks,
AutoAttack and NAttack (both resumable batch by batch), and the masking checks (resumable part by part)."""
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping

import torch

from ..attack_registry import MASKING, PGD100, REGISTRY, SPECS, WHITEBOX_REFERENCE, Kind
from ..attacks import linf_violation, pgd_trajectory
from ..autoattack import AA_KEYS, AAState, pack_flags, run_autoattack_resumable, unpack_flags
from ..blackbox import run_nattack
from ..hardware import synchronize
from ..schemas import partial_note, running_note
from .checks import STEPS_SWEEP, masking_parts, masking_result
from .measure import accuracy_entry, assert_eval, attack_fn, pct, run_batched

if TYPE_CHECKING:
    from .runner import EvaluationRun

__all__ = ['NATTACK_BATCH', 'BATCH_COST', 'batch_stage', 'autoattack_stage', 'nattack_stage', 'masking_stage',
           'STAGES']

#: images NAttack attacks together (each iteration queries ``npop`` candidates of each)
NATTACK_BATCH = 100
#: gradient evaluations per image of each batch-wise stage (for deadline estimates)
BATCH_COST = {a.name: a.cost for a in REGISTRY if a.kind is Kind.BATCH}
#: the white-box attacks whose accuracy bounds AutoAttack's robust points (AutoAttack aside)
_ITERATIVE = tuple(a for a in WHITEBOX_REFERENCE if SPECS[a].kind is Kind.BATCH)


def _library_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return '(version unknown)'


def batch_stage(run: 'EvaluationRun', name: str) -> None:
    """A batch-wise attack on the first n images (PGD-100 also records the steps sweep's trajectory)."""
    n = run.n_images(name)
    s = SPECS[name]
    if run.skip_if_late(name, s.cost * n):
        return
    p = run.config.params(name)
    if name == PGD100:
        def fn(xb, yb):
            # one PGD-100 run gives the steps sweep: without random start the k-th iterate is PGD-k's output
            x_adv, rec = pgd_trajectory(run.model, xb, yb, p['eps'], p['alpha'], p['steps'], record=STEPS_SWEEP)
            for k in STEPS_SWEEP:
                run.traj[k].append(rec[k].cpu())
            return x_adv
    else:
        fn = attack_fn(name, run.model, p, run.transfer_model)
    source_correct: List[torch.Tensor] = []

    def on_source(xb, yb, x_adv):
        # the source's own accuracy on what was crafted on it: shows the attack works where it was made
        with torch.no_grad():
            source_correct.append((run.transfer_model(x_adv).argmax(1) == yb).cpu())

    c = run.config
    synchronize(c.device)
    t0 = time.perf_counter()
    correct, worst = run_batched(fn, run.model, run.x[:n], run.y[:n], c.eps, c.batch_size, c.device, name,
                                 c.progress, clock=run.clock, extra=on_source if s.source else None)
    synchronize(c.device)
    seconds = time.perf_counter() - t0
    run.clock.record(s.cost * n, seconds)
    entry = {**accuracy_entry(correct, run.y, len(run.y), c.num_classes), 'seconds': round(seconds, 3),
             'max_bound_violation': worst}
    if p:
        entry['params'] = p
    if s.source:
        entry['source'] = c.source
        entry['source_accuracy'] = pct(torch.cat(source_correct))
    if s.blackbox:
        entry['implementation'] = f"torchattack {_library_version('torchattack')} {name.replace('_', '').upper()}"
    run.finish(name, entry, correct)


def _aa_units(run: 'EvaluationRun', name: str) -> float:
    # APGD-CE runs on the clean-correct points, the later sub-attacks on the points still robust
    clean = run.clean_accuracy() / 100
    robust = min([run.results[a]['accuracy'] for a in _ITERATIVE if a in run.results], default=100.0) / 100
    return clean * SPECS[name].cost + robust * SPECS[name].robust_cost


def autoattack_stage(run: 'EvaluationRun', name: str) -> None:
    """AutoAttack (the version of ``name``), continuing its saved progress; saves it after every batch."""
    n = run.n_images(name)
    c = run.config
    state = run.saved_progress.get(name)
    if state is not None and (state.get('n'), state.get('eps'), state.get('seed')) != (n, c.eps, c.seed):
        state = None  # progress on other images, at another eps or seed: start again
    # resumable: start when one batch fits (progress is saved batch by batch), not only when all of it does
    b = min(c.batch_size, n)
    if state is None:
        units = _aa_units(run, name)
        whole = run.clock.estimate(units * n)
        of_all = f' (all {n}: about {whole:.0f} s)' if whole is not None else ''
        if run.skip_if_late(name, units * b, f'its first batch of {b} images{of_all}'):
            return

    def save(st: AAState) -> None:
        run.saved_progress[name] = st.to_dict()
        run.not_run[name] = running_note(st.describe())
        run.update()

    refused: List[float] = []  # the estimate of the batch the deadline did not leave time for

    def should_stop(estimate: float) -> bool:
        if run.clock.fits(estimate):
            return False
        refused.append(estimate)
        return True

    res = run_autoattack_resumable(run.model, run.x[:n], run.y[:n], c.eps, AA_KEYS[name], c.batch_size, c.seed,
                                   c.device, state=state, should_stop=should_stop, on_batch=save,
                                   saved_speed=run.same_machine)
    assert_eval(run.model)
    run.saved_progress[name] = res.state.to_dict()
    if not res.complete:
        reason = run.clock.reason(refused[-1], 'its next batch') if refused else run.clock.reason()
        run.not_run[name] = partial_note(reason, res.state.describe())
        return
    entry = {**accuracy_entry(res.robust, run.y, len(run.y), c.num_classes), 'seconds': round(res.state.seconds, 3),
             'max_bound_violation': res.state.max_bound_violation, 'implementation': res.config['implementation'],
             'params': res.config,
             'robust_after': {k: round(100.0 * v / n, 2) for k, v in res.state.robust_after.items()}}
    if res.state.rebatched:  # the runs that continued it in other batch sizes (see fsr_hub.autoattack.rebatch)
        entry['rebatched'] = res.state.rebatched
    run.saved_progress.pop(name)
    run.finish(name, entry, res.robust)


def _nattack_units(run: 'EvaluationRun', p: Mapping[str, Any]) -> float:
    # per image: a query is a forward (0.4); misclassified images cost 1, robust ones max_queries, and broken
    # ones are guessed at a tenth of it until this run has measured its own mean
    clean = run.clean_accuracy() / 100
    robust = min([run.results[a]['accuracy'] for a in WHITEBOX_REFERENCE if a in run.results],
                 default=100 * clean) / 100
    return 0.4 * (1 + p['max_queries'] * (robust + 0.1 * max(clean - robust, 0.0)))


def _nattack_batch(run: 'EvaluationRun', state: Dict[str, Any], b: int, p: Mapping[str, Any]) -> None:
    """NAttack on the next ``b`` images; ``state`` (the saved progress) records the outcome."""
    i = state['done']
    device = run.config.device
    xb, yb = run.x[i:i + b].to(device), run.y[i:i + b].to(device)
    synchronize(device)
    t0 = time.perf_counter()
    kwargs = {k: v for k, v in p.items() if k != 'eps'}
    res = run_nattack(run.model, xb, yb, p['eps'], seed=run.config.seed + i, **kwargs)
    with torch.no_grad():
        ok = (run.model(res.x_adv).argmax(1) == yb).cpu()
    synchronize(device)
    seconds = time.perf_counter() - t0
    run.clock.record(0.4 * res.queries.sum().item(), seconds)
    state['correct'] = pack_flags(torch.cat([unpack_flags(state['correct'], i), ok]))
    state['success'] = pack_flags(torch.cat([unpack_flags(state['success'], i), res.success.cpu()]))
    state['queries'] = state['queries'] + res.queries.cpu().tolist()
    state['max_bound_violation'] = max(state['max_bound_violation'], linf_violation(res.x_adv, xb, run.config.eps))
    state['seconds'] = round(state['seconds'] + seconds, 3)
    state['done'] = i + b


def _nattack_entry(run: 'EvaluationRun', state: Mapping[str, Any], n: int, p: Mapping[str, Any]) -> Dict[str, Any]:
    correct, success = unpack_flags(state['correct'], n), unpack_flags(state['success'], n)
    q = torch.tensor(state['queries'], dtype=torch.float64)
    return {
        **accuracy_entry(correct, run.y, len(run.y), run.config.num_classes), 'seconds': state['seconds'],
        'max_bound_violation': state['max_bound_violation'], 'params': dict(p),
        'queries': {'mean': round(q.mean().item(), 1), 'median': float(q.median()), 'max': int(q.max()),
                    'median_to_success': float(q[success].median()) if success.any() else None},
        'successes': int(success.sum()),
        'implementation': 'fsr_hub.blackbox.run_nattack (Li et al. 2019, Algorithm 1)',
    }


def nattack_stage(run: 'EvaluationRun', name: str) -> None:
    """NAttack batch by batch, continuing its saved progress (of the same configuration); saves it after every
    batch and stops before a batch that does not fit the deadline."""
    n = run.n_images(name)
    p = run.config.params(name)
    batch = min(run.config.batch_size, NATTACK_BATCH)
    run_key = {'attack': name, 'n': n, 'batch': batch, 'seed': run.config.seed, 'params': p}
    state = run.saved_progress.get(name)
    if state is not None and any(state.get(k) != v for k, v in run_key.items()):
        state = None  # progress of another configuration: start again
    first_checked = state is None
    if state is None:
        b = min(batch, n)
        if run.skip_if_late(name, _nattack_units(run, p) * b, f'its first batch of {b} images'):
            return
        state = {**run_key, 'done': 0, 'correct': '', 'success': '', 'queries': [], 'seconds': 0.0,
                 'max_bound_violation': 0.0}
    while state['done'] < n:
        i = state['done']
        b = min(batch, n - i)
        if not first_checked:
            per_image = 0.4 * sum(state['queries']) / i if i else _nattack_units(run, p)
            need = run.clock.estimate(per_image * b)
            if not run.clock.fits(need):
                run.not_run[name] = partial_note(run.clock.reason(need), f'{i} of {n} images')
                return
        first_checked = False
        _nattack_batch(run, state, b, p)
        run.saved_progress[name] = state
        run.not_run[name] = running_note(f'{i + b} of {n} images done')
        run.update()
    run.saved_progress.pop(name)
    run.finish(name, _nattack_entry(run, state, n, p), unpack_flags(state['correct'], n))


def masking_stage(run: 'EvaluationRun') -> None:
    """The gradient-masking checks on the first ``masking_n`` images, part by part (:func:`masking_parts`),
    continuing their saved progress (of the same images and eps); saves it after every part and stops before a
    part that does not fit the deadline."""
    n = run.n_images(MASKING)
    run_key = {'n': n, 'eps': run.config.eps}
    state = run.saved_progress.get(MASKING)
    if state is None or any(state.get(k) != v for k, v in run_key.items()):
        state = {**run_key, 'parts': {}, 'seconds': 0.0}  # none yet, or of another configuration: start again
    parts = masking_parts(run.model, run.x, run.y, n, run.config, run.traj, run.clock)
    for i, (name, units, measure) in enumerate(parts):
        if name in state['parts']:
            continue
        done = len(state['parts'])
        left = run.clock.estimate(sum(u for k, u, _ in parts[i:] if k not in state['parts']) * n)
        rest = len(parts) - done
        what = f'its next part, {name}' + (f' (all {rest} left: about {left:.0f} s)' if left and rest > 1 else '')
        if run.skip_if_late(MASKING, units * n, what):
            if done:
                run.not_run[MASKING] = partial_note(run.not_run[MASKING], f'{done} of {len(parts)} parts')
            return
        t0 = time.perf_counter()
        state['parts'][name] = measure()
        seconds = time.perf_counter() - t0
        run.clock.record(units * n, seconds)
        state['seconds'] = round(state['seconds'] + seconds, 3)
        run.saved_progress[MASKING] = state
        run.not_run[MASKING] = running_note(f'{done + 1} of {len(parts)} parts done')
        run.update()
    run.masking = masking_result(n, state['parts'], state['seconds'])
    run.saved_progress.pop(MASKING, None)
    run.not_run.pop(MASKING)


#: the function that runs each kind of attack stage (the masking checks: :func:`masking_stage`)
STAGES: Dict[Kind, Callable[['EvaluationRun', str], None]] = {
    Kind.BATCH: batch_stage, Kind.AUTOATTACK: autoattack_stage, Kind.QUERY: nattack_stage,
}
