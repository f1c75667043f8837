"""Adversarial fine-tuning of a pruned model with its pruned parameters held at zero, and the before/after
evaluation on the same test images.

The loss is MART's (:func:`fsr_hub.objectives.mart_loss`, beta 0.5 as in MAD), plus the FSR losses for a model
with FSR modules, through the package's training step (:class:`fsr_hub.step.TrainStep`, eager). MAD's schedule:
60 epochs, SGD lr 0.1, momentum 0.9, weight decay 2e-4, lr x0.1 after epochs 30 and 45 (half and three
quarters of the run for another epoch count).
"""
import sys
import time
from fractions import Fraction
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from ..data import DeviceLoader
from ..train_holdout import robust_accuracy
from ..hardware import strict_float32, synchronize
from ..objectives import AdversarialObjective, ObjectiveConfig
from ..schedule import lr_at, lr_milestones
from ..step import TrainStep, build_optimizer
from .layers import Layer
from .prune import KeepPruned

__all__ = ['MAD_MILESTONES', 'mad_milestones', 'finetune', 'evaluate']

#: MAD's lr decays: after epochs 30 and 45 of 60
MAD_MILESTONES = (Fraction(1, 2), Fraction(3, 4))
LR_GAMMA = 0.1


def mad_milestones(epochs: int) -> tuple:
    """(30, 45) for 60 epochs; the same fractions of another count."""
    return lr_milestones(epochs, MAD_MILESTONES)


def finetune(
        model: nn.Module, layers: Mapping[str, Layer], selected: Mapping[str, torch.Tensor], loader: DeviceLoader,
        objective: ObjectiveConfig, epochs: int, lr: float, momentum: float, weight_decay: float,
        milestones: Sequence[int], seed: int = 0, amp: bool = False, progress: bool = True,
) -> List[Dict[str, Any]]:
    """``epochs`` of adversarial fine-tuning; one metrics dict per epoch. Pruned parameters stay exactly zero
    (checked after every epoch)."""
    device = loader.device
    keep = KeepPruned(layers, selected)
    optimizer = build_optimizer(model, lr, momentum, weight_decay, 'eager', device)
    step = TrainStep(AdversarialObjective(model, objective), optimizer, mode='eager', amp=amp)
    history = []
    try:
        for epoch in range(epochs):
            torch.manual_seed(seed * 1_000_003 + epoch)  # an epoch's attack noise depends on (seed, epoch) only
            loader.set_epoch(epoch)
            epoch_lr = lr_at(epoch, lr, milestones, LR_GAMMA)
            step.set_lr(epoch_lr)
            stats = torch.zeros(4, device=device)
            synchronize(device)
            t0 = time.perf_counter()
            for x, y in tqdm(loader, desc=f'fine-tune {epoch + 1}/{epochs}', disable=not progress, leave=False,
                             file=sys.stderr):
                stats += step(x, y)
            synchronize(device)
            keep.check()
            loss_sum, n, adv_c, nat_c = stats.tolist()
            seconds = time.perf_counter() - t0
            history.append({'epoch': epoch + 1, 'lr': epoch_lr,
                            'train_loss': round(loss_sum / n, 5), 'train_adv_acc': round(100 * adv_c / n, 2),
                            'train_nat_acc': round(100 * nat_c / n, 2), 'epoch_seconds': round(seconds, 3)})
            if progress:
                print(history[-1], file=sys.stderr, flush=True)
    finally:
        keep.remove()
    model.eval()
    return history


def evaluate(model: nn.Module, loader: Optional[DeviceLoader], eps: float, steps: int) -> Optional[Dict[str, Any]]:
    """Clean and PGD-``steps`` accuracy (step eps/10, no random start, eval mode, strict float32) on ``loader``;
    None without a loader."""
    if loader is None:
        return None
    t0 = time.perf_counter()
    with strict_float32():
        clean, robust, n = robust_accuracy(model, loader, eps, eps / 10, steps, amp=False)
    n = int(n)
    return {'clean_acc': round(100 * float(clean) / n, 2), f'pgd{steps}_acc': round(100 * float(robust) / n, 2),
            'n': n, 'seconds': round(time.perf_counter() - t0, 3)}
