"""The calls on the machine: ``a`` (wheels, first half of the data, CUDA tests, benchmark), ``b`` (rest of the data,
budgeted training, short verification, release), and the later ``verify-source`` and ``verify`` (the full suite on
a release, under a deadline). Each stages what it produces in ``$OUT`` as it appears."""
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from fsr_hub.cli import fsr_flags

from .plan import (
    BATCHES_A, BATCHES_ALL, BATCHES_TEST, CARRY_A, CARRY_B, CARRY_V, CARRY_VS, CIFAR, JOB, RUN, SITE, VOUT, WEIGHTS,
    VERIFY_PRESET, JobError, JobSettings, LeasePlan, PathLike,
)
from .lease_state import PARTS, check_carried, land_state, pack_state, stage_state_parts, state_progress
from .staging import Log, Stager, digest, install_wheels, out_dir, read_json, run, unpack, write_state

__all__ = ['job_a', 'job_b', 'job_c', 'job_r', 'job_verify_source', 'job_verify']


def job_a(root: PathLike, benchmark_seconds: Optional[float] = None,
          started: Optional[float] = None) -> Dict[str, Any]:
    """First device call: wheels, first half of the data, CUDA tests, benchmark -> the training path for b.
    ``started``: when the call's process started (default: now)."""
    root = Path(root)
    start = started or time.time()
    out = out_dir()
    log = Log(out / 'job-a.log')
    settings = JobSettings.from_dict(read_json(root / CARRY_A / 'job.json', 'the job settings of prepare'))
    state: Dict[str, Any] = {'a_start': start, 'step': 'eager', 'why': 'default'}
    write_state(root, 'a.json', state)  # b plans from this start time even if a fails later
    log(f'call a on {root}; model {settings.name}')
    log.phase('install wheels', lambda: install_wheels(root, root / CARRY_A / 'wheels', log))
    log.phase('unpack train_1..3', lambda: unpack(root, root / CARRY_A / 'unpack.py', root / CARRY_A, BATCHES_A,
                                                   settings.md5, log))
    p = settings.plan
    rc_tests = log.phase('cuda tests', lambda: run([sys.executable, '-m', 'pytest'] + settings.pytest_args, root,
                                                    log, timeout=p.tests))
    bench = root / JOB / 'benchmark.json'
    bench.unlink(missing_ok=True)
    seconds = p.benchmark if benchmark_seconds is None else benchmark_seconds
    rc_bench = log.phase('benchmark', lambda: run(
        [sys.executable, 'tools/benchmark.py', '--model', settings.model, '--seconds', f'{seconds:g}',
         '--json', bench, *settings.benchmark_args], root, log, timeout=seconds + 60))
    state.update(tests_rc=rc_tests, benchmark_rc=rc_bench)
    if rc_tests not in (0, 5):  # 5: no test collected (no CUDA tests at all)
        state.update(step='eager', why=f'pytest -m cuda failed (exit {rc_tests}): the fast path is not trusted')
    elif rc_bench != 0 or not bench.is_file():
        state.update(step='eager', why=f'the benchmark failed (exit {rc_bench}): the eager reference path')
    else:
        result = read_json(bench, 'the benchmark result')
        paths = result.get('paths') or {}
        fastest = result.get('fastest')
        if fastest not in paths:
            state.update(step='eager', why=f'the benchmark named no measured path ({fastest!r})')
        else:
            state.update(step=fastest, why='fastest in the benchmark',
                         seconds_per_epoch={k: (v or {}).get('seconds_per_epoch') for k, v in paths.items()})
        shutil.copyfile(bench, out / 'benchmark.json')
    state['phases'] = log.phases
    state['a_seconds'] = round(time.time() - start, 2)
    write_state(root, 'a.json', state)
    log(f'training path for b: {state["step"]} ({state["why"]}); call a took {state["a_seconds"]:.0f} s')
    return state


def _train_cmd(settings: JobSettings, minutes: float, step: str) -> List[str]:
    length = ['--epochs', str(settings.epochs)] if settings.epochs else ['--time-budget', f'{minutes:.3f}']
    return [sys.executable, 'tools/train.py', '--model', settings.model, '--data', str(CIFAR), '--out', str(RUN),
            *length, '--step', step, '--fp16', '--no-progress', '--resume', *settings.train_args]


