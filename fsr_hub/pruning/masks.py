"""Soft masks on a model's conv / linear parameters: effective weight ``w * softplus(m)``.

The masks are attached with ``torch.nn.utils.parametrize`` for the length of a ``with`` block and removed on
exit with the original tensors put back, so the model's class and state dict are never changed for good.
"""
import math
from contextlib import contextmanager
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .layers import Layer

__all__ = ['inverse_softplus', 'M_ONE', 'M_MIN', 'MASK_MIN', 'SoftplusMask', 'LayerMasks', 'attached_masks',
           'mask_modules']


def inverse_softplus(y: float) -> float:
    """m with softplus(m) = y (y > 0)."""
    if not y > 0:
        raise ValueError(f'softplus takes only positive values, got {y}.')
    return math.log(math.expm1(y))


#: the smallest mask value the optimisation may reach: softplus(m) is clamped to [MASK_MIN, 1]
MASK_MIN = 1e-4
#: mask parameter of a mask exactly 1 (softplus(M_ONE) is 1.0 in float32): ln(e - 1) = 0.541325
M_ONE = inverse_softplus(1.0)
#: mask parameter of the smallest mask, the clamp of a mask at 0: ln(e^1e-4 - 1) = -9.21029
M_MIN = inverse_softplus(MASK_MIN)


class SoftplusMask(nn.Module):
    """Parametrization ``w -> w * softplus(m)`` with a mask parameter ``m`` of ``w``'s shape, initialised to 1."""

    def __init__(self, shape: torch.Size, device: torch.device):
        super().__init__()
        self.m = nn.Parameter(torch.full(shape, M_ONE, device=device))

    def scale(self) -> torch.Tensor:
        return F.softplus(self.m)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.scale().to(w.dtype)

    @torch.no_grad()
    def reset(self) -> None:
        self.m.fill_(M_ONE)
        self.m.grad = None

    @torch.no_grad()
    def clamp(self) -> None:
        self.m.clamp_(M_MIN, M_ONE)


class LayerMasks:
    """The masks of one layer's weight and bias (None without bias)."""

    def __init__(self, module: nn.Module, weight: SoftplusMask, bias: Optional[SoftplusMask]):
        self.module = module
        self.weight = weight
        self.bias = bias

    def masks(self) -> List[SoftplusMask]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def original(self, name: str) -> torch.Tensor:
        return self.module.parametrizations[name].original

    def damage(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """dw = w * (1 - softplus(m)): what the masks take away from the weight and the bias."""
        dw = self.original('weight') * (1 - self.weight.scale())
        db = self.original('bias') * (1 - self.bias.scale()) if self.bias is not None else None
        return dw.detach(), (db.detach() if db is not None else None)


def mask_modules(masks: Mapping[str, LayerMasks]) -> List[SoftplusMask]:
    """Every mask of ``masks`` (weights and biases), in layer order."""
    return [mk for lm in masks.values() for mk in lm.masks()]


@contextmanager
def attached_masks(model: nn.Module, layers: Mapping[str, Layer]) -> Iterator[Dict[str, LayerMasks]]:
    """Masks on the weight and bias of every layer of ``model``, all initialised to 1, for the block; the model's
    own parameters are frozen (requires_grad False) meanwhile. On exit the masks go and the original parameters
    (the same Parameter objects) come back with their requires_grad flags."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    attached: Dict[str, LayerMasks] = {}
    try:
        for p in params:
            p.requires_grad_(False)
        for name, layer in layers.items():
            m = layer.module
            masks = {}
            for pname in ('weight', 'bias'):
                p = getattr(m, pname)
                if p is None:
                    continue
                masks[pname] = SoftplusMask(p.shape, p.device)
                parametrize.register_parametrization(m, pname, masks[pname])
            attached[name] = LayerMasks(m, masks['weight'], masks.get('bias'))
        yield attached
    finally:  # every layer, also one whose registration failed half-way
        for layer in layers.values():
            for pname in ('weight', 'bias'):
                if parametrize.is_parametrized(layer.module, pname):
                    parametrize.remove_parametrizations(layer.module, pname, leave_parametrized=False)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
