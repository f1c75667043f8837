"""Robustness evaluation: the paper's white-box suite (Sec. 4.1), AutoAttack, a transfer attack, and
gradient-masking checks (Carlini et al. 2019), written as the ``fsr-hub/verify/v1`` report.

Attack names are fixed (they are the report's keys): ``clean``, ``fgsm``, ``pgd20``, ``pgd100``, ``cw``,
``autoattack``, ``autoattack_rand``, ``transfer``. FGSM, PGD-20/100 (step eps/10) and C&W-inf (PGD-30 on the
margin loss, kappa 50) start at x (no random start), as in the original FSR code. The per-example Ensemble
(Eq. 6) is correct under clean and every suite attack that ran.
"""
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm import tqdm

from .attacks import cw_inf, fgsm, linf_violation, pgd, pgd_trajectory
from .autoattack import run_autoattack
from .hardware import hardware_name, synchronize
from .inputs import check_pixels
from .weights import sha256_file

__all__ = [
    'SCHEMA', 'ATTACKS', 'DEFAULT_ATTACKS', 'ENSEMBLE_ATTACKS', 'STEPS_SWEEP', 'EPS_SWEEP_255', 'attack_params',
    'evaluate', 'model_info', 'build_report', 'parse_attacks', 'training_section',
]

SCHEMA = 'fsr-hub/verify/v1'
ATTACKS = ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'autoattack', 'autoattack_rand', 'transfer')
DEFAULT_ATTACKS = ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'autoattack', 'autoattack_rand')
ENSEMBLE_ATTACKS = ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw')
STEPS_SWEEP = (1, 5, 10, 20, 50, 100)
EPS_SWEEP_255 = (8, 16, 32, 64)
#: accuracy (%) under which "falls to ~0" holds at eps 64/255
ZERO_TOL = 1.0
#: the unbounded attack: PGD with eps = 1 (the whole [0, 1] box)
UNBOUNDED = {'eps': 1.0, 'alpha': 0.01, 'steps': 100, 'random_start': False}


def parse_attacks(spec: str) -> Tuple[str, ...]:
    """'clean,pgd20' -> ('clean', 'pgd20'); 'all' -> every attack; unknown names raise ValueError."""
    names = ATTACKS if spec.strip() == 'all' else tuple(s.strip() for s in spec.split(',') if s.strip())
    bad = [n for n in names if n not in ATTACKS]
    if bad or not names:
        raise ValueError(f'Unknown attack(s) {bad or spec!r}; choose from {", ".join(ATTACKS)} (or "all").')
    return names


def attack_params(name: str, eps: float) -> Dict[str, Any]:
    """The parameters each suite attack runs with (recorded in the report)."""
    return {
        'fgsm': {'eps': eps, 'steps': 1},
        'pgd20': {'eps': eps, 'alpha': eps / 10, 'steps': 20, 'random_start': False},
        'pgd100': {'eps': eps, 'alpha': eps / 10, 'steps': 100, 'random_start': False},
        'cw': {'eps': eps, 'alpha': eps / 10, 'steps': 30, 'kappa': 50.0, 'random_start': False},
        'transfer': {'eps': eps, 'alpha': eps / 10, 'steps': 20, 'random_start': False, 'attack': 'pgd20 on source'},
    }.get(name, {})


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