def _verify_cmd(settings: JobSettings, weights: Path, minutes: float, summary: Optional[Path]) -> List[str]:
    return [sys.executable, 'tools/verify.py', '--model', settings.model, '--tag', settings.tag, '--weights',
            str(weights), '--data', str(CIFAR), '--preset', VERIFY_PRESET, '--deadline-minutes', f'{minutes:.3f}',
            '--out', str(RUN / 'results.json'), '--no-progress',
            *(['--train-summary', str(summary)] if summary else []), *settings.verify_args]


def _b_train(root: Path, settings: JobSettings, step: str, budget: float, finishes: bool, log: Log,
             stager: Stager, state: Dict[str, Any]) -> Optional[Path]:
    """Call b's training under ``budget`` seconds, the best checkpoint and the summary staged as they appear;
    returns the weights to verify, or None when a run of fixed epochs is left unfinished (``finishes`` False: it is
    stopped at the budget, its best weights not staged, to leave $OUT to its state)."""
    plan, folder = settings.plan, root / RUN
    folder.mkdir(parents=True, exist_ok=True)
    best, final = folder / 'best.safetensors', folder / 'final.safetensors'
    summary = folder / 'train_summary.json'
    stager.start(([(best, WEIGHTS)] if finishes else []) + [(summary, 'train_summary.json')])
    grace = max(plan.train_grace, 0.1 * budget) if finishes else 0.0
    try:
        state['train_rc'] = log.phase(f'train ({budget / 60:.2f} min)', lambda: run(
            _train_cmd(settings, budget / 60, step), root, log, timeout=budget + grace, interrupt_first=True))
    finally:
        stager.stop()
    if settings.epochs:
        if not summary.is_file():
            raise JobError(f'training finished no epoch in {budget:.0f} s (exit {state["train_rc"]}): there is no '
                           f'run state to continue from.')
        progress = state_progress(read_json(summary, 'the training summary'))
        state['progress'] = progress
        if not progress['complete']:
            return None
    weights = best if best.is_file() else final
    if not weights.is_file():
        raise JobError(f'training left no weights in {folder} (exit {state["train_rc"]}).')
    if weights == final or not finishes:
        # the weights come back even if the verification that follows overruns the call (a run that was expected
        # to stop unfinished staged no weights while it trained)
        stager.stage(weights, WEIGHTS)
    return weights


def _b_verify(root: Path, settings: JobSettings, weights: Path, b_end: float, log: Log, stager: Stager,
              state: Dict[str, Any]) -> None:
    """Call b's short verification of ``weights``, to end by ``b_end`` less the release's share; results.json is
    staged while verify rewrites it."""
    plan, folder = settings.plan, root / RUN
    summary = folder / 'train_summary.json'
    verify_s = b_end - time.time() - plan.release
    if verify_s < plan.min_verify:
        log(f'training ran late: verification gets its minimum of {plan.min_verify:.0f} s, not {verify_s:.0f} s')
        verify_s = plan.min_verify
    state['verify_deadline_s'] = round(verify_s, 1)
    (folder / 'results.json').unlink(missing_ok=True)  # never stage a report of an earlier run
    stager.start([(folder / 'results.json', 'results.json')])
    try:
        rc = log.phase(f'verify ({verify_s / 60:.2f} min)', lambda: run(
            _verify_cmd(settings, weights.relative_to(root), (verify_s - plan.tool_start) / 60,
                        summary.relative_to(root) if summary.is_file() else None), root, log,
            timeout=verify_s + 30, interrupt_first=True))
        if rc == 2 and summary.is_file():
            log('verify refused the summary (of another checkpoint?): verifying without it')
            again = max(b_end - time.time() - plan.release, plan.min_verify)
            rc = log.phase('verify without summary', lambda: run(
                _verify_cmd(settings, weights.relative_to(root), (again - plan.tool_start) / 60, None), root, log,
                timeout=again + 30, interrupt_first=True))
    finally:
        stager.stop()
    state['verify_rc'] = rc
    if not (folder / 'results.json').is_file():
        raise JobError(f'verification wrote no report (exit {rc}).')


