"""K-FAC factors of conv / linear layers over one forward/backward pass, and MAD's adversarial saliency.

For a layer with input rows ``a`` (conv: the unfolded input patches, one per output location; linear: the input
vector; a 1 appended when the layer has a bias) and output gradients ``g`` of a batch-mean loss, over a batch of
B samples with L rows (locations) per sample:

    A = sum(a a^T) / (B L^2)        G = B L sum(g g^T)

(linear: L = 1, so A = a^T a / B and G = B g^T g). A layer called several times in one forward (an FSR
auxiliary head sees f+, f- and f~-) is treated like a conv whose locations are all of its calls, as K-FAC does
for any shared weight.

Saliency of the parameters of a layer with damage dw (C_out x d, see :meth:`LayerMasks.damage`):
``S_ij = 0.5 * G_ii * dw_ij * (dw_i A)_j``: the K-FAC quadratic term of the loss change with the block-diagonal
Hessian replaced by diag(G) (x) A, per entry. Computed as one (C_out x d) @ (d x d) product per layer.
"""
from typing import Callable, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from .layers import Layer

__all__ = ['input_rows', 'KFACFactors', 'saliency_matrix']

#: samples unfolded at a time when accumulating A (bounds the memory of the unfolded patches)
CHUNK = 16


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The K-FAC input rows of ``module`` for its input ``x``: (B, L, d) with a column of ones for a bias."""
    x = x.detach().float()
    if isinstance(module, nn.Conv2d):
        rows = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride).transpose(1, 2)
    else:
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[:2] + (1,))], dim=2)
    return rows


def _output_rows(g: torch.Tensor) -> torch.Tensor:
    # (B, C, H, W) conv or (B, ..., C) linear output gradient -> (B, L, C)
    g = g.detach().float()
    if g.ndim == 4:
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


class _Accumulator:
    """Running sum of r r^T over the rows r of every call, the locations seen per sample and the batch size."""

    def __init__(self) -> None:
        self.sum: Optional[torch.Tensor] = None
        self.locations = 0
        self.batch = 0

    def add(self, x: torch.Tensor, rows: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Add the rows ``rows(chunk)`` (B', L, d) of ``x``, CHUNK samples at a time (the unfolded patches of a
        whole batch would need L times its input's memory)."""
        if self.batch and x.shape[0] != self.batch:
            raise ValueError(f'K-FAC: calls with batch sizes {self.batch} and {x.shape[0]} in one pass.')
        self.batch = x.shape[0]
        loc = 0
        for chunk in x.split(CHUNK):
            r = rows(chunk)
            loc, dim = r.shape[1], r.shape[2]
            if self.sum is None:
                self.sum = r.new_zeros(dim, dim)
            r = r.reshape(-1, dim)
            self.sum.addmm_(r.t(), r)
        self.locations += loc


class KFACFactors:
    """Hooks that record the K-FAC factors A and G of ``layers`` during the forward/backward passes run inside
    the ``with`` block (normally one). Read them with :meth:`factors` after the backward pass."""

    def __init__(self, layers: Mapping[str, Layer]):
        self.layers = dict(layers)
        self._a = {name: _Accumulator() for name in self.layers}
        self._g = {name: _Accumulator() for name in self.layers}
        self._handles: List[RemovableHandle] = []

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            with torch.no_grad():
                self._a[name].add(inputs[0], lambda x: input_rows(module, x))
            if output.requires_grad:
                # a tensor hook sees the gradient of this output even if a later in-place op (ReLU) changes it
                output.register_hook(lambda g: self._g[name].add(g, _output_rows))
        return hook

    def __enter__(self) -> 'KFACFactors':
        for name, layer in self.layers.items():
            self._handles.append(layer.module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def factors(self, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """(A, G) of layer ``name``; ValueError when the pass did not reach it (no forward call or no gradient)."""
        a, g = self._a[name], self._g[name]
        if a.sum is None or g.sum is None:
            raise ValueError(f'K-FAC: layer {name} got no {"input" if a.sum is None else "gradient"} in the '
                             f'recorded pass (is it used by the loss?).')
        big_a = a.sum / (a.batch * a.locations ** 2)
        big_g = g.sum * (g.batch * g.locations)
        return big_a, big_g


def saliency_matrix(dw: torch.Tensor, a: torch.Tensor, g_diag: torch.Tensor) -> torch.Tensor:
    """S = 0.5 * G_ii * dw_ij * (dw_i A)_j for every row i and column j, vectorised (C_out x d)."""
    return 0.5 * g_diag[:, None] * dw * (dw @ a)
