"""Robustness evaluation: the paper's white-box suite (Sec. 4.1), AutoAttack, transfer attacks, the black-box
attacks of its Table 3, and gradient-masking checks (Carlini et al. 2019), written as the ``fsr-hub/verify/v1``
report.

Attack names are fixed (they are the report's keys): ``clean``, ``fgsm``, ``pgd20``, ``pgd100``, ``cw``,
``autoattack``, ``autoattack_rand``, ``transfer``, ``ti_fgsm``, ``di_fgsm``, ``nattack``. FGSM, PGD-20/100 (step
eps/10) and C&W-inf (PGD-30 on the margin loss, kappa 50) start at x (no random start), as in the original FSR
code. ``transfer`` (PGD-20), ``ti_fgsm`` and ``di_fgsm`` are crafted on a source model (``transfer_model``) and
evaluated on the model; ``nattack`` queries the model's outputs only, on the first :data:`~fsr_hub.blackbox.NATTACK_N`
images unless ``subsets`` says otherwise (the paper's protocol), and saves its progress image batch by image batch
like AutoAttack. :func:`attack_params` is the one place the parameters of every attack but AutoAttack are written
(the report records them). The per-example Ensemble (Eq. 6) is correct under clean and every white-box suite
attack that ran. A black-box attack that beats the strongest iterative white-box attack by more than
:data:`BLACKBOX_TOL` points signals gradient masking (the ``blackbox_ge_whitebox`` check).

Stages run cheapest first (:data:`STAGE_ORDER`), each on all images or on the first ``subsets[name]``. After every
stage (and every AutoAttack or NAttack batch) ``on_update`` receives the evaluation so far, so a caller can write
a valid partial report at any moment; ``not_run`` says what was not run and why. A ``deadline`` skips a stage
whose estimated cost does not fit (AutoAttack and NAttack, which save their progress: whose first batch does not
fit) and stops one that runs out of time; a ``previous`` evaluation of the same weights and data is continued
(finished stages are kept, AutoAttack and NAttack resume from their saved progress). Attacks run in
strict float32: no autocast, float32 weights, and TF32 off for CUDA matmuls and cuDNN convolutions.
"""
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm import tqdm

from .attacks import cw_inf, fgsm, linf_violation, pgd, pgd_trajectory
from .autoattack import AA_KEYS, AAState, departures, pack_flags, run_autoattack_resumable, unpack_flags
from .blackbox import BLACKBOX_ATTACKS, BLACKBOX_PARAMS, NATTACK_N, di_fgsm, require_torchattack, run_nattack, ti_fgsm
from .hardware import hardware_name, strict_float32, synchronize
from .inputs import check_pixels
from .schemas import TRAIN_SCHEMA, VERIFY_SCHEMA
from .weights import sha256_file

__all__ = [
    'SCHEMA', 'ATTACKS', 'DEFAULT_ATTACKS', 'ENSEMBLE_ATTACKS', 'SOURCE_ATTACKS', 'STAGE_ORDER', 'DEFAULT_SUBSETS',
    'PRESETS', 'STEPS_SWEEP', 'EPS_SWEEP_255', 'BLACKBOX_TOL', 'attack_params', 'preset',
    'evaluate', 'model_info', 'build_report', 'parse_attacks', 'training_section',
]

SCHEMA = VERIFY_SCHEMA
ATTACKS = ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'autoattack', 'autoattack_rand', 'transfer') + BLACKBOX_ATTACKS
DEFAULT_ATTACKS = ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'autoattack', 'autoattack_rand')
ENSEMBLE_ATTACKS = ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw')
#: attacks crafted on a source model (``transfer_model``, ``--transfer-from``) and evaluated on the model
SOURCE_ATTACKS = ('transfer', 'ti_fgsm', 'di_fgsm')
MASKING = 'masking_checks'
#: the order stages run in: cheapest first (the masking checks work on a subset and cost ~2 PGD-100s of it; NAttack
#: on its 1,000 images costs less than AutoAttack on 10,000, more than AutoAttack rand on 1,000)
STAGE_ORDER = ('clean', 'fgsm', 'ti_fgsm', 'di_fgsm', 'pgd20', 'transfer', 'cw', 'pgd100', MASKING, 'autoattack_rand',
               'nattack', 'autoattack')