def _b_release(root: Path, settings: JobSettings, log: Log, stager: Stager) -> None:
    """Call b's release folder (make_card), staged: config.json, results.json, the card, its plots and the weight
    parts."""
    rc = log.phase('release folder', lambda: run(
        [sys.executable, 'tools/make_card.py', str(RUN / 'results.json'), '--out', str(RUN / 'cards'),
         '--overwrite'], root, log))
    folder = root / RUN / 'cards' / settings.name
    if rc or not (folder / 'README.md').is_file():
        raise JobError(f'make_card failed (exit {rc}); weights, summary and results.json are staged.')
    for name in ['config.json', 'results.json', 'README.md'] + sorted(p.name for p in folder.glob('*.png')):
        stager.stage(folder / name, name)  # the plots the card embeds (per_class.png) travel with it
    stager.stage(folder / WEIGHTS, WEIGHTS)
    stager.check_limits()


def _missed_floors(floors: Mapping[str, float], report: Path) -> Dict[str, str]:
    """The floors (metric -> least accuracy on all test images) that the verify report misses, in words."""
    results = read_json(report, 'the verify report').get('results') or {}
    missed = {}
    for metric, floor in floors.items():
        r = results.get(metric) or {}
        if r.get('accuracy') is None or not str(r.get('subset', '')).startswith('all'):
            missed[metric] = f'not measured on all test images (floor {floor:g})'
        elif r['accuracy'] < floor:
            missed[metric] = f'{r["accuracy"]:g} < {floor:g}'
    return missed


