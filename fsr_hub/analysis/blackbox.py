"""Table 3's black-box attacks on a target model: TI-FGSM and DI-FGSM crafted on a source model and transferred,
and the query-based NAttack (see :mod:`fsr_hub.blackbox` for the attacks and their parameters).

Accuracy is over all n images: an image the target already misclassifies counts as broken. The section records
each attack's parameters, the source, and for the transfer attacks the source's own accuracy on the crafted images
(the attack works on the source) and the worst bound violation (0.0)."""
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from ..attacks import linf_violation
from ..blackbox import BLACKBOX_ATTACKS, BLACKBOX_PARAMS, NATTACK, di_fgsm, run_nattack, ti_fgsm
from ..inputs import check_pixels
from .common import AnalysisError, Deadline, prepare

__all__ = ['transfer_attack', 'nattack_attack', 'blackbox_analysis']

_TRANSFER = {'ti_fgsm': ti_fgsm, 'di_fgsm': di_fgsm}


def _pct(correct: torch.Tensor) -> float:
    return round(100.0 * correct.float().mean().item(), 2) if correct.numel() else 0.0


def transfer_attack(
        target: nn.Module, source: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, eps: float = 8 / 255,
        batch_size: int = 500, device: Any = 'cpu', seed: int = 0, source_name: Optional[str] = None,
        deadline: Optional[Deadline] = None,
) -> Dict[str, Any]:
    """Accuracy (%) of ``target`` on ``attack`` ('ti_fgsm' or 'di_fgsm') examples crafted on ``source``; one
    batch is one deadline unit (the section's ``n`` counts the images done)."""
    if attack not in _TRANSFER:
        raise AnalysisError(f'unknown transfer attack {attack!r}; choose from {sorted(_TRANSFER)}.')
    deadline = deadline or Deadline()
    target, source = prepare(target, device), prepare(source, device)
    torch.manual_seed(seed)  # DI-FGSM's random resizing and padding
    tgt, src, clean, worst = [], [], [], 0.0
    for i in range(0, len(y), batch_size):
        if not deadline.allows_next():
            break
        with deadline.unit():
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            x_adv = _TRANSFER[attack](source, xb, yb, eps)
            worst = max(worst, linf_violation(x_adv, xb, eps))
            with torch.no_grad():
                tgt.append((target(x_adv).argmax(1) == yb).cpu())
                src.append((source(x_adv).argmax(1) == yb).cpu())
                clean.append((target(xb).argmax(1) == yb).cpu())
    cat = (lambda v: torch.cat(v) if v else torch.zeros(0, dtype=torch.bool))
    params = dict(BLACKBOX_PARAMS[attack], eps=eps)
    if attack == 'ti_fgsm':
        params['alpha'] = eps / params['steps']
    return {'accuracy': _pct(cat(tgt)), 'clean_accuracy': _pct(cat(clean)), 'source_accuracy': _pct(cat(src)),
            'n': len(cat(tgt)), 'source': source_name or type(source).__name__, 'params': params,
            'max_bound_violation': worst, 'implementation': 'torchattack ' + _version('torchattack')}


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return '(not installed)'


def nattack_attack(
        target: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, image_batch: int = 50,
        device: Any = 'cpu', seed: int = 0, deadline: Optional[Deadline] = None, **params: Any,
) -> Dict[str, Any]:
    """Accuracy (%) of ``target`` under NAttack (:func:`fsr_hub.blackbox.run_nattack`; ``params`` override
    :data:`fsr_hub.blackbox.NATTACK`), ``image_batch`` images attacked together, one batch per deadline unit."""
    deadline = deadline or Deadline()
    target = prepare(target, device)
    cfg = {k: v for k, v in NATTACK.items() if k != 'n_images'}
    cfg.update(params)
    correct, queries, success, worst = [], [], [], 0.0
    for i in range(0, len(y), image_batch):
        if not deadline.allows_next():
            break
        with deadline.unit():
            xb, yb = x[i:i + image_batch].to(device), y[i:i + image_batch].to(device)
            res = run_nattack(target, xb, yb, eps, seed=seed + i, **cfg)
            worst = max(worst, linf_violation(res.x_adv, xb, eps))
            with torch.no_grad():
                correct.append((target(res.x_adv).argmax(1) == yb).cpu())
            queries.append(res.queries.cpu())
            success.append(res.success.cpu())
    if not correct:
        return {'accuracy': None, 'n': 0, 'params': dict(cfg, eps=eps)}
    c, q, s = torch.cat(correct), torch.cat(queries).float(), torch.cat(success)
    return {
        'accuracy': _pct(c), 'n': len(c), 'params': dict(cfg, eps=eps),
        'queries': {'mean': round(q.mean().item(), 1), 'max': int(q.max()),
                    'median_to_success': float(q[s].median()) if s.any() else None},
        'successes': int(s.sum()), 'max_bound_violation': worst,
        'implementation': 'fsr_hub.blackbox.run_nattack (Li et al. 2019, Algorithm 1)',
    }


def blackbox_analysis(
        target: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str] = BLACKBOX_ATTACKS,
        source: Optional[nn.Module] = None, source_name: Optional[str] = None, eps: float = 8 / 255,
        batch_size: int = 500, nattack_n: Optional[int] = NATTACK['n_images'], nattack_batch: int = 50,
        device: Any = 'cpu', seed: int = 0, deadline: Optional[Deadline] = None, **nattack_params: Any,
) -> Dict[str, Any]:
    """Table 3's black-box columns for ``target``: each of ``attacks`` on (x, y); NAttack on the first
    ``nattack_n`` images (the paper: 1,000)."""
    bad = [a for a in attacks if a not in BLACKBOX_ATTACKS]
    if bad or not attacks:
        raise AnalysisError(f'unknown black-box attack(s) {bad or attacks!r}; choose from {BLACKBOX_ATTACKS}.')
    if any(a in _TRANSFER for a in attacks) and source is None:
        raise AnalysisError('TI-FGSM / DI-FGSM need a source model (--source MODEL:WEIGHTS).')
    check_pixels(x, 'black-box attack images')
    deadline = deadline or Deadline()
    out: Dict[str, Any] = {}
    for a in attacks:
        if not deadline.allows_next():
            break
        if a == 'nattack':
            n = len(y) if nattack_n is None else min(nattack_n, len(y))
            out[a] = nattack_attack(target, x[:n], y[:n], eps, nattack_batch, device, seed, deadline, **nattack_params)
        else:
            out[a] = transfer_attack(target, source, x, y, a, eps, batch_size, device, seed, source_name, deadline)
    return out
