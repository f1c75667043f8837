"""Held-out evaluation of a training run: PGD accuracy (clean accuracy for natural training) on the slice of the
training set it never trains on, which picks the best checkpoint; :func:`robust_accuracy` is the on-device count.
"""
import time
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from .attacks import pgd
from .data import DeviceLoader
from .hardware import strict_float32, synchronize
from .step import autocast
from .train_run import RunState

__all__ = ['robust_accuracy', 'evaluate_holdout', 'time_holdout_evaluation']


def _batch_counts(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: Optional[int], amp: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    with autocast(x.device, amp):
        clean = (model(x).argmax(1) == y).sum()
        robust = (model(pgd(model, x, y, eps, alpha, steps)).argmax(1) == y).sum() if steps is not None else clean
    return clean, robust


@torch.no_grad()
def robust_accuracy(
        model: nn.Module, loader: DeviceLoader, eps: float, alpha: float, steps: Optional[int], amp: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """On-device (clean correct, PGD-``steps`` correct, n) over ``loader`` (no random start, eval mode);
    ``steps=None``: clean accuracy only (PGD correct is None)."""
    device = loader.device
    model.eval()
    clean = torch.zeros((), device=device)
    robust = torch.zeros((), device=device)
    n = torch.zeros((), device=device)
    for x, y in loader:
        c, r = _batch_counts(model, x, y, eps, alpha, steps, amp)
        clean += c
        robust += r
        n += y.numel()
    return clean, (robust if steps is not None else None), n


def evaluate_holdout(run: RunState, metrics: Dict[str, Any]) -> bool:
    """Evaluation on the held-out slice into ``metrics``: PGD accuracy, or clean accuracy for natural training.
    True on a new best (``run.best`` updated).

    float32 with TF32 off (like tools/verify.py: a bf16 attack is weaker and would flatter the checkpoint it picks)
    unless ``eval_amp`` (the CPU default with bf16 autocast, where it is much cheaper; it only ranks epochs of one
    run, the summary says so, and every released number comes from tools/verify.py in float32)."""
    cfg = run.cfg
    t = time.perf_counter()
    with strict_float32():
        c, r, m = robust_accuracy(run.model, run.hold_loader, cfg.eps, cfg.eps / 10,
                                  None if run.natural else cfg.eval_steps, amp=cfg.eval_amp)
    counts = torch.stack([c, r if r is not None else torch.zeros_like(c), m])
    if run.world > 1:
        dist.all_reduce(counts)
    c, r, m = counts.tolist()
    run.costs['evaluation'] = time.perf_counter() - t
    metrics.update(holdout_clean_acc=round(100 * c / m, 2),
                   holdout_pgd_acc=None if run.natural else round(100 * r / m, 2),
                   holdout_seconds=round(run.costs['evaluation'], 3))
    accuracy = metrics['holdout_clean_acc' if run.natural else 'holdout_pgd_acc']
    if accuracy > run.best['accuracy']:
        run.best = {'accuracy': accuracy, 'epoch': metrics['epoch']}
        return True
    return False


@torch.no_grad()
def time_holdout_evaluation(run: RunState) -> float:
    """Seconds of one held-out evaluation: one batch timed after an untimed one (cuDNN autotuning), scaled."""
    x, y = next(iter(run.hold_loader))
    steps = None if run.natural else run.cfg.eval_steps
    run.model.eval()
    seconds = 0.0
    for _ in range(2):
        synchronize(run.device)
        t = time.perf_counter()
        with strict_float32():
            _batch_counts(run.model, x, y, run.cfg.eps, run.cfg.eps / 10, steps, amp=run.cfg.eval_amp)
        synchronize(run.device)
        seconds = time.perf_counter() - t
    return seconds * len(run.hold_loader)