def _b_budget(root: Path, settings: JobSettings, a: Mapping[str, Any], b_end: float, leave_end: float, log: Log,
              state: Dict[str, Any]) -> Tuple[float, bool]:
    """Call b's training seconds and whether the run finishes in them: a time-budget run always does; a run of
    fixed epochs lands the state the r calls carried, if any, and finishes when its epochs left fit."""
    plan = settings.plan
    if not settings.epochs:
        return max(b_end - time.time() - plan.verify - plan.release, plan.min_train), True
    landed = log.phase('land the run state', lambda: land_state(root, log))
    if landed is not None and (landed.get('epochs'), landed.get('model')) != (settings.epochs, settings.model):
        raise JobError(f'the carried state is of a {landed.get("model")} run of {landed.get("epochs")} epochs, not '
                       f'the {settings.model} run of {settings.epochs} prepare set.')
    history = _history(root)  # a b run before on this machine may have gone further than the carried state
    done = len(history)
    times = [e['epoch_seconds'] for e in history if e.get('epoch_seconds')]
    per_epoch = sorted(times)[len(times) // 2] if times else (a.get('seconds_per_epoch') or {}).get(a.get('step'))
    budget, finishes = plan.fixed_epochs_budget(b_end, time.time(), settings.epochs - done, per_epoch, leave_end)
    state.update(epochs_done_before=done, seconds_per_epoch=per_epoch, finishes=finishes)
    log(f'{settings.epochs - done} of {settings.epochs} epochs left at ~{per_epoch or 0:.1f} s each: '
        f'{"they fit this call; verify and release follow" if finishes else "train to the end of this call"}')
    return budget, finishes


def _history(root: Path) -> List[Dict[str, Any]]:
    summary = root / RUN / 'train_summary.json'
    return (read_json(summary, 'the training summary').get('history') or []) if summary.is_file() else []


def _b_leave_state(root: Path, log: Log, stager: Stager, state: Dict[str, Any]) -> None:
    """An unfinished run: its state packed and staged, as much as comes back with b; the rest for c calls."""
    manifest = log.phase('pack the run state', lambda: pack_state(root / RUN, root / PARTS))
    left = stage_state_parts(root / PARTS, stager.out, log)
    state['continue'] = {'epochs_done': manifest['epochs_done'], 'epochs': manifest['epochs'],
                         'parts': len(manifest['parts']), 'parts_left': left}
    log(f'the run stops at epoch {manifest["epochs_done"]} of {manifest["epochs"]}; its state is '
        f'{manifest["bytes"] / 2 ** 20:.1f} MiB in {len(manifest["parts"])} parts, {len(left)} left for call c')


def job_c(root: PathLike) -> Dict[str, Any]:
    """The call after b when b left its run unfinished: the next parts of the run state that fit $OUT (repeat
    while parts are left)."""
    root = Path(root)
    out = out_dir()
    log = Log(out / 'job-c.log')
    left = stage_state_parts(root / PARTS, out, log)
    state = {'parts_left': left}
    write_state(root, 'c.json', state)
    log(f'{len(left)} parts left' + (': make another c call at once' if left else ''))
    return state


def job_r(root: PathLike, name: str) -> Dict[str, Any]:
    """An r call, before a: it carries part of the run state of an earlier lease; the parts are checked here."""
    state = check_carried(root, name)
    write_state(Path(root), f'{name}.json', state)
    return state


def job_b(root: PathLike, started: Optional[float] = None, lease_left: Optional[float] = None) -> Dict[str, Any]:
    """Second device call: rest of the data, md5, budgeted training, short verification, release, staging.
    ``started``: when the call's process started (default: now). ``lease_left``: the device time left when call a
    returned, as the machine reported it (see :meth:`LeasePlan.b_end`); without it b plans from a's recorded
    start."""
    root = Path(root)
    b_start = started or time.time()
    out = out_dir()
    log = Log(out / 'job.log')
    stager = Stager(out, log)
    settings = JobSettings.from_dict(read_json(root / CARRY_A / 'job.json', 'the job settings of prepare'))
    a = read_json(root / JOB / 'a.json', "call a's record (was call a run on this machine, just before?)")
    if not (root / SITE).is_dir():
        raise JobError(f'{root / SITE} is missing: call a did not finish on this machine; run a, then b at once.')
    plan, a_start = settings.plan, float(a['a_start'])
    b_end = plan.b_end(a_start, b_start, lease_left)
    # an unfinished run leaves lease time for the c calls that take the rest of its state
    leave_end = plan.b_end(a_start, b_start, lease_left, reserve=plan.c) if settings.epochs else b_end
    log(f'call b: {settings.name}, path {a.get("step")} ({a.get("why")}); '
        f'{b_start - a_start:.0f} s after a started; b must end within {b_end - b_start:.0f} s'
        + (f' ({leave_end - b_start:.0f} s if it leaves the run unfinished)' if leave_end != b_end else ''))
    state: Dict[str, Any] = {'b_start': b_start, 'a': a, 'lease_left_s': lease_left}
    try:
        log.phase('unpack train_4..5 + test, md5 of all',
                  lambda: unpack(root, root / CARRY_A / 'unpack.py', root / CARRY_B, BATCHES_ALL, settings.md5, log))
        budget, finishes = _b_budget(root, settings, a, b_end, leave_end, log, state)
        state['train_budget_s'] = round(budget, 1)
        weights = _b_train(root, settings, a.get('step') or 'eager', budget, finishes, log, stager, state)
        if weights is None:
            _b_leave_state(root, log, stager, state)
            return state
        _b_verify(root, settings, weights, b_end, log, stager, state)
        missed = _missed_floors(settings.floors, root / RUN / 'results.json')
        if missed:
            state['floors_missed'] = missed
            log(f'floors missed ({"; ".join(f"{k} {v}" for k, v in missed.items())}): no release folder; the '
                f'weights, summary and report are staged')
            return state
        _b_release(root, settings, log, stager)
        state['released'] = settings.name
    finally:
        state['phases'] = log.phases
        state['b_seconds'] = round(time.time() - b_start, 2)
        write_state(root, 'b.json', state)
        log(f'call b took {state["b_seconds"]:.0f} s; staged: {", ".join(sorted(p.name for p in out.iterdir()))}')
    return state


def _source_landed(root: Path, settings: Mapping[str, Any]) -> bool:
    """Whether the transfer source prepare-verify named is on this machine (verify-source landed it), with its
    sha256."""
    path = root / str(settings['transfer_from']).partition(':')[2]
    return path.is_file() and digest(path, 'sha256') == settings.get('transfer_sha256')


def job_verify_source(root: PathLike) -> Dict[str, Any]:
    """The call before verify when a transfer source is carried: it lands ``.data/vs`` on the machine and checks
    the file against the sha256 that prepare-verify recorded."""
    root = Path(root)
    meta = read_json(root / CARRY_VS / 'source.json', 'the transfer source record of prepare-verify --transfer-from')
    path = root / CARRY_VS / str(meta.get('file'))
    state = {'source': str(path.relative_to(root)), 'origin': meta.get('origin'),
             'sha256': digest(path, 'sha256') if path.is_file() else 'missing'}
    if state['sha256'] != meta.get('sha256'):
        raise JobError(f'{path}: sha256 {state["sha256"]}, but prepare-verify recorded {meta.get("sha256")}.')
    write_state(root, 'verify-source.json', state)
    return state


def job_verify(root: PathLike, deadline_minutes: Optional[float] = None, started: Optional[float] = None,
               tool_start: float = LeasePlan.tool_start) -> Dict[str, Any]:
    """One device call: the full suite on a release's weights under a deadline, continued from its results.json;
    the updated results.json is staged each time verify rewrites it. ``started``: the process start."""
    root = Path(root)
    start = started or time.time()
    out = out_dir()
    log = Log(out / 'job.log')
    stager = Stager(out, log)
    v = root / CARRY_V
    settings = read_json(v / 'job.json', 'the verify settings of prepare-verify')
    config = read_json(v / 'config.json', 'the release config')
    arch, tag = config.get('architecture'), (config.get('pretrained_cfg') or {}).get('tag')
    if not arch or not tag:
        raise JobError('config.json names no architecture and tag.')
    minutes = deadline_minutes if deadline_minutes is not None else float(settings.get('deadline_minutes', 8.5))
    tool_start = float(settings.get('tool_start', tool_start))
    log.phase('install wheels', lambda: install_wheels(root, v / 'wheels', log))
    log.phase('unpack test', lambda: unpack(root, v / 'unpack.py', v, BATCHES_TEST, settings['md5'], log,
                                            only='test'))
    report = root / VOUT / 'results.json'
    report.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(v / 'results.json', report)
    model_flags = fsr_flags({k: v for k, v in (config.get('model_args') or {}).items() if k != 'num_classes'})
    transfer: List[str] = []
    if settings.get('transfer_from'):
        if not _source_landed(root, settings):
            log(f'the transfer source {settings["transfer_from"]} is not on this machine with its sha256 (did '
                f'verify-source run just before, on the same warm machine?): the suite runs without the transfer '
                f'attack')
        else:
            transfer = ['--transfer-from', settings['transfer_from']]
    left = 60 * minutes - (time.time() - start)
    min_verify = float(settings.get('min_verify', LeasePlan.min_verify))
    if left < min_verify:
        log(f'setting up took long: verification gets its minimum of {min_verify:.0f} s, not {left:.0f} s')
        left = min_verify
    stager.start([(report, 'results.json')])
    try:
        rc = log.phase(f'verify --preset full ({left / 60:.2f} min)', lambda: run(
            [sys.executable, 'tools/verify.py', '--model', arch, '--tag', tag, '--weights', str(CARRY_V / WEIGHTS),
             '--data', str(CIFAR), '--preset', 'full', '--deadline-minutes', f'{(left - tool_start) / 60:.3f}',
             '--resume', str(VOUT / 'results.json'), '--out', str(VOUT / 'results.json'), '--no-progress',
             *model_flags, *transfer], root, log, timeout=left + 30, interrupt_first=True))
    finally:
        stager.stop()
    result = read_json(report, 'the verify report')
    log(f'verify exit {rc}; complete: {result.get("complete")}; not run: {result.get("not_run")}')
    state = {'rc': rc, 'complete': result.get('complete'), 'not_run': result.get('not_run'), 'phases': log.phases,
             'seconds': round(time.time() - start, 2), 'transfer_from': transfer[1] if transfer else None}
    write_state(root, 'verify.json', state)
    if rc not in (0, 124, 130):  # 124 / 130: stopped at the time limit; the partial report is staged
        raise JobError(f'tools/verify.py failed (exit {rc}); the report staged is the last one it wrote.')
    return state
