"""MAD's adversarial saliency of every prunable parameter, averaged over training batches.

Per batch: adversarial examples of the unmasked model; masks reset to 1; ``MASK_STEPS`` Adam steps (lr 0.1, a
fresh optimizer) on the masks only, minimising the adversarial loss with the model in eval mode (BN running
statistics, deterministic FSR masks), each step followed by the clamp of softplus(m) to [1e-4, 1]; one
forward/backward of the same loss on the masked model records the K-FAC factors; the saliency of
:func:`fsr_hub.pruning.kfac.saliency_matrix` follows from the damage the masks learnt.

The loss is the cross-entropy of the adversarial logits, plus, for a model with FSR modules, the FSR losses of
its training (Eq. 5 with lambda_sep = lambda_rec = 1): the FSR auxiliary heads are then reached by the loss and
get factors and saliencies like every other layer.
"""
import sys
import time
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..attacks import pgd
from ..losses import fsr_aux_loss
from ..objectives import forward_train
from .kfac import KFACFactors, saliency_matrix
from .layers import Layer, layer_matrix
from .masks import LayerMasks, attached_masks, mask_modules

__all__ = ['MASK_STEPS', 'MASK_LR', 'AttackConfig', 'adversarial_loss', 'batch_saliency', 'compute_saliency']

MASK_STEPS = 20
MASK_LR = 0.1


@dataclass
class AttackConfig:
    """The L-inf attack that makes the adversarial examples (PGD with a uniform random start; steps=1 and
    alpha=1.25 eps is FGSM-RS)."""
    eps: float
    alpha: float
    steps: int

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pgd(model, x, y, self.eps, self.alpha, self.steps, random_start=True)


def adversarial_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean CE of the logits + the FSR losses of an FSR model, the logits)."""
    out = forward_train(model, x)
    logits = out.logits.float()
    return F.cross_entropy(logits, y) + fsr_aux_loss(out.aux, logits, y), logits


def _optimise_masks(model: nn.Module, masks: Mapping[str, LayerMasks], x: torch.Tensor, y: torch.Tensor,
                    steps: int, lr: float) -> None:
    modules = mask_modules(masks)
    for mk in modules:
        mk.reset()
    optimizer = torch.optim.Adam([mk.m for mk in modules], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        adversarial_loss(model, x, y)[0].backward()
        optimizer.step()
        for mk in modules:
            mk.clamp()


def batch_saliency(
        model: nn.Module, layers: Mapping[str, Layer], masks: Mapping[str, LayerMasks], x_adv: torch.Tensor,
        y: torch.Tensor, steps: int = MASK_STEPS, lr: float = MASK_LR,
) -> Tuple[Dict[str, torch.Tensor], int]:
    """Saliency matrices (C_out x d, bias column last) of one batch of adversarial examples, and how many of
    them the masked model classifies correctly. ``masks`` are attached to ``layers`` and the model is in eval
    mode."""
    _optimise_masks(model, masks, x_adv, y, steps, lr)
    with KFACFactors(layers) as kfac:
        loss, logits = adversarial_loss(model, x_adv, y)
        loss.backward()
    out = {}
    for name in layers:
        a, g = kfac.factors(name)
        dw = layer_matrix(*masks[name].damage()).float()
        out[name] = saliency_matrix(dw, a, g.diagonal())
    return out, int((logits.argmax(1) == y).sum())


def compute_saliency(
        model: nn.Module, layers: Mapping[str, Layer], batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
        attack: AttackConfig, max_batches: Optional[int] = None, progress: bool = True,
        steps: int = MASK_STEPS, lr: float = MASK_LR,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
    """Saliencies averaged over the first ``max_batches`` of ``batches`` (all: None), and what it took: batches,
    images, masked-model adversarial accuracy, seconds. The model is left in eval mode, without masks."""
    model.eval()
    total: Dict[str, torch.Tensor] = {}
    n_batches = n_images = correct = 0
    t0 = time.perf_counter()
    with attached_masks(model, layers) as masks:
        bar = tqdm(batches, total=max_batches, desc='saliency', disable=not progress, leave=False, file=sys.stderr)
        for x, y in bar:
            if max_batches is not None and n_batches >= max_batches:
                break
            for mk in mask_modules(masks):
                mk.reset()  # the attack sees the unmasked model (softplus(M_ONE) is exactly 1)
            x_adv = attack(model, x, y)
            sal, c = batch_saliency(model, layers, masks, x_adv, y, steps, lr)
            for name, s in sal.items():
                total[name] = total[name] + s if name in total else s
            n_batches += 1
            n_images += y.numel()
            correct += c
    if not n_batches:
        raise ValueError('no training batch to compute the saliency on (fewer images than one batch?).')
    averaged = {name: s / n_batches for name, s in total.items()}
    stats = {'batches': n_batches, 'images': n_images,
             'masked_adversarial_accuracy': round(100 * correct / n_images, 2),
             'seconds': round(time.perf_counter() - t0, 3)}
    return averaged, stats