#: first-n subsets applied unless ``subsets`` names the attack: NAttack's protocol (the paper, after CAS)
DEFAULT_SUBSETS: Dict[str, int] = {'nattack': NATTACK_N}
#: preset -> (attacks, {attack: first-n subset}, masking checks on?)
PRESETS: Dict[str, Tuple[Tuple[str, ...], Dict[str, int], bool]] = {
    'quick': (('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'autoattack'), {'autoattack': 1000}, False),
    'full': (DEFAULT_ATTACKS, {'autoattack_rand': 1000}, True),
    # a CPU run: clean on all images, the rest on first-n subsets; AutoAttack resumes across runs (--resume)
    'cpu': (('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'autoattack'),
            {'fgsm': 2000, 'pgd20': 2000, 'cw': 2000, 'pgd100': 1000, 'autoattack': 1000}, True),
}
STEPS_SWEEP = (1, 5, 10, 20, 50, 100)
EPS_SWEEP_255 = (8, 16, 32, 64)
#: accuracy (%) under which "falls to ~0" holds at eps 64/255
ZERO_TOL = 1.0
#: the unbounded attack: PGD with eps = 1 (the whole [0, 1] box)
UNBOUNDED = {'eps': 1.0, 'alpha': 0.01, 'steps': 100, 'random_start': False}
#: points by which a black-box attack may beat the strongest iterative white-box attack before it signals masking
BLACKBOX_TOL = 1.0
#: the white-box attacks a black-box attack is compared with (FGSM is too weak to be a reference)
WHITEBOX_REFERENCE = ('autoattack', 'autoattack_rand', 'pgd100', 'pgd20', 'cw')
#: images NAttack attacks together (each iteration queries NATTACK['npop'] candidates of each)
NATTACK_BATCH = 100
#: gradient evaluations per image of each batch-wise stage (for deadline estimates; a forward counts 0.4; the
#: source's gradients are counted as the model's; DI-FGSM's are on 35x35 copies, ~1.2 of a 32x32 one)
_COST = {'clean': 0.4, 'fgsm': 1.4, 'ti_fgsm': 1.4, 'di_fgsm': 10 * 1.2 + 0.4, 'pgd20': 20.4, 'transfer': 20.4,
         'cw': 30.4, 'pgd100': 100.4, MASKING: 4 * 20.4 + 100.4}
#: AutoAttack: (first sub-attack, the others) in the same units (see autoattack.sub_attack_cost)
_AA_COST = {'autoattack': (100, 900 + 1350 + 2000), 'autoattack_rand': (2000, 2000)}
PENDING = 'not reached: the run stopped before this stage (killed, crashed or still running)'


def parse_attacks(spec: str) -> Tuple[str, ...]:
    """'clean,pgd20' -> ('clean', 'pgd20'); 'all' -> every attack; unknown names raise ValueError."""
    names = ATTACKS if spec.strip() == 'all' else tuple(s.strip() for s in spec.split(',') if s.strip())
    bad = [n for n in names if n not in ATTACKS]
    if bad or not names:
        raise ValueError(f'Unknown attack(s) {bad or spec!r}; choose from {", ".join(ATTACKS)} (or "all").')
    return names


def preset(name: str, transfer: bool = False,
           blackbox: bool = False) -> Tuple[Tuple[str, ...], Dict[str, int], bool]:
    """(attacks, subsets, masking checks) of a preset; ``transfer`` adds the transfer attack (a source exists),
    ``blackbox`` the black-box attacks TI-FGSM, DI-FGSM (these need the source too) and NAttack."""
    if name not in PRESETS:
        raise ValueError(f'Unknown preset {name!r}; choose from {", ".join(PRESETS)}.')
    attacks, subsets, masking = PRESETS[name]
    extra = (('transfer',) if transfer else ()) + (BLACKBOX_ATTACKS if blackbox else ())
    return attacks + extra, dict(subsets), masking


def attack_params(name: str, eps: float, overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The parameters each attack (AutoAttack aside: see :mod:`fsr_hub.autoattack`) runs with: the one place they
    are written (recorded in the report). ``overrides`` changes a black-box attack's parameters (e.g. NAttack's
    ``max_queries``); the white-box suite's are fixed by their names."""
    if name in BLACKBOX_PARAMS:
        given = dict(overrides or {})
        known = set(BLACKBOX_PARAMS[name]) | ({'alpha'} if name == 'ti_fgsm' else set())
        bad = sorted(set(given) - known)
        if bad:
            raise ValueError(f'{name} has no parameter(s) {bad}; it takes {sorted(known)}.')
        p = {'eps': eps, **BLACKBOX_PARAMS[name], **given}
        if name == 'ti_fgsm' and 'alpha' not in given:
            p['alpha'] = eps / p['steps']
        return p
    if overrides:
        raise ValueError(f'{name}: only the black-box attacks ({", ".join(BLACKBOX_ATTACKS)}) take parameter '
                         f'overrides.')
    return {
        'fgsm': {'eps': eps, 'steps': 1},
        'pgd20': {'eps': eps, 'alpha': eps / 10, 'steps': 20, 'random_start': False},
        'pgd100': {'eps': eps, 'alpha': eps / 10, 'steps': 100, 'random_start': False},
        'cw': {'eps': eps, 'alpha': eps / 10, 'steps': 30, 'kappa': 50.0, 'random_start': False},
        'transfer': {'eps': eps, 'alpha': eps / 10, 'steps': 20, 'random_start': False, 'attack': 'pgd20 on source'},
    }.get(name, {})


def _attack_fn(name: str, model: nn.Module, p: Mapping[str, Any],
               transfer_model: Optional[nn.Module]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == 'clean':
        return lambda xb, yb: xb
    if name == 'fgsm':
        return lambda xb, yb: fgsm(model, xb, yb, p['eps'])
    if name == 'pgd20':
        return lambda xb, yb: pgd(model, xb, yb, p['eps'], p['alpha'], p['steps'], p['random_start'])
    if name == 'cw':
        return lambda xb, yb: cw_inf(model, xb, yb, p['eps'], p['alpha'], p['steps'], p['kappa'])
    if name == 'transfer':
        return lambda xb, yb: pgd(transfer_model, xb, yb, p['eps'], p['alpha'], p['steps'], p['random_start'])
    if name in ('ti_fgsm', 'di_fgsm'):
        attack = ti_fgsm if name == 'ti_fgsm' else di_fgsm
        kwargs = {k: v for k, v in p.items() if k != 'eps'}
        return lambda xb, yb: attack(transfer_model, xb, yb, p['eps'], **kwargs)
    raise ValueError(f'{name!r} is not a batch-wise attack.')


def _pct(correct: torch.Tensor) -> float:
    return round(100.0 * correct.float().mean().item(), 2) if correct.numel() else 0.0


def _per_class(correct: torch.Tensor, y: torch.Tensor, num_classes: int) -> List[Optional[float]]:
    out: List[Optional[float]] = []
    for c in range(num_classes):
        sel = y == c
        out.append(_pct(correct[sel]) if sel.any() else None)
    return out


def _assert_eval(model: nn.Module) -> None:
    model.eval()
    if any(m.training for m in model.modules()):
        raise RuntimeError('model is not fully in eval mode after model.eval().')
    # attacks in reduced precision are weaker and overstate robustness: evaluate in float32 only
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise RuntimeError('evaluate in float32: the model has non-float32 parameters.')
    if any(torch.is_autocast_enabled(t) for t in ('cpu', 'cuda')):
        raise RuntimeError('evaluate without autocast: attacks in reduced precision overstate robustness.')


class _Deadline(Exception):
    """A stage ran out of time (message: where)."""


class _Clock:
    """Wall-clock deadline and the measured seconds per gradient evaluation per image (for estimates)."""

    def __init__(self, deadline_s: Optional[float]):
        self.t0 = time.monotonic()
        self.deadline_s = deadline_s
        self.units = 0.0
        self.seconds = 0.0

    def left(self) -> float:
        return float('inf') if self.deadline_s is None else self.deadline_s - (time.monotonic() - self.t0)

    def estimate(self, units: float) -> Optional[float]:
        return self.seconds / self.units * units if self.units > 0 else None

    def record(self, units: float, seconds: float) -> None:
        self.units += units
        self.seconds += seconds

    def fits(self, seconds: Optional[float]) -> bool:
        return self.left() > (seconds or 0.0)

    def reason(self, needed: Optional[float] = None) -> str:
        total = f'{self.deadline_s / 60:.2f} min' if self.deadline_s is not None else 'none'
        need = f'about {needed:.0f} s needed, ' if needed is not None else ''
        return f'deadline: {need}{max(self.left(), 0.0):.0f} s left of {total}'


def _run_batched(
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model: nn.Module, x: torch.Tensor,
        y: torch.Tensor, eps: float, batch_size: int, device: torch.device, desc: str, progress: bool,
        extra: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]] = None,
        clock: Optional[_Clock] = None,
) -> Tuple[torch.Tensor, float]:
    """Per-example correctness of ``model`` on fn(x, y) (adversarial inputs), and the worst bound violation.
    Raises :class:`_Deadline` between batches once ``clock`` has no time left."""
    correct, worst = [], 0.0
    starts = range(0, len(y), batch_size)
    for k, i in enumerate(tqdm(starts, desc=desc, unit='batch', disable=not progress, leave=False)):
        if clock is not None and k and clock.left() <= 0:
            raise _Deadline(f'reached during the stage after {k} of {len(starts)} batches')
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        x_adv = fn(xb, yb)
        worst = max(worst, linf_violation(x_adv, xb, eps))
        with torch.no_grad():
            correct.append((model(x_adv).argmax(1) == yb).cpu())
        if extra is not None:
            extra(xb, yb, x_adv)
    return torch.cat(correct), worst


def evaluate(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        attacks: Sequence[str] = DEFAULT_ATTACKS,
        eps: float = 8 / 255,
        batch_size: int = 500,
        device: Any = 'cpu',
        seed: int = 0,
        num_classes: int = 10,
        transfer_model: Optional[nn.Module] = None,
        transfer_source: Optional[str] = None,
        masking_checks: bool = True,
        masking_n: Optional[int] = 1000,
        progress: bool = True,
        subsets: Optional[Mapping[str, int]] = None,
        deadline_minutes: Optional[float] = None,
        previous: Optional[Mapping[str, Any]] = None,
        on_update: Optional[Callable[[Dict[str, Any]], None]] = None,
        attack_overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """Run ``attacks`` on (x float [0, 1] NCHW, y) and the masking checks, cheapest first.

    ``subsets``: {attack: n} runs that attack on the first n images only (over :data:`DEFAULT_SUBSETS`).
    ``deadline_minutes``: wall-clock limit from the call (stages that do not fit are skipped, a stage that runs
    out is stopped, AutoAttack and NAttack keep their progress and start whenever one batch fits). ``previous``: an
    earlier evaluation (or report) of the same weights and data to continue (a result measured with other
    parameters, another subset or another source is measured again). ``on_update(evaluation)`` runs after each
    stage and AutoAttack / NAttack batch. ``attack_overrides``: {black-box attack: parameters} over the defaults
    of :func:`attack_params`. Returns the report's ``results``, ``masking_checks``, ``timing``, ``precision``,
    ``per_example``, ``not_run``, ``progress`` and ``complete``.
    """
    for a in attacks:
        if a not in ATTACKS:
            raise ValueError(f'Unknown attack {a!r}; choose from {ATTACKS}.')
    needs_source = [a for a in SOURCE_ATTACKS if a in attacks]
    if needs_source and transfer_model is None:
        raise ValueError(f"attack(s) {', '.join(needs_source)} need a source model (--transfer-from MODEL:WEIGHTS).")
    overrides = {a: dict(o) for a, o in (attack_overrides or {}).items()}
    for a, o in overrides.items():
        if a not in ATTACKS:
            raise ValueError(f'attack_overrides: unknown attack {a!r}.')
        attack_params(a, eps, o)  # raises for unknown parameters
    if 'ti_fgsm' in attacks or 'di_fgsm' in attacks:
        require_torchattack()
    if x.ndim != 4 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f'evaluate needs a non-empty NCHW batch and as many labels, got {tuple(x.shape)}, {tuple(y.shape)}.')
    check_pixels(x, 'evaluation images')
    if deadline_minutes is not None and deadline_minutes <= 0:
        raise ValueError(f'deadline_minutes must be positive, got {deadline_minutes}.')
    subsets = {**DEFAULT_SUBSETS, **(subsets or {})}
    for a, k in subsets.items():
        if a not in ATTACKS or int(k) <= 0:
            raise ValueError(f'subsets: {a}={k} must name an attack and a positive image count.')
    device = torch.device(device)
    model = model.to(device)
    _assert_eval(model)
    if transfer_model is not None:
        transfer_model = transfer_model.to(device)
        _assert_eval(transfer_model)
    stages = [s for s in STAGE_ORDER if s in attacks or (s == MASKING and masking_checks)]
    run = _Run(model, x, y, eps, batch_size, device, seed, num_classes, transfer_model, transfer_source,
               masking_n, progress, subsets, _Clock(None if deadline_minutes is None else 60 * deadline_minutes),
               stages, previous, on_update, overrides)
    with strict_float32() as precision:
        run.precision = precision
        torch.manual_seed(seed)
        try:
            for stage in stages:
                run.stage(stage)
        except KeyboardInterrupt:
            run.interrupt()
            raise
    return run.snapshot()


class _Run:
    """The state of one :func:`evaluate` call: what ran, what did not and why, and its snapshots."""

    def __init__(self, model, x, y, eps, batch_size, device, seed, num_classes, transfer_model, transfer_source,
                 masking_n, progress, subsets, clock, stages, previous, on_update, overrides):
        self.model, self.x, self.y, self.eps = model, x, y, eps
        self.overrides: Dict[str, Dict[str, Any]] = overrides
        self.batch_size, self.device, self.seed, self.num_classes = batch_size, device, seed, num_classes
        self.transfer_model, self.transfer_source = transfer_model, transfer_source
        self.masking_n, self.progress, self.subsets, self.clock = masking_n, progress, subsets, clock
        self.on_update = on_update
        self.stages = list(stages)
        self.precision: Dict[str, Any] = {}
        self.t0 = time.perf_counter()
        self.results: Dict[str, Dict[str, Any]] = {}
        self.flags: Dict[str, torch.Tensor] = {}
        self.masking: Optional[Dict[str, Any]] = None
        self.not_run: Dict[str, str] = {s: PENDING for s in stages}
        self.aa_progress: Dict[str, Dict[str, Any]] = {}
        self.traj: Dict[int, List[torch.Tensor]] = {k: [] for k in STEPS_SWEEP}
        self.current: Optional[str] = None
        self.resumed: List[str] = []
        if previous is not None:
            self._adopt(previous, stages)

    # -- continuing an earlier evaluation -------------------------------------------------------------------
    def _adopt(self, prev: Mapping[str, Any], stages: Sequence[str]) -> None:
        per_example = prev.get('per_example') or {}
        for name, entry in (prev.get('results') or {}).items():
            if name not in stages or name not in per_example:
                continue
            n = int(entry.get('n', len(self.y)))
            if n != self._n(name):
                continue  # measured on another subset: run again
            params = attack_params(name, self.eps, self.overrides.get(name))
            if params and entry.get('params') != params:
                continue  # measured with other parameters: run again
            if name in AA_KEYS and departures(entry.get('params'), AA_KEYS[name], self.eps):
                continue  # not the original AutoAttack (or not recorded as such): run again
            if name in SOURCE_ATTACKS and entry.get('source') != self._source():
                continue  # crafted on another source model
            self.results[name] = dict(entry)
            self.flags[name] = unpack_flags(per_example[name], n)
            self.not_run.pop(name, None)
            self.resumed.append(name)
            if name in _COST and isinstance(entry.get('seconds'), (int, float)):
                self.clock.record(_COST[name] * n, entry['seconds'])  # the speed measured then plans this run
        m = prev.get('masking_checks')
        if MASKING in stages and isinstance(m, dict) and m.get('n') == self._n(MASKING):
            self.masking = dict(m)
            self.not_run.pop(MASKING, None)
            self.resumed.append(MASKING)
        for name, st in (prev.get('progress') or {}).items():
            if name in self.not_run and isinstance(st, dict):
                self.aa_progress[name] = dict(st)

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def _source(self) -> str:
        return self.transfer_source or 'unnamed source model'

    def _n(self, stage: str) -> int:
        if stage == MASKING:
            return len(self.y) if self.masking_n is None else min(self.masking_n, len(self.y))
        return min(self.subsets.get(stage, len(self.y)), len(self.y))

    def snapshot(self) -> Dict[str, Any]:
        results = dict(self.results)
        not_run = dict(self.not_run)
        # the Ensemble is reported only over every suite attack asked for (never a smaller, weaker one), on the
        # first images all of them ran on (each ran on a first-n subset)
        ens = [a for a in ENSEMBLE_ATTACKS if a in self.stages]
        missing = [a for a in ens if a not in self.flags]
        if len(ens) >= 2 and missing:
            not_run['ensemble'] = f'needs {", ".join(missing)}'
        elif len(ens) >= 2:
            k = min(len(self.flags[a]) for a in ens)
            correct = torch.stack([self.flags[a][:k] for a in ens]).all(dim=0)
            results['ensemble'] = {'accuracy': _pct(correct), 'per_class': _per_class(correct, self.y[:k].cpu(),
                                                                                      self.num_classes),
                                   'attacks': ens, 'n': k, 'subset': _subset(k, len(self.y))}
        checks, versus = _cross_checks(self.flags)
        if self.masking is not None:
            masking = dict(self.masking)
            masking['checks'] = {**masking['checks'], **checks}
            masking['blackbox_vs_whitebox'] = versus
            known = [v for v in masking['checks'].values() if v is not None]
            masking['passed'] = all(known) if known else None
        else:
            masking = _empty_masking(checks, versus)
        return {
            'results': results,
            'masking_checks': masking,
            'timing': {'total_seconds': round(time.perf_counter() - self.t0, 3)},
            'precision': dict(self.precision),
            'per_example': {k: pack_flags(v) for k, v in self.flags.items()},
            'not_run': not_run,
            'progress': {k: dict(v) for k, v in self.aa_progress.items()},
            'resumed': list(self.resumed),
            'complete': not not_run,
        }

    def _update(self) -> None:
        if self.on_update is not None:
            self.on_update(self.snapshot())

    def interrupt(self) -> None:
        for s in list(self.not_run):
            self.not_run[s] = ('interrupted while running' if s == self.current else 'not reached: interrupted')
        self._update()

    # -- stages -------------------------------------------------------------------------------------------
    def stage(self, name: str) -> None:
        if name not in self.not_run:
            return  # adopted from the previous evaluation
        self.current = name
        try:
            if name == MASKING:
                self._masking()
            elif name.startswith('autoattack'):
                self._autoattack(name)
            elif name == 'nattack':
                self._nattack(name)
            else:
                self._whitebox(name)
        except _Deadline as e:
            self.not_run[name] = f'{self.clock.reason()} ({e})'
        self.current = None
        self._update()

    def _skip_if_late(self, name: str, units: float) -> bool:
        need = self.clock.estimate(units)
        if self.clock.fits(need):
            return False
        self.not_run[name] = self.clock.reason(need)
        return True

    def _whitebox(self, name: str) -> None:
        n = self._n(name)
        if self._skip_if_late(name, _COST[name] * n):
            return
        p = attack_params(name, self.eps, self.overrides.get(name))
        if name == 'pgd100':
            def fn(xb, yb):
                # one PGD-100 run gives the steps sweep: without random start the k-th iterate is PGD-k's output
                x_adv, rec = pgd_trajectory(self.model, xb, yb, p['eps'], p['alpha'], p['steps'], record=STEPS_SWEEP)
                for k in STEPS_SWEEP:
                    self.traj[k].append(rec[k].cpu())
                return x_adv
        else:
            fn = _attack_fn(name, self.model, p, self.transfer_model)
        source_correct: List[torch.Tensor] = []

        def on_source(xb, yb, x_adv):
            # the source's own accuracy on what was crafted on it: shows the attack works where it was made
            with torch.no_grad():
                source_correct.append((self.transfer_model(x_adv).argmax(1) == yb).cpu())

        synchronize(self.device)
        t0 = time.perf_counter()
        correct, worst = _run_batched(fn, self.model, self.x[:n], self.y[:n], self.eps, self.batch_size,
                                      self.device, name, self.progress, clock=self.clock,
                                      extra=on_source if name in SOURCE_ATTACKS else None)
        synchronize(self.device)
        seconds = time.perf_counter() - t0
        self.clock.record(_COST[name] * n, seconds)
        entry: Dict[str, Any] = {'accuracy': _pct(correct), 'per_class': _per_class(correct, self.y[:n].cpu(),
                                                                                   self.num_classes),
                                 'n': n, 'subset': _subset(n, len(self.y)), 'seconds': round(seconds, 3),
                                 'max_bound_violation': worst}
        if name != 'clean':
            entry['params'] = p
        if name in SOURCE_ATTACKS:
            entry['source'] = self._source()
            entry['source_accuracy'] = _pct(torch.cat(source_correct))
        if name in ('ti_fgsm', 'di_fgsm'):
            entry['implementation'] = f"torchattack {_version('torchattack')} {name.replace('_', '').upper()}"
        self.results[name] = entry
        self.flags[name] = correct
        self.not_run.pop(name)

    def _aa_units(self, name: str) -> float:
        # APGD-CE runs on the clean-correct points, the later sub-attacks on the points still robust
        clean = self.results.get('clean', {}).get('accuracy', 100.0) / 100
        robust = min([self.results[a]['accuracy'] for a in ('pgd20', 'pgd100', 'cw') if a in self.results],
                     default=100.0) / 100
        first, rest = _AA_COST[name]
        return clean * first + robust * rest

    def _autoattack(self, name: str) -> None:
        n = self._n(name)
        state = self.aa_progress.get(name)
        # resumable: start when one batch fits (progress is saved batch by batch), not only when all of it does
        if state is None and self._skip_if_late(name, self._aa_units(name) * min(self.batch_size, n)):
            return
        version = AA_KEYS[name]

        def save(st: AAState) -> None:
            self.aa_progress[name] = st.to_dict()
            self.not_run[name] = f'running: {st.describe()}'
            self._update()

        def should_stop(estimate: float) -> bool:
            return not self.clock.fits(estimate)

        res = run_autoattack_resumable(self.model, self.x[:n], self.y[:n], self.eps, version, self.batch_size,
                                       self.seed, self.device, state=state, should_stop=should_stop, on_batch=save)
        _assert_eval(self.model)
        self.aa_progress[name] = res.state.to_dict()
        if not res.complete:
            self.not_run[name] = (f'{self.clock.reason()}; partial: {res.state.describe()} (progress saved: '
                                  f'continue with --resume)')
            return
        correct = res.robust
        self.results[name] = {
            'accuracy': _pct(correct), 'per_class': _per_class(correct, self.y[:n].cpu(), self.num_classes),
            'n': n, 'subset': _subset(n, len(self.y)), 'seconds': round(res.state.seconds, 3),
            'max_bound_violation': res.state.max_bound_violation, 'implementation': res.config['implementation'],
            'params': res.config,
            'robust_after': {k: round(100.0 * v / n, 2) for k, v in res.state.robust_after.items()},
        }
        self.flags[name] = correct
        self.aa_progress.pop(name)
        self.not_run.pop(name)

    def _nattack_units(self, p: Mapping[str, Any]) -> float:
        # per image: a query is a forward (0.4); misclassified images cost 1, robust ones max_queries, and broken
        # ones are guessed at a tenth of it until this run has measured its own mean
        clean = self.results.get('clean', {}).get('accuracy', 100.0) / 100
        robust = min([self.results[a]['accuracy'] for a in WHITEBOX_REFERENCE if a in self.results],
                     default=100 * clean) / 100
        return 0.4 * (1 + p['max_queries'] * (robust + 0.1 * max(clean - robust, 0.0)))

    def _nattack(self, name: str) -> None:
        n = self._n(name)
        p = attack_params(name, self.eps, self.overrides.get(name))
        batch = min(self.batch_size, NATTACK_BATCH)
        run_key = {'attack': name, 'n': n, 'batch': batch, 'seed': self.seed, 'params': p}
        state = self.aa_progress.get(name)
        if state is not None and any(state.get(k) != v for k, v in run_key.items()):
            state = None  # progress of another configuration: start again
        if state is None:
            if self._skip_if_late(name, self._nattack_units(p) * min(batch, n)):
                return
            state = {**run_key, 'done': 0, 'correct': '', 'success': '', 'queries': [], 'seconds': 0.0,
                     'max_bound_violation': 0.0}
            first_checked = True
        else:
            first_checked = False
        kwargs = {k: v for k, v in p.items() if k != 'eps'}
        while state['done'] < n:
            i = state['done']
            b = min(batch, n - i)
            if not first_checked:
                per_image = 0.4 * sum(state['queries']) / i if i else self._nattack_units(p)
                need = self.clock.estimate(per_image * b)
                if not self.clock.fits(need):
                    self.not_run[name] = (f'{self.clock.reason(need)}; partial: {i} of {n} images (progress saved: '
                                          f'continue with --resume)')
                    return
            first_checked = False
            xb, yb = self.x[i:i + b].to(self.device), self.y[i:i + b].to(self.device)
            synchronize(self.device)
            t0 = time.perf_counter()
            res = run_nattack(self.model, xb, yb, p['eps'], seed=self.seed + i, **kwargs)
            with torch.no_grad():
                ok = (self.model(res.x_adv).argmax(1) == yb).cpu()
            synchronize(self.device)
            seconds = time.perf_counter() - t0
            self.clock.record(0.4 * res.queries.sum().item(), seconds)
            state['correct'] = pack_flags(torch.cat([unpack_flags(state['correct'], i), ok]))
            state['success'] = pack_flags(torch.cat([unpack_flags(state['success'], i), res.success.cpu()]))
            state['queries'] = state['queries'] + res.queries.cpu().tolist()
            state['max_bound_violation'] = max(state['max_bound_violation'], linf_violation(res.x_adv, xb, self.eps))
            state['seconds'] = round(state['seconds'] + seconds, 3)
            state['done'] = i + b
            self.aa_progress[name] = state
            self.not_run[name] = f'running: {i + b} of {n} images done'
            self._update()
        correct, success = unpack_flags(state['correct'], n), unpack_flags(state['success'], n)
        q = torch.tensor(state['queries'], dtype=torch.float64)
        self.results[name] = {
            'accuracy': _pct(correct), 'per_class': _per_class(correct, self.y[:n].cpu(), self.num_classes),
            'n': n, 'subset': _subset(n, len(self.y)), 'seconds': state['seconds'],
            'max_bound_violation': state['max_bound_violation'], 'params': p,
            'queries': {'mean': round(q.mean().item(), 1), 'median': float(q.median()), 'max': int(q.max()),
                        'median_to_success': float(q[success].median()) if success.any() else None},
            'successes': int(success.sum()),
            'implementation': 'fsr_hub.blackbox.run_nattack (Li et al. 2019, Algorithm 1)',
        }
        self.flags[name] = correct
        self.aa_progress.pop(name)
        self.not_run.pop(name)

    def _masking(self) -> None:
        n = self._n(MASKING)
        if self._skip_if_late(MASKING, _COST[MASKING] * n):
            return
        t0 = time.perf_counter()
        self.masking = _masking_checks(self.model, self.x, self.y, self.eps, self.batch_size, self.device, n,
                                       self.traj, self.progress, self.clock)
        self.clock.record(_COST[MASKING] * n, time.perf_counter() - t0)
        self.not_run.pop(MASKING)


def _subset(n: int, total: int) -> str:
    return f'all {total}' if n == total else f'first {n}'


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return '(version unknown)'


def _blackbox_vs_whitebox(flags: Mapping[str, torch.Tensor]) -> Dict[str, Dict[str, Any]]:
    """Each black-box attack that ran against the strongest iterative white-box attack that ran, on the images
    both ran on: a black-box attack more than BLACKBOX_TOL points stronger signals gradient masking."""
    out: Dict[str, Dict[str, Any]] = {}
    for a in BLACKBOX_ATTACKS:
        if a not in flags:
            continue
        best = None
        for w in WHITEBOX_REFERENCE:
            if w in flags:
                k = min(len(flags[a]), len(flags[w]))
                if best is None or _pct(flags[w][:k]) < best[1]:
                    best = (w, _pct(flags[w][:k]), k)
        if best is not None:
            w, w_acc, k = best
            acc = _pct(flags[a][:k])
            out[a] = {'accuracy': acc, 'whitebox': w, 'whitebox_accuracy': w_acc, 'n': k, 'tolerance': BLACKBOX_TOL,
                      'passed': acc >= w_acc - BLACKBOX_TOL}
    return out


def _cross_checks(flags: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, Optional[bool]], Dict[str, Dict[str, Any]]]:
    transfer_ok = None
    if 'transfer' in flags and 'pgd20' in flags:
        k = min(len(flags['transfer']), len(flags['pgd20']))
        transfer_ok = _pct(flags['transfer'][:k]) >= _pct(flags['pgd20'][:k])
    rand_ok = None
    if 'autoattack' in flags and 'autoattack_rand' in flags:
        # compare on the images both ran on (rand usually runs on the first 1,000 only)
        k = min(len(flags['autoattack']), len(flags['autoattack_rand']))
        rand_ok = _pct(flags['autoattack_rand'][:k]) - _pct(flags['autoattack'][:k]) <= 1.0
    versus = _blackbox_vs_whitebox(flags)
    blackbox_ok = all(v['passed'] for v in versus.values()) if versus else None
    checks = {'transfer_ge_whitebox': transfer_ok, 'rand_within_1pt': rand_ok, 'blackbox_ge_whitebox': blackbox_ok}
    return checks, versus


def _empty_masking(checks: Mapping[str, Optional[bool]], versus: Mapping[str, Any]) -> Dict[str, Any]:
    checks = {'falls_to_zero_at_64': None, 'unbounded_zero': None, 'more_steps_never_raise': None, **checks}
    known = [v for v in checks.values() if v is not None]
    return {'eps_sweep': None, 'unbounded_accuracy': None, 'steps_sweep': None, 'checks': checks,
            'blackbox_vs_whitebox': dict(versus), 'passed': all(known) if known else None}


def _masking_checks(model, x, y, eps, batch_size, device, n, traj, progress, clock) -> Dict[str, Any]:
    xs, ys = x[:n], y[:n]
    t0 = time.perf_counter()
    eps_acc = []
    for e255 in EPS_SWEEP_255:
        e = e255 / 255
        correct, _ = _run_batched(_attack_fn('pgd20', model, attack_params('pgd20', e), None), model, xs, ys, e,
                                  batch_size, device, f'pgd20 eps {e255}/255', progress, clock=clock)
        eps_acc.append(_pct(correct))
    u = UNBOUNDED
    unb, _ = _run_batched(lambda xb, yb: pgd(model, xb, yb, u['eps'], u['alpha'], u['steps']), model, xs, ys,
                          u['eps'], batch_size, device, 'unbounded', progress, clock=clock)
    unbounded = _pct(unb)
    if traj[STEPS_SWEEP[0]]:
        steps_n = sum(len(t) for t in traj[STEPS_SWEEP[0]])
        steps_acc = [_pct(torch.cat(traj[k])) for k in STEPS_SWEEP]
    else:
        steps_n = n
        rec_all: Dict[int, List[torch.Tensor]] = {k: [] for k in STEPS_SWEEP}

        p = attack_params('pgd100', eps)

        def run(xb, yb):
            x_adv, rec = pgd_trajectory(model, xb, yb, p['eps'], p['alpha'], p['steps'], record=STEPS_SWEEP)
            for k in STEPS_SWEEP:
                rec_all[k].append(rec[k].cpu())
            return x_adv

        _run_batched(run, model, xs, ys, eps, batch_size, device, 'steps sweep', progress, clock=clock)
        steps_acc = [_pct(torch.cat(rec_all[k])) for k in STEPS_SWEEP]
    return {
        'n': n,
        'eps_sweep': {'eps_255': list(EPS_SWEEP_255), 'accuracy': eps_acc, 'attack': 'pgd20, step eps/10'},
        'eps_monotone': all(b <= a for a, b in zip(eps_acc, eps_acc[1:])),
        'unbounded_accuracy': unbounded,
        'unbounded_attack': dict(UNBOUNDED),
        'steps_sweep': {'steps': list(STEPS_SWEEP), 'accuracy': steps_acc, 'n': steps_n,
                        'attack': 'pgd, step eps/10, no random start'},
        'checks': {
            'falls_to_zero_at_64': eps_acc[-1] <= ZERO_TOL,
            'unbounded_zero': unbounded == 0.0,
            'more_steps_never_raise': all(b <= a for a, b in zip(steps_acc, steps_acc[1:])),
        },
        'zero_tolerance': ZERO_TOL,
        'seconds': round(time.perf_counter() - t0, 3),
    }


def model_info(model: nn.Module, architecture: str, tag: Optional[str] = None,
               weights: Optional[str] = None, model_args: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The report's ``model`` section (sha256 of the weight file when there is one); ``model_args``: the
    constructor arguments besides ``num_classes`` that built ``model`` from ``architecture``
    (``fsr_hub.models.create(architecture, num_classes=..., **model_args)``)."""
    return {
        'architecture': architecture, 'tag': tag, 'weights': str(weights) if weights else None,
        'sha256': sha256_file(weights) if weights else None,
        'num_params': sum(p.numel() for p in model.parameters()),
        'model_args': dict(model_args or {}),
    }


def build_report(
        model: Dict[str, Any], data: Dict[str, Any], evaluation: Dict[str, Any], eps: float, batch_size: int,
        device: Any, command: str, dtype: str = 'float32', preset: Optional[str] = None,
        deadline_minutes: Optional[float] = None,
) -> Dict[str, Any]:
    """Assemble the ``fsr-hub/verify/v1`` JSON report (partial when ``evaluation['complete']`` is false)."""
    device = torch.device(device)
    precision = evaluation.get('precision') or {'dtype': dtype}
    report = {
        'schema': SCHEMA,
        'model': model,
        'data': data,
        'eps': eps,
        'batch_size': batch_size,
        'preset': preset,
        'deadline_minutes': deadline_minutes,
        'hardware': {'device': hardware_name(device), 'torch': torch.__version__, **precision},
        'complete': evaluation.get('complete', True),
        'not_run': evaluation.get('not_run', {}),
        'results': evaluation['results'],
        'masking_checks': evaluation['masking_checks'],
        'timing': evaluation['timing'],
        'command': command,
    }
    for key in ('resumed', 'progress', 'per_example'):
        if evaluation.get(key):
            report[key] = evaluation[key]
    return report


def training_section(summary: Dict[str, Any], weights_sha256: str,
                     cast: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The report's ``training`` key from the trainer's ``train_summary.json`` (schema ``fsr-hub/train/v1``).

    The summary must be the run that produced the evaluated file: its final or best weights have that sha256, or,
    with ``cast`` (``{'sha256': trainer's file, 'dtype': 'float16'}``: the evaluated file is that file cast, see
    :func:`fsr_hub.weights.cast_dtype`), the cast file's.
    """
    if summary.get('schema') != TRAIN_SCHEMA:
        raise ValueError(f"train summary has schema {summary.get('schema')!r}, expected {TRAIN_SCHEMA!r}.")
    files = summary.get('weights', {})
    trained = cast['sha256'] if cast else weights_sha256
    selected = [k for k in ('final', 'best') if isinstance(files.get(k), dict) and files[k].get('sha256') == trained]
    if not selected:
        raise ValueError(f'the train summary belongs to another run: neither its final nor its best weights have '
                         f'sha256 {trained} (re-save the released file with the trainer, or verify that file).')
    epoch_seconds = summary.get('epoch_seconds') or []
    extra = {'cast': {'from': selected[0], 'from_sha256': trained, 'dtype': cast['dtype']}} if cast else {}
    if summary.get('init_from'):  # a fine-tuned model: the weights it started from
        extra['init_from'] = summary['init_from']
    return {**extra, 
        'config': summary.get('config'),
        'command': summary.get('command'),
        'epochs': len(epoch_seconds),
        'epoch_seconds': epoch_seconds,
        'wall_clock_seconds': summary.get('wall_clock_seconds'),
        'hardware': (summary.get('hardware') or {}).get('device'),
        'weights': selected[0],
        'best': summary.get('best'),
    }
