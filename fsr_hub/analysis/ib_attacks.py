"""The NRF / RF attacks of the Information-Bottleneck paper (Kim, Lee and Ro, NeurIPS 2021) and the CW-L2 attack
they extend, as L2 minimum-distortion attacks: a success rate and the L2 distortion it took. They are outside the
L-inf 8/255 threat model of the accuracy table and are reported apart from it.

Per batch, the split of :mod:`fsr_hub.analysis.ib` on the clean images with their labels is shared by the four
feature attacks (NRF, NRF2 on the non-robust units, RF, RF2 on the robust ones); each is CW-L2 in tanh space plus a
feature term that pushes the cut feature against the margin on those units only (:func:`l2_attack`).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm import tqdm

from ..hardware import strict_float32
from ..inputs import check_pixels
from .common import AnalysisError, Deadline, prepare
from .ib import (
    IB_BETA, IB_LR, IB_STEPS, FeatureCut, batches, check_count, check_positive, check_split_args, feature_cut, frozen,
    ib_split_batch, split_params,
)

__all__ = ['IB_ATTACKS', 'IB_ATTACK_LABELS', 'ATTACK_STEPS', 'ATTACK_LR', 'ATTACK_C', 'PIXEL_CLAMP', 'margin',
           'to_tanh_space', 'from_tanh_space', 'feature_term', 'l2_attack', 'ib_attack']

#: attack -> (units the feature term reads, its sign in the cost); CW-L2 has no feature term
_TERMS: Dict[str, Tuple[Optional[str], float]] = {
    'nrf': ('non_robust', -1.0), 'nrf2': ('non_robust', 1.0), 'rf': ('robust', -1.0), 'rf2': ('robust', 1.0),
    'cw_l2': (None, 0.0)}
IB_ATTACKS = tuple(_TERMS)
IB_ATTACK_LABELS = {'nrf': 'NRF', 'nrf2': 'NRF2', 'rf': 'RF', 'rf2': 'RF2', 'cw_l2': 'CW-L2 (no feature term)'}
ATTACK_STEPS = 200
ATTACK_LR = 0.1
ATTACK_C = 0.1
PIXEL_CLAMP = 1e-6


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max(Z_y - max_{i != y} Z_i, 0) per example (the maximum over the other classes only, whatever their sign)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), float('-inf')).amax(1)
    return (true - other).clamp_min(0.0)


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    """w with (tanh w + 1) / 2 = x, for x clamped to [PIXEL_CLAMP, 1 - PIXEL_CLAMP] (finite at 0 and 1)."""
    return torch.atanh(2.0 * x.clamp(PIXEL_CLAMP, 1.0 - PIXEL_CLAMP) - 1.0)


def from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1.0) / 2.0


def feature_term(z: torch.Tensor, g: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """||units * g||_2 over the whole tensor, with gradient units * g / ||units * g||_2 in z (zero when the product
    is zero): the first-order expansion at z of ||z - (z0 - units * g)||_2, z0 = z detached."""
    u = (units * g).detach()
    norm = torch.linalg.vector_norm(u)
    direction = u / norm.clamp_min(torch.finfo(u.dtype).tiny)
    return norm + ((z - z.detach()) * direction).sum()


def l2_attack(cut: FeatureCut, x: torch.Tensor, y: torch.Tensor, units: Optional[torch.Tensor] = None,
              sign: float = 0.0, steps: int = ATTACK_STEPS, lr: float = ATTACK_LR,
              c: float = ATTACK_C) -> Tuple[torch.Tensor, int]:
    """One batch of the attack; ``units`` (B, C) selects the feature term's units (None: no term, CW-L2). Returns
    the adversarial images (x where no misclassified x' was found) and the steps run.

    The image is x' = (tanh w + 1) / 2, w0 = atanh(2x - 1) after clamping x to [1e-6, 1 - 1e-6] (so pixels at
    exactly 0 or 1 start finite and can move; x' always lies in [0, 1]); Adam (``lr``, ``steps``) on

        cost = sum_b ||x'_b - x_b||^2 + c * sum_b f_b  -/+  ||u * g||_2

    with f = max(Z_y - max_{i != y} Z_i, 0) on the logits Z (:func:`margin`), g = d(-sum f)/dz at the cut feature
    z (detached) and u = 1 - r (NRF: -, NRF2: +) or r (RF: -, RF2: +), r the robust units; the norm is over the
    whole batch (as the official code). The feature term's value is ||u * g||_2 and its gradient in z is
    u * g / ||u * g||_2 (:func:`feature_term`): descending the cost with "-" moves z along u * g, against the
    margin, on those units only. Each image keeps its misclassified x' of smallest L2; the loop stops early when
    the cost rose since the previous check (every steps // 3 steps).
    """
    w = to_tanh_space(x).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    best, best_l2 = x.clone(), torch.full((len(x),), float('inf'), device=x.device)
    mask = None if units is None else units[:, :, None, None].to(x.dtype)
    check_every, previous, step = max(steps // 3, 1), float('inf'), 0
    for step in range(steps):
        adv = from_tanh_space(w)
        l2 = (adv - x).flatten(1).square().sum(1)
        z = cut.head(adv)
        logits = cut.tail(z, x)
        f = margin(logits, y)
        cost = l2.sum() + c * f.sum()
        if mask is not None:
            g = torch.autograd.grad(-f.sum(), z, retain_graph=True)[0]
            cost = cost + sign * feature_term(z, g, mask)
        opt.zero_grad(set_to_none=True)
        cost.backward()
        opt.step()
        with torch.no_grad():
            better = (logits.argmax(1) != y) & (l2 < best_l2)
            best_l2 = torch.where(better, l2, best_l2)
            best[better] = adv[better]
        if step % check_every == 0:
            if cost.item() > previous:
                break
            previous = cost.item()
    return best.detach(), step + 1


def _check_attacks(attacks: Sequence[str], steps: int, lr: float, c: float) -> None:
    bad = [a for a in attacks if a not in _TERMS]
    if bad or not attacks:
        raise AnalysisError(f'unknown IB attack(s) {bad or list(attacks)!r}; choose from {", ".join(IB_ATTACKS)}.')
    check_count(attack_steps=steps)
    check_positive(lr=lr, c=c)


def _attack_batch(cut: FeatureCut, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str],
                  stats: Dict[str, Dict[str, Any]], params: Dict[str, Any], split_args: Tuple[int, float, float],
                  generator: torch.Generator, deadline: Deadline) -> Optional[float]:
    """The attacks on one batch, tallied into ``stats``; the split and each attack are deadline units. Returns the
    batch's robust-unit fraction (%) if it was split."""
    split = None
    with deadline.unit():
        with torch.no_grad():
            correct = cut.model(x).argmax(1) == y
        if any(_TERMS[a][0] for a in attacks):
            split = ib_split_batch(cut, x, y, *split_args, generator=generator)
    for a in attacks:
        if not deadline.allows_next():
            break
        part, sign = _TERMS[a]
        units = None if part is None else (split.robust if part == 'robust' else ~split.robust)
        with deadline.unit():
            adv, ran = l2_attack(cut, x, y, units, sign, **params)
        with torch.no_grad():
            fooled = cut.model(adv).argmax(1) != y
        success = fooled & correct
        s = stats[a]
        s['n'] += len(y)
        s['n_correct'] += int(correct.sum())
        s['n_success'] += int(success.sum())
        s['n_robust'] += int((~fooled).sum())
        s['l2'] += (adv - x).flatten(1).norm(dim=1)[success].tolist()
        s['steps_run'].append(ran)
    return None if split is None else 100.0 * float(split.robust.float().mean())


def _summary(s: Dict[str, Any]) -> Dict[str, Any]:
    l2 = torch.tensor(s['l2'], dtype=torch.float64)
    return {
        'success_rate': round(100.0 * s['n_success'] / s['n_correct'], 2) if s['n_correct'] else None,
        'accuracy': round(100.0 * s['n_robust'] / s['n'], 2) if s['n'] else None,
        'mean_l2': round(float(l2.mean()), 6) if len(l2) else None,
        'median_l2': round(float(l2.median()), 6) if len(l2) else None,
        'n': s['n'], 'n_correct': s['n_correct'], 'n_success': s['n_success'], 'steps_run': s['steps_run'],
    }


def ib_attack(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str] = IB_ATTACKS,
        stage: Optional[str] = None, batch_size: int = 100, steps: int = ATTACK_STEPS, lr: float = ATTACK_LR,
        c: float = ATTACK_C, split_steps: int = IB_STEPS, split_lr: float = IB_LR, beta: float = IB_BETA,
        seed: int = 0, device: Any = 'cpu', deadline: Optional[Deadline] = None, progress: bool = False,
) -> Dict[str, Any]:
    """Each of ``attacks`` on every batch of (x, y) at the cut ``stage`` (see :func:`fsr_hub.analysis.ib.feature_cut`):
    success rate (% of the correctly classified images misclassified after the attack, by the model itself), the
    mean and median L2 distortion of the successes, and the accuracy (%) under attack. The split of a batch and each
    attack on it are deadline units (each attack's ``n`` says how many images it ran on)."""
    check_pixels(x, 'IB attack images')
    if len(y) == 0:
        raise AnalysisError('the IB attacks need at least one image.')
    _check_attacks(attacks, steps, lr, c)
    check_split_args(batch_size, split_steps, split_lr, beta)
    deadline = deadline or Deadline()
    model = prepare(model, device)
    stats = {a: {'n': 0, 'n_correct': 0, 'n_success': 0, 'n_robust': 0, 'l2': [], 'steps_run': []} for a in attacks}
    params = {'steps': steps, 'lr': lr, 'c': c}
    fractions: List[float] = []
    with strict_float32() as precision, frozen(model):
        cut, why = feature_cut(model, x[:batch_size].to(device), stage)
        generator = torch.Generator(device=device).manual_seed(seed)
        for i in tqdm(range(0, len(y), batch_size), desc='IB attacks', unit='batch', disable=not progress,
                      leave=False):
            if not deadline.allows_next():
                break
            frac = _attack_batch(cut, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device), attacks,
                                 stats, params, (split_steps, split_lr, beta), generator, deadline)
            if frac is not None:
                fractions.append(round(frac, 4))
    results = {a: _summary(s) for a, s in stats.items()}
    header = ['', 'success rate (%)', 'mean L2', 'median L2', 'accuracy under attack (%)']
    rows = [[IB_ATTACK_LABELS[a], r['success_rate'], r['mean_l2'], r['median_l2'], r['accuracy']]
            for a, r in results.items()]
    return {
        'attacks': list(attacks), 'labels': {a: IB_ATTACK_LABELS[a] for a in attacks}, 'norm': 'L2',
        'threat_model': 'L2 minimum-distortion attacks (CW-style, unbounded): not comparable with the L-inf '
                        'accuracy table',
        'n': min(s['n'] for s in stats.values()), 'batch_size': batch_size,
        'batches': batches(max(s['n'] for s in stats.values()), batch_size), 'stage': cut.stage, 'stage_choice': why,
        'fsr_at_cut': cut.fsr is not None, 'seed': seed,
        'attack': {**params, 'optimizer': 'Adam', 'space': 'tanh', 'pixel_clamp': PIXEL_CLAMP,
                   'margin': 'max(Z_y - max_{i != y} Z_i, 0)', 'check_every': max(steps // 3, 1),
                   'early_stop': 'the cost rose since the previous check',
                   'feature_term': '||u * g||_2 over the batch, g = d(-sum f)/dz detached; u = 1 - r (NRF, NRF2) or '
                                   'r (RF, RF2); sign - (NRF, RF) or + (NRF2, RF2)',
                   'success': 'misclassified by the model, among the images it classified correctly',
                   'distortion': 'L2 norm of x\' - x over the successes (pixels in [0, 1], not quantised)'},
        'split': {**split_params(split_steps, split_lr, beta), 'images': 'the clean batch with its labels, one split '
                  'per batch shared by NRF, NRF2, RF, RF2'},
        'robust_fraction_per_batch': fractions, 'results': results, 'precision': precision,
        'table': {'header': header, 'rows': rows},
    }