def _run_batched(
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model: nn.Module, x: torch.Tensor,
        y: torch.Tensor, eps: float, batch_size: int, device: torch.device, desc: str, progress: bool,
        extra: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]] = None,
) -> Tuple[torch.Tensor, float]:
    """Per-example correctness of ``model`` on fn(x, y) (adversarial inputs), and the worst bound violation."""
    correct, worst = [], 0.0
    for i in tqdm(range(0, len(y), batch_size), desc=desc, unit='batch', disable=not progress, leave=False):
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
) -> Dict[str, Any]:
    """Run ``attacks`` on (x float [0, 1] NCHW, y) and the masking checks; returns the report's
    ``results``, ``masking_checks`` and ``timing`` sections (accuracies in %, 2 decimals)."""
    check_pixels(x, 'evaluate: x')
    for a in attacks:
        if a not in ATTACKS:
            raise ValueError(f'Unknown attack {a!r}; choose from {ATTACKS}.')
    if 'transfer' in attacks and transfer_model is None:
        raise ValueError("attack 'transfer' needs a source model (--transfer-from MODEL:WEIGHTS).")
    if x.ndim != 4 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f'evaluate needs a non-empty NCHW batch and as many labels, got {tuple(x.shape)}, {tuple(y.shape)}.')
    device = torch.device(device)
    model = model.to(device)
    _assert_eval(model)
    if transfer_model is not None:
        transfer_model = transfer_model.to(device)
        _assert_eval(transfer_model)
    torch.manual_seed(seed)
    t_total = time.perf_counter()
    results: Dict[str, Dict[str, Any]] = {}
    correct_by: Dict[str, torch.Tensor] = {}
    traj: Dict[int, List[torch.Tensor]] = {k: [] for k in STEPS_SWEEP}

    suite: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        'clean': lambda xb, yb: xb,
        'fgsm': lambda xb, yb: fgsm(model, xb, yb, eps),
        'pgd20': lambda xb, yb: pgd(model, xb, yb, eps, eps / 10, 20),
        'cw': lambda xb, yb: cw_inf(model, xb, yb, eps, eps / 10, 30, 50.0),
        'transfer': lambda xb, yb: pgd(transfer_model, xb, yb, eps, eps / 10, 20),
    }

    def pgd100_traj(xb, yb):
        # one PGD-100 run gives the steps sweep: without random start the k-th iterate is PGD-k's output
        x_adv, rec = pgd_trajectory(model, xb, yb, eps, eps / 10, 100, record=STEPS_SWEEP)
        for k in STEPS_SWEEP:
            traj[k].append(rec[k].cpu())
        return x_adv

    suite['pgd100'] = pgd100_traj

    for name in attacks:
        synchronize(device)
        t0 = time.perf_counter()
        entry: Dict[str, Any] = {}
        if name in suite:
            correct, worst = _run_batched(suite[name], model, x, y, eps, batch_size, device, name, progress)
            if name != 'clean':
                entry['params'] = attack_params(name, eps)
        else:
            version = 'standard' if name == 'autoattack' else 'rand'
            x_adv, correct, cfg = run_autoattack(model, x.to(device), y.to(device), eps, version, batch_size,
                                                 seed, device)
            worst = linf_violation(x_adv, x.to(device), eps)
            correct = correct.cpu()
            entry['implementation'] = cfg['implementation']
            entry['params'] = cfg
            _assert_eval(model)
        synchronize(device)
        correct_by[name] = correct
        results[name] = {'accuracy': _pct(correct), 'per_class': _per_class(correct, y.cpu(), num_classes),
                         'seconds': round(time.perf_counter() - t0, 3), 'max_bound_violation': worst, **entry}
        if name == 'transfer':
            results[name]['source'] = transfer_source or 'unnamed source model'

    ens = [a for a in ENSEMBLE_ATTACKS if a in correct_by]
    if len(ens) >= 2:
        correct = torch.stack([correct_by[a] for a in ens]).all(dim=0)
        results['ensemble'] = {'accuracy': _pct(correct), 'per_class': _per_class(correct, y.cpu(), num_classes),
                               'attacks': ens}

    masking = _masking_checks(model, x, y, eps, batch_size, device, masking_n, traj, results, progress) \
        if masking_checks else _empty_masking(results)
    return {'results': results, 'masking_checks': masking,
            'timing': {'total_seconds': round(time.perf_counter() - t_total, 3)}}


def _cross_checks(results: Dict[str, Any]) -> Dict[str, Optional[bool]]:
    transfer_ok = None
    if 'transfer' in results and 'pgd20' in results:
        transfer_ok = results['transfer']['accuracy'] >= results['pgd20']['accuracy']
    rand_ok = None
    if 'autoattack' in results and 'autoattack_rand' in results:
        rand_ok = abs(results['autoattack_rand']['accuracy'] - results['autoattack']['accuracy']) <= 1.0
    return {'transfer_ge_whitebox': transfer_ok, 'rand_within_1pt': rand_ok}


def _empty_masking(results: Dict[str, Any]) -> Dict[str, Any]:
    checks = {'falls_to_zero_at_64': None, 'unbounded_zero': None, 'more_steps_never_raise': None,
              **_cross_checks(results)}
    known = [v for v in checks.values() if v is not None]
    return {'eps_sweep': None, 'unbounded_accuracy': None, 'steps_sweep': None, 'checks': checks,
            'passed': all(known) if known else None}


