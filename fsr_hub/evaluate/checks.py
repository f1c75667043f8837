"""Gradient-masking checks (Carlini et al. 2019): the eps and steps sweeps and the unbounded attack, and the
cross checks between attacks that ran (transfer vs white-box, AutoAttack rand vs standard, and black-box vs the
strongest iterative white-box attack: :data:`BLACKBOX_TOL`)."""
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..attack_registry import (
    AUTOATTACK, AUTOATTACK_RAND, BLACKBOX_ATTACKS, PGD20, PGD100, SPECS, TRANSFER, WHITEBOX_REFERENCE,
)
from ..attacks import pgd, pgd_trajectory
from .config import EvalConfig, attack_params
from .measure import Clock, attack_fn, pct, run_batched

__all__ = ['STEPS_SWEEP', 'EPS_SWEEP_255', 'ZERO_TOL', 'UNBOUNDED', 'BLACKBOX_TOL', 'trajectory_recorded',
           'masking_parts', 'masking_result', 'masking_section']

STEPS_SWEEP = (1, 5, 10, 20, 50, 100)
EPS_SWEEP_255 = (8, 16, 32, 64)
#: accuracy (%) under which "falls to ~0" holds at eps 64/255
ZERO_TOL = 1.0
#: the unbounded attack: PGD with eps = 1 (the whole [0, 1] box)
UNBOUNDED = {'eps': 1.0, 'alpha': 0.01, 'steps': 100, 'random_start': False}
#: points by which a black-box attack may beat the strongest iterative white-box attack before it signals masking
BLACKBOX_TOL = 1.0


def trajectory_recorded(traj: Mapping[int, List[torch.Tensor]]) -> bool:
    """True when this run's PGD-100 stage recorded the iterates the steps sweep reads."""
    return bool(traj[STEPS_SWEEP[0]])


#: a part of the masking checks: (name, gradient evaluations per image, the measurement)
Part = Tuple[str, float, Callable[[], Any]]


def _steps_sweep(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, config: EvalConfig,
                 traj: Mapping[int, List[torch.Tensor]], clock: Clock) -> Dict[str, Any]:
    """PGD-k accuracy for k in STEPS_SWEEP (and the images it ran on): from the PGD-100 stage's trajectory when
    it ran, else measured."""
    if trajectory_recorded(traj):
        return {'accuracy': [pct(torch.cat(traj[k])) for k in STEPS_SWEEP],
                'n': sum(len(t) for t in traj[STEPS_SWEEP[0]])}
    rec_all: Dict[int, List[torch.Tensor]] = {k: [] for k in STEPS_SWEEP}
    p = attack_params(PGD100, config.eps)

    def run(xb, yb):
        x_adv, rec = pgd_trajectory(model, xb, yb, p['eps'], p['alpha'], p['steps'], record=STEPS_SWEEP)
        for k in STEPS_SWEEP:
            rec_all[k].append(rec[k].cpu())
        return x_adv

    run_batched(run, model, xs, ys, config.eps, config.batch_size, config.device, 'steps sweep', config.progress,
                clock=clock)
    return {'accuracy': [pct(torch.cat(rec_all[k])) for k in STEPS_SWEEP], 'n': len(ys)}


def masking_parts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int, config: EvalConfig,
                  traj: Mapping[int, List[torch.Tensor]], clock: Clock) -> List[Part]:
    """The checks on the first ``n`` images as parts measured one by one (each saved as it ends): PGD-20 at each
    eps of EPS_SWEEP_255 / 255, the unbounded attack and the steps sweep."""
    xs, ys = x[:n], y[:n]

    def eps_part(e255: int) -> Callable[[], float]:
        e = e255 / 255
        fn = attack_fn(PGD20, model, attack_params(PGD20, e), None)
        return lambda: pct(run_batched(fn, model, xs, ys, e, config.batch_size, config.device,
                                       f'{PGD20} eps {e255}/255', config.progress, clock=clock)[0])

    u = UNBOUNDED

    def unbounded() -> float:
        fn = lambda xb, yb: pgd(model, xb, yb, u['eps'], u['alpha'], u['steps'])  # noqa: E731
        return pct(run_batched(fn, model, xs, ys, u['eps'], config.batch_size, config.device, 'unbounded',
                               config.progress, clock=clock)[0])

    steps_units = 0.0 if trajectory_recorded(traj) else SPECS[PGD100].cost
    return [*((f'eps_{e255}', SPECS[PGD20].cost, eps_part(e255)) for e255 in EPS_SWEEP_255),
            ('unbounded', SPECS[PGD100].cost, unbounded),
            ('steps_sweep', steps_units, lambda: _steps_sweep(model, xs, ys, config, traj, clock))]


