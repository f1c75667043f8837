"""AutoAttack (Croce & Hein 2020) through ``pyautoattack``, a PyPI packaging of the original fra31/auto-attack code.

``version='standard'``: APGD-CE (100 iterations, 1 restart), APGD-T (100 iterations, 9 target classes),
FAB-T (100 iterations, 9 target classes), Square (5000 queries, p_init 0.8), each run on the points still
correct, exactly the original's standard parameters. ``version='rand'``: APGD-CE + APGD-DLR with EOT over 20
samples, for randomised defences. :func:`autoattack_config` reads the parameters back from the configured
objects, so the report states what actually ran.

Resumable runs: :func:`run_autoattack_resumable` drives the standard loop (sub-attacks in order, each on the
points still robust) one batch at a time, each batch a call of the library's own ``run_standard_evaluation``
with only that sub-attack selected, and returns a small JSON-able state (:class:`AAState`) after every batch.
A run continued from a saved state with the same batch size sees exactly the batches (and per-batch seeds) of an
uninterrupted run; with another one (:func:`rebatch`), the points not yet attacked form new batches.
"""
import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version as pkg_version
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .attack_registry import AUTOATTACK_VERSIONS
from .attacks import linf_violation

__all__ = [
    'AA_VERSIONS', 'AA_KEYS', 'ORIGINAL', 'AAState', 'AAResult', 'build_autoattack', 'autoattack_config', 'departures',
    'run_autoattack', 'run_autoattack_resumable', 'rebatch', 'pack_flags', 'unpack_flags', 'sub_attack_cost',
]

AA_VERSIONS = ('standard', 'rand')
#: verify-report key -> the AutoAttack version it holds
AA_KEYS: Dict[str, str] = dict(AUTOATTACK_VERSIONS)
_APGD = {'n_iter': 100, 'n_restarts': 1, 'eot_iter': 1, 'rho': 0.75}
#: the original AutoAttack's sub-attacks and parameters of each version (Croce & Hein 2020, fra31/auto-attack),
#: in the form :func:`autoattack_config` records them; a result is "standard" only if it ran exactly these
ORIGINAL: Dict[str, Dict[str, Any]] = {
    'standard': {
        'attacks': ['apgd-ce', 'apgd-t', 'fab-t', 'square'],
        'sub_attacks': {
            'apgd-ce': {**_APGD, 'loss': 'ce'},
            'apgd-t': {**_APGD, 'n_target_classes': 9, 'loss': 'dlr-targeted'},
            'fab-t': {'n_iter': 100, 'n_restarts': 1, 'n_target_classes': 9, 'alpha_max': 0.1, 'eta': 1.05,
                      'beta': 0.9},
            'square': {'n_queries': 5000, 'n_restarts': 1, 'p_init': 0.8, 'resc_schedule': False, 'loss': 'margin'},
        },
    },
    'rand': {
        'attacks': ['apgd-ce', 'apgd-dlr'],
        'sub_attacks': {'apgd-ce': {**_APGD, 'eot_iter': 20, 'loss': 'ce'},
                        'apgd-dlr': {**_APGD, 'eot_iter': 20, 'loss': 'dlr'}},
    },
}
_SUBS = ('apgd', 'apgd_targeted', 'fab', 'square')


def _package() -> str:
    try:
        return f'pyautoattack {pkg_version("pyautoattack")}'
    except PackageNotFoundError:
        return 'pyautoattack (version unknown)'


def pack_flags(flags: torch.Tensor) -> str:
    """Bool vector -> hex string (bit i of the little-endian bit order is element i): 2,500 chars for 10,000."""
    return np.packbits(flags.detach().cpu().numpy().astype(bool), bitorder='little').tobytes().hex()