def _masking_checks(model, x, y, eps, batch_size, device, masking_n, traj, results, progress) -> Dict[str, Any]:
    n = len(y) if masking_n is None else min(masking_n, len(y))
    xs, ys = x[:n], y[:n]
    t0 = time.perf_counter()
    eps_acc = []
    for e255 in EPS_SWEEP_255:
        e = e255 / 255
        correct, _ = _run_batched(lambda xb, yb: pgd(model, xb, yb, e, e / 10, 20), model, xs, ys, e, batch_size,
                                  device, f'pgd20 eps {e255}/255', progress)
        eps_acc.append(_pct(correct))
    u = UNBOUNDED
    unb, _ = _run_batched(lambda xb, yb: pgd(model, xb, yb, u['eps'], u['alpha'], u['steps']), model, xs, ys,
                          u['eps'], batch_size, device, 'unbounded', progress)
    unbounded = _pct(unb)
    if traj[STEPS_SWEEP[0]]:
        steps_n = len(y)
        steps_acc = [_pct(torch.cat(traj[k])) for k in STEPS_SWEEP]
    else:
        steps_n = n
        rec_all: Dict[int, List[torch.Tensor]] = {k: [] for k in STEPS_SWEEP}

        def run(xb, yb):
            x_adv, rec = pgd_trajectory(model, xb, yb, eps, eps / 10, max(STEPS_SWEEP), record=STEPS_SWEEP)
            for k in STEPS_SWEEP:
                rec_all[k].append(rec[k].cpu())
            return x_adv

        _run_batched(run, model, xs, ys, eps, batch_size, device, 'steps sweep', progress)
        steps_acc = [_pct(torch.cat(rec_all[k])) for k in STEPS_SWEEP]
    checks = {
        'falls_to_zero_at_64': eps_acc[-1] <= ZERO_TOL,
        'unbounded_zero': unbounded == 0.0,
        'more_steps_never_raise': all(b <= a for a, b in zip(steps_acc, steps_acc[1:])),
        **_cross_checks(results),
    }
    known = [v for v in checks.values() if v is not None]
    return {
        'n': n,
        'eps_sweep': {'eps_255': list(EPS_SWEEP_255), 'accuracy': eps_acc, 'attack': 'pgd20, step eps/10'},
        'eps_monotone': all(b <= a for a, b in zip(eps_acc, eps_acc[1:])),
        'unbounded_accuracy': unbounded,
        'unbounded_attack': dict(UNBOUNDED),
        'steps_sweep': {'steps': list(STEPS_SWEEP), 'accuracy': steps_acc, 'n': steps_n,
                        'attack': 'pgd, step eps/10, no random start'},
        'checks': checks,
        'zero_tolerance': ZERO_TOL,
        'passed': all(known),
        'seconds': round(time.perf_counter() - t0, 3),
    }


def model_info(model: nn.Module, architecture: str, tag: Optional[str] = None,
               weights: Optional[str] = None) -> Dict[str, Any]:
    """The report's ``model`` section (sha256 of the weight file when there is one)."""
    return {
        'architecture': architecture, 'tag': tag, 'weights': str(weights) if weights else None,
        'sha256': sha256_file(weights) if weights else None,
        'num_params': sum(p.numel() for p in model.parameters()),
    }


def build_report(
        model: Dict[str, Any], data: Dict[str, Any], evaluation: Dict[str, Any], eps: float, batch_size: int,
        device: Any, command: str, dtype: str = 'float32',
) -> Dict[str, Any]:
    """Assemble the ``fsr-hub/verify/v1`` JSON report."""
    device = torch.device(device)
    return {
        'schema': SCHEMA,
        'model': model,
        'data': data,
        'eps': eps,
        'batch_size': batch_size,
        'hardware': {'device': hardware_name(device), 'torch': torch.__version__, 'dtype': dtype},
        'results': evaluation['results'],
        'masking_checks': evaluation['masking_checks'],
        'timing': evaluation['timing'],
        'command': command,
    }


def training_section(summary: Dict[str, Any], weights_sha256: str) -> Dict[str, Any]:
    """The report's ``training`` key from the trainer's ``train_summary.json`` (schema ``fsr-hub/train/v1``).

    The summary must be the run that produced the evaluated file: its final or best weights have that sha256.
    """
    if summary.get('schema') != 'fsr-hub/train/v1':
        raise ValueError(f"train summary has schema {summary.get('schema')!r}, expected 'fsr-hub/train/v1'.")
    files = summary.get('weights', {})
    selected = [k for k in ('final', 'best') if isinstance(files.get(k), dict) and files[k].get('sha256') == weights_sha256]
    if not selected:
        raise ValueError(f'the train summary belongs to another run: neither its final nor its best weights have '
                         f'sha256 {weights_sha256} (re-save the released file with the trainer, or verify that file).')
    epoch_seconds = summary.get('epoch_seconds') or []
    return {
        'config': summary.get('config'),
        'command': summary.get('command'),
        'epochs': len(epoch_seconds),
        'epoch_seconds': epoch_seconds,
        'wall_clock_seconds': summary.get('wall_clock_seconds'),
        'hardware': (summary.get('hardware') or {}).get('device'),
        'weights': selected[0],
        'best': summary.get('best'),
    }
