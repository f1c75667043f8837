"""Catastrophic-overfitting guard (Wong et al. 2020, Sec. 5): the PGD accuracy of a fixed held-out batch after every
epoch; when it falls ``drop`` points or more below the best seen so far, the run stops and keeps its best
checkpoint. Single-step training (FGSM-RS, or FGSM with a large step) can lose its robustness within one epoch:
PGD accuracy falls to ~0 while FGSM accuracy rises.

The check is cheap (PGD-5 on one batch) and leaves every random generator alone (no random start; the model in
eval mode, deterministic FSR mask), so exact resume holds.
"""
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .attacks import pgd
from .step import autocast

__all__ = ['GUARD_STEPS', 'GUARD_DROP', 'GUARD_BATCH', 'OverfitGuard', 'guard_accuracy', 'check_guard']

GUARD_STEPS = 5
GUARD_DROP = 20.0  # points of accuracy
GUARD_BATCH = 256  # held-out images attacked


@torch.no_grad()
def guard_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = GUARD_STEPS,
                   amp: bool = False) -> float:
    """PGD-``steps`` (step eps/4, no random start) accuracy of ``model`` in eval mode on one batch, in percent;
    the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with autocast(x.device, amp):
            correct = (model(pgd(model, x, y, eps, eps / 4, steps)).argmax(1) == y).sum().item()
    finally:
        model.train(was_training)
    return round(100.0 * correct / y.numel(), 2)


@dataclass
class OverfitGuard:
    """Tracks the guard accuracy over epochs; :meth:`update` says when the run must stop."""
    drop: float = GUARD_DROP
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    fired: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        if not self.drop > 0:
            raise ValueError(f'guard_drop must be a positive number of points, got {self.drop}.')

    @classmethod
    def from_history(cls, history: List[Dict[str, Any]], drop: float = GUARD_DROP) -> 'OverfitGuard':
        """The guard as it stood after ``history`` (a resumed run: its epochs' ``guard_pgd_acc``)."""
        guard = cls(drop=drop)
        for h in history:
            if h.get('guard_pgd_acc') is not None:
                guard.update(h['epoch'], h['guard_pgd_acc'])
        return guard

    def update(self, epoch: int, accuracy: float) -> bool:
        """Record the 1-based ``epoch``'s accuracy; True when it lies ``drop`` points or more below the best."""
        if self.best is None or accuracy > self.best:
            self.best, self.best_epoch = accuracy, epoch
            return False
        if self.best - accuracy >= self.drop:
            self.fired = {'epoch': epoch, 'accuracy': accuracy, 'best': self.best, 'best_epoch': self.best_epoch}
            return True
        return False

    def record(self, batch: int, steps: int) -> Dict[str, Any]:
        """What train_summary.json says about the guard."""
        return {'rule': f'PGD-{steps} (step eps/4, no random start) accuracy of the first {batch} held-out images '
                        f'after every epoch; the run stops when it falls {self.drop:g} points or more below its best',
                'best': self.best, 'best_epoch': self.best_epoch, 'stopped': self.fired}


def check_guard(run: Any, metrics: Dict[str, Any]) -> bool:
    """The guard after an epoch of the engine's run (its model, held-out loader, config, history): records
    ``guard_pgd_acc`` in ``metrics``; True, with a line on stderr, when the run must stop."""
    if run.guard is None:  # first epoch of this process: rebuilt from a resumed history
        run.guard = OverfitGuard.from_history(run.history, run.cfg.guard_drop)
    x, y = next(iter(run.hold_loader))
    x, y = x[:GUARD_BATCH], y[:GUARD_BATCH]
    accuracy = guard_accuracy(run.model, x, y, run.cfg.eps, GUARD_STEPS, amp=run.cfg.eval_amp)
    if run.world > 1:  # one decision for every rank: the mean over their shards
        t = torch.tensor([accuracy], dtype=torch.float64, device=run.device)
        dist.all_reduce(t)
        accuracy = round(t.item() / run.world, 2)
    metrics['guard_pgd_acc'] = accuracy
    if not run.guard.update(metrics['epoch'], accuracy):
        return False
    if run.is_main:
        kept = (f'best.safetensors (epoch {run.best["epoch"]}) is kept' if run.best['epoch'] > 0
                else 'no best checkpoint exists yet')
        print(f'catastrophic overfitting: guard PGD-{GUARD_STEPS} accuracy {accuracy:.1f} after epoch '
              f'{metrics["epoch"]}, {run.guard.best - accuracy:.1f} points below its best ({run.guard.best:.1f}, '
              f'epoch {run.guard.best_epoch}); stopping, {kept}', file=sys.stderr, flush=True)
    return True