def unpack_flags(text: str, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_flags` for a vector of length ``n``; ValueError if the string does not fit."""
    try:
        raw = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
    except (TypeError, ValueError) as e:
        raise ValueError(f'malformed flag string ({e}).') from None
    if len(raw) != (n + 7) // 8:
        raise ValueError(f'flag string holds {len(raw) * 8} bits, expected {n}.')
    return torch.from_numpy(np.unpackbits(raw, bitorder='little')[:n].astype(bool))


def build_autoattack(model: nn.Module, eps: float, version: str = 'standard', seed: int = 0,
                     device: Any = 'cpu', overrides: Optional[Dict[str, Dict[str, Any]]] = None) -> Any:
    """A configured ``pyautoattack.AutoAttack`` (L-inf) for ``model`` in eval mode.

    ``overrides`` ({'apgd' | 'apgd_targeted' | 'fab' | 'square': {attribute: value}}) departs from the original
    parameters (e.g. fewer Square queries in quick tests); :func:`autoattack_config` reports what was set.
    """
    if version not in AA_VERSIONS:
        raise ValueError(f'Unknown AutoAttack version {version!r}; expected one of {AA_VERSIONS}.')
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:
        raise RuntimeError('AutoAttack needs the pyautoattack package (pip install pyautoattack==0.2.0).') from e
    aa = AutoAttack(model, norm='Linf', eps=eps, version=version, device=device, seed=seed)
    aa.logger.setLevel(logging.WARNING)
    for sub, params in (overrides or {}).items():
        obj = getattr(aa, sub, None)
        if sub not in _SUBS or obj is None:
            raise ValueError(f'Unknown AutoAttack sub-attack {sub!r} in overrides.')
        for k, v in params.items():
            if not hasattr(obj, k):
                raise ValueError(f'AutoAttack {sub} has no parameter {k!r}.')
            setattr(obj, k, v)
    return aa


def autoattack_config(aa: Any) -> Dict[str, Any]:
    """The exact configuration of every sub-attack that ``aa`` runs, read from the objects."""
    apgd, apgd_t, fab, square = aa.apgd, aa.apgd_targeted, aa.fab, aa.square
    subs: Dict[str, Dict[str, Any]] = {
        'apgd-ce': {'n_iter': apgd.n_iter, 'n_restarts': apgd.n_restarts, 'eot_iter': apgd.eot_iter,
                    'rho': apgd.thr_decr, 'loss': 'ce'},
        'apgd-dlr': {'n_iter': apgd.n_iter, 'n_restarts': apgd.n_restarts, 'eot_iter': apgd.eot_iter,
                     'rho': apgd.thr_decr, 'loss': 'dlr'},
        'apgd-t': {'n_iter': apgd_t.n_iter, 'n_restarts': apgd_t.n_restarts, 'eot_iter': apgd_t.eot_iter,
                   'n_target_classes': apgd_t.n_target_classes, 'rho': apgd_t.thr_decr, 'loss': 'dlr-targeted'},
        # the original's run_standard_evaluation sets fab.n_restarts = 1 and targeted=True for 'fab-t'
        'fab-t': {'n_iter': fab.n_iter, 'n_restarts': 1, 'n_target_classes': fab.n_target_classes,
                  'alpha_max': fab.alpha_max, 'eta': fab.eta, 'beta': fab.beta},
        'square': {'n_queries': square.n_queries, 'n_restarts': square.n_restarts, 'p_init': square.p_init,
                   'resc_schedule': square.rescale_schedule, 'loss': square.loss},
    }
    return {
        'implementation': _package() + ' (original fra31/auto-attack code)',
        'version': aa.version,
        'norm': aa.norm,
        'eps': aa.epsilon,
        'seed': aa.seed,
        'attacks': list(aa.attacks_to_run),
        'sub_attacks': {name: subs[name] for name in aa.attacks_to_run if name in subs},
    }


def departures(config: Any, version: str, eps: float) -> List[str]:
    """How a recorded AutoAttack configuration (:func:`autoattack_config`) departs from the original ``version``
    at ``eps`` (L-inf); ``[]``: it is exactly the original. A missing or malformed record is a departure."""
    if not isinstance(config, dict) or not isinstance(config.get('sub_attacks'), dict):
        return ['sub-attacks and their parameters not recorded']
    want = ORIGINAL[version]
    out = [f'{k} {config.get(k)!r} (original: {v!r})' for k, v in
           (('version', version), ('norm', 'Linf'), ('eps', eps), ('attacks', want['attacks']))
           if config.get(k) != v]
    for sub, params in want['sub_attacks'].items():
        have = config['sub_attacks'].get(sub)
        if have != params:
            out.append(f'{sub} {have!r} (original: {params!r})')
    return out


def sub_attack_cost(config: Dict[str, Any]) -> Dict[str, float]:
    """Rough cost of each sub-attack per attacked point, in gradient evaluations (forward + input-gradient
    backward; a forward alone counted as 0.4): used only to decide whether a batch fits a deadline."""
    out = {}
    for name, p in config['sub_attacks'].items():
        if name.startswith('apgd'):
            out[name] = p['n_iter'] * p['n_restarts'] * p['eot_iter'] * p.get('n_target_classes', 1)
        elif name == 'fab-t':
            out[name] = 1.5 * p['n_iter'] * p['n_restarts'] * p['n_target_classes']
        elif name == 'square':
            out[name] = 0.4 * p['n_queries'] * p['n_restarts']
    return out


@dataclass
class AAState:
    """Where a resumable AutoAttack run stands; JSON-able (:meth:`to_dict` / :meth:`from_dict`).

    ``robust``: points not yet broken (initially the clean-correct ones). ``current``: the sub-attack in progress,
    ``current_points``: the points it still has to attack in batches of ``batch_size`` (the robust points when it
    started; its batches are slices of their index order), ``batches_done``: how many of those batches are finished.
    ``robust_after``: robust count after each finished sub-attack. Identity fields (version, n, eps, seed, attacks,
    sub_attacks: each one's parameters) must match to continue; the batch size may change between runs
    (``rebatched`` records each change: see :func:`rebatch`).
    """
    version: str
    n: int
    eps: float
    seed: int
    batch_size: int
    attacks: List[str]
    robust: str
    clean: str
    done: List[str] = field(default_factory=list)
    current: Optional[str] = None
    current_points: Optional[str] = None
    batches_done: int = 0
    robust_after: Dict[str, int] = field(default_factory=dict)
    max_bound_violation: float = 0.0
    seconds: float = 0.0
    sub_attacks: Optional[Dict[str, Any]] = None
    rebatched: List[Dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'AAState':
        try:
            return cls(**copy.deepcopy(dict(d)))  # the caller's dict (and its lists) stay as they were
        except TypeError as e:
            raise ValueError(f'malformed AutoAttack state ({e}).') from None

    @property
    def complete(self) -> bool:
        return self.current is None and (self.done == self.attacks or not unpack_flags(self.robust, self.n).any())

    def describe(self) -> str:
        robust = int(unpack_flags(self.robust, self.n).sum())
        following = self._next()
        if self.current:
            batches = -(-int(unpack_flags(self.current_points, self.n).sum()) // self.batch_size)
            where = f'stopped at {self.current} batch {self.batches_done + 1} of {batches}'
        elif following:
            where = f'stopped before {following}'
        else:
            where = 'finished'
        return (f'{len(self.done)} of {len(self.attacks)} sub-attacks done ({", ".join(self.done) or "none"}), '
                f'{where}; {robust} of {self.n} points still robust')

    def _next(self) -> Optional[str]:
        rest = [a for a in self.attacks if a not in self.done]
        return rest[0] if rest else None


@dataclass
class AAResult:
    """Outcome of :func:`run_autoattack_resumable`."""
    complete: bool
    robust: torch.Tensor  # bool (n,), on the CPU: robust so far (final once complete)
    x_adv: torch.Tensor  # adversarial examples found in THIS call (x elsewhere)
    state: AAState
    config: Dict[str, Any]


def _check_state(state: AAState, cfg: Dict[str, Any], n: int, eps: float, seed: int) -> None:
    want = {'version': cfg['version'], 'n': n, 'eps': eps, 'seed': seed, 'attacks': cfg['attacks'],
            'sub_attacks': cfg['sub_attacks']}
    have = {k: getattr(state, k) for k in want}
    diff = [f'{k} {have[k]!r} (now {want[k]!r})' for k in want if k != 'sub_attacks' and have[k] != want[k]]
    if have['sub_attacks'] != want['sub_attacks']:
        diff.append('sub-attack parameters ' + ('not recorded' if have['sub_attacks'] is None else
                                                f'{have["sub_attacks"]} (now {want["sub_attacks"]})'))
    if diff:
        raise ValueError(f'the saved AutoAttack progress belongs to another run: {", ".join(diff)}.')


def rebatch(st: AAState, batch_size: int) -> None:
    """Continue ``st`` in batches of ``batch_size``: the points of the sub-attack in progress that no finished batch
    has attacked become its new batches (a long batch of a slow machine can be split into shorter ones; which points
    share a batch changes the attacks' random starts, not their parameters). Recorded in ``st.rebatched``."""
    if batch_size <= 0:
        raise ValueError(f'batch_size must be positive, got {batch_size}.')
    entry: Dict[str, Any] = {'sub': st.current, 'after_batches': st.batches_done, 'from': st.batch_size,
                             'to': batch_size}
    if st.current is not None:
        points = unpack_flags(st.current_points, st.n).nonzero().flatten()
        attacked = min(st.batches_done * st.batch_size, len(points))
        left = torch.zeros(st.n, dtype=torch.bool)
        left[points[attacked:]] = True
        entry.update(attacked=attacked, left=len(points) - attacked)
        st.current_points, st.batches_done = pack_flags(left), 0
    st.rebatched.append(entry)
    st.batch_size = batch_size


def _saved_seconds_per_unit(st: AAState, cost: Dict[str, float]) -> Optional[float]:
    """Seconds per gradient evaluation of the work ``st`` records as done (None before any)."""
    attacked, units = int(unpack_flags(st.clean, st.n).sum()), 0.0
    for sub in st.done:  # each sub-attack ran on the points the previous one left robust
        units += attacked * cost[sub]
        attacked = st.robust_after[sub]
    if st.current is not None:
        started = int(unpack_flags(st.current_points, st.n).sum())
        units += min(st.batches_done * st.batch_size, started) * cost[st.current]
        units += sum(e.get('attacked', 0) for e in st.rebatched if e['sub'] == st.current) * cost[st.current]
    return st.seconds / units if units > 0 and st.seconds > 0 else None


def _measured_seconds_per_unit(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds per gradient evaluation (forward + input-gradient backward) per image on this machine, timed on
    (x, y) after one warm-up pass: a lower bound, for the first batch's estimate."""
    for _ in range(2):
        t0 = time.perf_counter()
        xg = x.detach().clone().requires_grad_(True)
        torch.autograd.grad(nn.functional.cross_entropy(model(xg), y), xg)
        if xg.is_cuda:
            torch.cuda.synchronize(xg.device)
        seconds = time.perf_counter() - t0
    return seconds / len(y)


def _start(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: Dict[str, Any], eps: float, seed: int,
           batch_size: int, state: Optional[Dict[str, Any]]) -> Tuple[AAState, torch.Tensor]:
    """The state a run starts from (``state`` checked and, for another batch size, re-batched; else the clean-correct
    points of a new run) and its robust flags."""
    n = len(y)
    if state is not None:
        st = AAState.from_dict(state)
        _check_state(st, cfg, n, eps, seed)
        if st.batch_size != batch_size:
            rebatch(st, batch_size)
        return st, unpack_flags(st.robust, n)
    with torch.no_grad():
        robust = torch.cat([(model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).cpu()
                            for i in range(0, n, batch_size)])
    st = AAState(version=cfg['version'], n=n, eps=eps, seed=seed, batch_size=batch_size, attacks=list(cfg['attacks']),
                 robust=pack_flags(robust), clean=pack_flags(robust), sub_attacks=cfg['sub_attacks'])
    return st, robust


def run_autoattack_resumable(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str = 'standard',
        batch_size: int = 500, seed: int = 0, device: Any = 'cpu',
        overrides: Optional[Dict[str, Dict[str, Any]]] = None,
        state: Optional[Dict[str, Any]] = None,
        should_stop: Optional[Callable[[float], bool]] = None,
        on_batch: Optional[Callable[[AAState], None]] = None,
        saved_speed: bool = True,
) -> AAResult:
    """AutoAttack on (x, y), continuing from ``state`` (an :meth:`AAState.to_dict`) if given.

    Before each batch, ``should_stop(estimated_seconds)`` may end the run early (a deadline); after each batch
    ``on_batch(state)`` sees the new state (save it to continue later). Estimates come from the last batch of the
    same sub-attack, or from the seconds per gradient evaluation measured so far; the first batch's from one
    gradient evaluation of it timed here or, if slower, in a resumed run, the speed the saved state records (unless
    ``saved_speed`` is False: the state was saved on another machine).
    """
    if model.training:
        raise ValueError('AutoAttack must run on a model in eval mode (deterministic FSR mask).')
    if len(x) != len(y) or len(y) == 0:
        raise ValueError('AutoAttack needs a non-empty batch and as many labels.')
    aa = build_autoattack(model, eps, version, seed, device, overrides)
    cfg = autoattack_config(aa)
    order = list(cfg['attacks'])
    cost = sub_attack_cost(cfg)
    n = len(y)
    x, y = x.to(device), y.to(device)
    x_adv = x.clone()
    st, robust = _start(model, x, y, cfg, eps, seed, batch_size, state)
    # a resumed run's saved speed: the least its first batch is estimated at (a batch may last an hour on a CPU)
    sec_per_unit = _saved_seconds_per_unit(st, cost) if saved_speed else None
    timed = False  # whether this machine's speed has been timed (before the first batch, when there is a deadline)
    last: Dict[str, float] = {}  # sub-attack -> seconds per point of its last batch
    for sub in order:
        if sub in st.done:
            continue
        if not robust.any():
            break
        if st.current != sub:
            st.current, st.current_points, st.batches_done = sub, pack_flags(robust), 0
        points = unpack_flags(st.current_points, n).nonzero().flatten()
        batches = [points[i:i + batch_size] for i in range(0, len(points), batch_size)]
        for b in range(st.batches_done, len(batches)):
            idx = batches[b][robust[batches[b]]]  # points broken since (none in an uninterrupted run) stay broken
            if not timed and should_stop is not None and len(idx):  # a saved speed may be a faster machine's
                here = _measured_seconds_per_unit(model, x[idx.to(x.device)], y[idx.to(y.device)])
                sec_per_unit, timed = max(sec_per_unit or 0.0, here), True
            per_point = last.get(sub, sec_per_unit * cost[sub] if sec_per_unit else None)
            if should_stop is not None and should_stop(per_point * len(idx) if per_point else 0.0):
                return AAResult(False, robust.clone(), x_adv, st, cfg)
            t0 = time.perf_counter()
            if len(idx):
                xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
                aa.attacks_to_run = [sub]
                try:
                    adv, pred = aa.run_standard_evaluation(xb, yb, batch_size=len(idx))
                finally:
                    aa.attacks_to_run = order
                fooled = (pred != yb).cpu()
                robust[idx[fooled]] = False
                x_adv[idx.to(x.device)] = adv
                st.max_bound_violation = max(st.max_bound_violation, linf_violation(adv, xb, eps))
                dt = time.perf_counter() - t0
                last[sub] = dt / len(idx)
                sec_per_unit = dt / (len(idx) * cost[sub])
            st.batches_done = b + 1
            st.robust = pack_flags(robust)
            st.seconds = round(st.seconds + time.perf_counter() - t0, 3)
            if on_batch is not None:
                on_batch(st)
        st.done.append(sub)
        st.current, st.current_points, st.batches_done = None, None, 0
        st.robust_after[sub] = int(robust.sum())
        if on_batch is not None:
            on_batch(st)
    return AAResult(True, robust.clone(), x_adv, st, cfg)


def run_autoattack(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str = 'standard',
        batch_size: int = 500, seed: int = 0, device: Any = 'cpu',
        overrides: Optional[Dict[str, Dict[str, Any]]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """Run AutoAttack on (x, y) in one go; returns (x_adv, per-example robust correctness, configuration)."""
    res = run_autoattack_resumable(model, x, y, eps, version, batch_size, seed, device, overrides)
    return res.x_adv, res.robust.to(y.device), res.config