def masking_result(n: int, parts: Mapping[str, Any], seconds: float) -> Dict[str, Any]:
    """The report's sweeps and checks from the measured ``parts`` of :func:`masking_parts`."""
    eps_acc = [parts[f'eps_{e255}'] for e255 in EPS_SWEEP_255]
    unbounded = parts['unbounded']
    steps_acc = parts['steps_sweep']['accuracy']
    return {
        'n': n,
        'eps_sweep': {'eps_255': list(EPS_SWEEP_255), 'accuracy': eps_acc, 'attack': f'{PGD20}, step eps/10'},
        'eps_monotone': all(b <= a for a, b in zip(eps_acc, eps_acc[1:])),
        'unbounded_accuracy': unbounded,
        'unbounded_attack': dict(UNBOUNDED),
        'steps_sweep': {'steps': list(STEPS_SWEEP), 'accuracy': steps_acc, 'n': parts['steps_sweep']['n'],
                        'attack': 'pgd, step eps/10, no random start'},
        'checks': {
            'falls_to_zero_at_64': eps_acc[-1] <= ZERO_TOL,
            'unbounded_zero': unbounded == 0.0,
            'more_steps_never_raise': all(b <= a for a, b in zip(steps_acc, steps_acc[1:])),
        },
        'zero_tolerance': ZERO_TOL,
        'seconds': round(seconds, 3),
    }


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
                if best is None or pct(flags[w][:k]) < best[1]:
                    best = (w, pct(flags[w][:k]), k)
        if best is not None:
            w, w_acc, k = best
            acc = pct(flags[a][:k])
            out[a] = {'accuracy': acc, 'whitebox': w, 'whitebox_accuracy': w_acc, 'n': k, 'tolerance': BLACKBOX_TOL,
                      'passed': acc >= w_acc - BLACKBOX_TOL}
    return out


def _first_k(flags: Mapping[str, torch.Tensor], a: str, b: str) -> Tuple[float, float]:
    """Accuracies of ``a`` and ``b`` on the images both ran on (each ran on a first-n subset)."""
    k = min(len(flags[a]), len(flags[b]))
    return pct(flags[a][:k]), pct(flags[b][:k])


def _cross_checks(flags: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, Optional[bool]], Dict[str, Dict[str, Any]]]:
    transfer_ok = None
    if TRANSFER in flags and PGD20 in flags:
        transfer, whitebox = _first_k(flags, TRANSFER, PGD20)
        transfer_ok = transfer >= whitebox
    rand_ok = None
    if AUTOATTACK in flags and AUTOATTACK_RAND in flags:  # rand usually runs on the first 1,000 only
        rand, standard = _first_k(flags, AUTOATTACK_RAND, AUTOATTACK)
        rand_ok = rand - standard <= 1.0
    versus = _blackbox_vs_whitebox(flags)
    blackbox_ok = all(v['passed'] for v in versus.values()) if versus else None
    checks = {'transfer_ge_whitebox': transfer_ok, 'rand_within_1pt': rand_ok, 'blackbox_ge_whitebox': blackbox_ok}
    return checks, versus


def masking_section(masking: Optional[Mapping[str, Any]], flags: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """The report's ``masking_checks``: the sweeps' results (None: not run) with the cross checks of ``flags``."""
    checks, versus = _cross_checks(flags)
    if masking is not None:
        out = dict(masking)
        out['checks'] = {**out['checks'], **checks}
        out['blackbox_vs_whitebox'] = versus
    else:
        checks = {'falls_to_zero_at_64': None, 'unbounded_zero': None, 'more_steps_never_raise': None, **checks}
        out = {'eps_sweep': None, 'unbounded_accuracy': None, 'steps_sweep': None, 'checks': checks,
               'blackbox_vs_whitebox': dict(versus)}
    known = [v for v in out['checks'].values() if v is not None]
    out['passed'] = all(known) if known else None
    return out
