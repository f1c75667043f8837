"""Measuring one stage: accuracies, the eval-mode and float32 guard, the deadline clock, and the batch-wise
attacks with their batch loop."""
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from tqdm import tqdm

from ..attack_registry import CLEAN, CW, DI_FGSM, FGSM, PGD20, TI_FGSM, TRANSFER
from ..attacks import cw_inf, fgsm, linf_violation, pgd
from ..blackbox import di_fgsm, ti_fgsm

__all__ = ['pct', 'per_class', 'subset_label', 'accuracy_entry', 'assert_eval', 'DeadlineReached', 'Clock',
           'attack_fn', 'run_batched']

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pct(correct: torch.Tensor) -> float:
    """Accuracy (%) of a correctness vector, 2 decimals (0 for an empty one)."""
    return round(100.0 * correct.float().mean().item(), 2) if correct.numel() else 0.0


def per_class(correct: torch.Tensor, y: torch.Tensor, num_classes: int) -> List[Optional[float]]:
    """Accuracy (%) per class; None for a class without images."""
    out: List[Optional[float]] = []
    for c in range(num_classes):
        sel = y == c
        out.append(pct(correct[sel]) if sel.any() else None)
    return out


def subset_label(n: int, total: int) -> str:
    """'all 10000' or 'first 1000': the images an entry was measured on."""
    return f'all {total}' if n == total else f'first {n}'


def accuracy_entry(correct: torch.Tensor, y: torch.Tensor, total: int, num_classes: int) -> Dict[str, Any]:
    """The keys every attack entry starts with: ``accuracy``, ``per_class``, ``n`` and ``subset``."""
    n = len(correct)
    return {'accuracy': pct(correct), 'per_class': per_class(correct, y[:n].cpu(), num_classes), 'n': n,
            'subset': subset_label(n, total)}


def assert_eval(model: nn.Module) -> None:
    """Switch ``model`` to eval mode; RuntimeError if that does not hold, or for reduced precision."""
    model.eval()
    if any(m.training for m in model.modules()):
        raise RuntimeError('model is not fully in eval mode after model.eval().')
    # attacks in reduced precision are weaker and overstate robustness: evaluate in float32 only
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise RuntimeError('evaluate in float32: the model has non-float32 parameters.')
    if any(torch.is_autocast_enabled(t) for t in ('cpu', 'cuda')):
        raise RuntimeError('evaluate without autocast: attacks in reduced precision overstate robustness.')


class DeadlineReached(Exception):
    """A stage ran out of time (message: where)."""


class Clock:
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

    def reason(self, needed: Optional[float] = None, what: Optional[str] = None) -> str:
        """Why something was not run: the time left, and the ``needed`` estimate (for ``what``, if not all of it)."""
        total = f'{self.deadline_s / 60:.2f} min' if self.deadline_s is not None else 'none'
        need = f'about {needed:.0f} s needed{f" for {what}" if what else ""}, ' if needed is not None else ''
        return f'deadline: {need}{max(self.left(), 0.0):.0f} s left of {total}'


def attack_fn(name: str, model: nn.Module, p: Mapping[str, Any], source: Optional[nn.Module]) -> AttackFn:
    """(x, y) -> the inputs batch-wise attack ``name`` (PGD-100 aside) gives ``model``, with parameters ``p``;
    the transfer attacks are crafted on ``source``."""
    if name == CLEAN:
        return lambda xb, yb: xb
    if name == FGSM:
        return lambda xb, yb: fgsm(model, xb, yb, p['eps'])
    if name == PGD20:
        return lambda xb, yb: pgd(model, xb, yb, p['eps'], p['alpha'], p['steps'], p['random_start'])
    if name == CW:
        return lambda xb, yb: cw_inf(model, xb, yb, p['eps'], p['alpha'], p['steps'], p['kappa'])
    if name == TRANSFER:
        return lambda xb, yb: pgd(source, xb, yb, p['eps'], p['alpha'], p['steps'], p['random_start'])
    if name in (TI_FGSM, DI_FGSM):
        attack = ti_fgsm if name == TI_FGSM else di_fgsm
        kwargs = {k: v for k, v in p.items() if k != 'eps'}
        return lambda xb, yb: attack(source, xb, yb, p['eps'], **kwargs)
    raise ValueError(f'{name!r} is not a batch-wise attack.')


def run_batched(
        fn: AttackFn, model: nn.Module, x: torch.Tensor,
        y: torch.Tensor, eps: float, batch_size: int, device: torch.device, desc: str, progress: bool,
        extra: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]] = None,
        clock: Optional[Clock] = None,
) -> Tuple[torch.Tensor, float]:
    """Per-example correctness of ``model`` on fn(x, y) (adversarial inputs), and the worst bound violation.
    Raises :class:`DeadlineReached` before a batch once ``clock`` has no time left (also before the first: the
    masking checks run several sweeps, each through this loop)."""
    correct, worst = [], 0.0
    starts = range(0, len(y), batch_size)
    for k, i in enumerate(tqdm(starts, desc=desc, unit='batch', disable=not progress, leave=False)):
        if clock is not None and clock.left() <= 0:
            raise DeadlineReached(f'reached in {desc} after {k} of {len(starts)} batches')
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        x_adv = fn(xb, yb)
        worst = max(worst, linf_violation(x_adv, xb, eps))
        with torch.no_grad():
            correct.append((model(x_adv).argmax(1) == yb).cpu())
        if extra is not None:
            extra(xb, yb, x_adv)
    return torch.cat(correct), worst
