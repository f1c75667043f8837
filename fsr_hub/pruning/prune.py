"""Which parameters MAD removes, removing them, keeping them removed while fine-tuning, and the sparsity
report.

Selection (:func:`select`): the ``int(p * N)`` lowest saliencies over the N parameters of all non-head layers
together (one global pool: convs, and hidden linear layers such as VGG's MLP), and ``int(p * d)`` per class row
of each classification head (d = the row's weights plus its bias). Ties are broken by position (a stable sort),
so the selection is deterministic.
"""
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from .layers import Layer, split_matrix

__all__ = ['select', 'apply_pruning', 'KeepPruned', 'sparsity_report', 'check_saliency']


def check_saliency(saliency: Mapping[str, torch.Tensor], layers: Mapping[str, Layer], where: str) -> None:
    """ValueError (naming ``where``) unless ``saliency`` has one matrix of the right shape per layer."""
    missing = sorted(set(layers) - set(saliency))
    extra = sorted(set(saliency) - set(layers))
    if missing or extra:
        raise ValueError(f'{where} does not fit the model: {len(missing)} layers missing {missing[:3]}, '
                         f'{len(extra)} unknown {extra[:3]}.')
    wrong = [f'{n}: {tuple(saliency[n].shape)} vs {layer.shape}' for n, layer in layers.items()
             if tuple(saliency[n].shape) != layer.shape]
    if wrong:
        raise ValueError(f'{where} does not fit the model: saliency shapes differ, e.g. {wrong[:2]}.')


def select(
        saliency: Mapping[str, torch.Tensor], layers: Mapping[str, Layer], sparsity: float,
) -> Dict[str, torch.Tensor]:
    """Boolean matrices (True: pruned), one per layer, of the shape of its saliency (C_out x d, bias column last)."""
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f'sparsity must be in (0, 1), got {sparsity}.')
    check_saliency(saliency, layers, 'the saliency')
    pooled = [n for n, layer in layers.items() if not layer.per_row]
    out: Dict[str, torch.Tensor] = {}
    if pooled:
        flat = torch.cat([saliency[n].reshape(-1).float().cpu() for n in pooled])
        k = int(sparsity * flat.numel())
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[torch.argsort(flat, stable=True)[:k]] = True
        for n, part in zip(pooled, chosen.split([saliency[n].numel() for n in pooled])):
            out[n] = part.view(saliency[n].shape)
    for n, layer in layers.items():
        if layer.per_row:
            s = saliency[n].float().cpu()
            k = int(sparsity * s.shape[1])
            rows = torch.zeros(s.shape, dtype=torch.bool)
            rows.scatter_(1, torch.argsort(s, dim=1, stable=True)[:, :k], True)
            out[n] = rows
    return {n: out[n] for n in layers}  # module order


def _param_masks(layer: Layer, pruned: torch.Tensor) -> Dict[str, torch.Tensor]:
    # pruned matrix -> {'weight': bool tensor, 'bias': bool tensor} on the parameters' device
    w, b = split_matrix(pruned, layer.module)
    out = {'weight': w.to(layer.module.weight.device)}
    if b is not None:
        out['bias'] = b.to(layer.module.bias.device)
    return out


@torch.no_grad()
def apply_pruning(layers: Mapping[str, Layer], selected: Mapping[str, torch.Tensor]) -> None:
    """Set the selected parameters to exactly zero."""
    for n, layer in layers.items():
        for pname, mask in _param_masks(layer, selected[n]).items():
            getattr(layer.module, pname).masked_fill_(mask, 0.0)


class KeepPruned:
    """Keeps pruned parameters at zero while training: their gradients are zeroed as they are computed (a
    gradient hook), so SGD's weight decay (wd * 0) and momentum (a buffer that only ever gets zeros) leave them
    at exactly zero. :meth:`check` raises if one moved anyway. Remove the hooks with :meth:`remove`."""

    def __init__(self, layers: Mapping[str, Layer], selected: Mapping[str, torch.Tensor]):
        self._masks = [(f'{n}.{pname}', getattr(layer.module, pname), mask)
                       for n, layer in layers.items() for pname, mask in _param_masks(layer, selected[n]).items()]
        self._handles: List[RemovableHandle] = [
            p.register_hook(lambda g, mask=mask: g.masked_fill(mask, 0.0)) for _, p, mask in self._masks]

    @torch.no_grad()
    def check(self) -> None:
        moved = [name for name, p, mask in self._masks if p[mask].any()]
        if moved:
            raise RuntimeError(f'pruned parameters became non-zero in {moved[:3]}: the gradient hooks were bypassed.')

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _count(t: Optional[torch.Tensor]) -> int:
    return int(t.numel()) if t is not None else 0


def sparsity_report(model: nn.Module, layers: Mapping[str, Layer],
                    selected: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, Any]:
    """Zeros per layer (weight and bias) and in all: over the prunable layers and over every parameter."""
    rows = []
    for n, layer in layers.items():
        m = layer.module
        params = _count(m.weight) + _count(m.bias)
        zeros = int((m.weight == 0).sum()) + (int((m.bias == 0).sum()) if m.bias is not None else 0)
        row = {'layer': n, 'kind': layer.kind, 'pool': 'per class row' if layer.per_row else 'global',
               'shape': list(m.weight.shape), 'bias': m.bias is not None, 'params': params, 'zeros': zeros,
               'sparsity': round(zeros / params, 6), 'weight_density': round(float((m.weight != 0).float().mean()), 6)}
        if selected is not None:
            row['pruned'] = int(selected[n].sum())
        rows.append(row)
    prunable = sum(r['params'] for r in rows)
    prunable_zeros = sum(r['zeros'] for r in rows)
    total = sum(p.numel() for p in model.parameters())
    zeros_all = sum(int((p == 0).sum()) for p in model.parameters())
    return {
        'layers': rows,
        'prunable_params': prunable, 'prunable_zeros': prunable_zeros,
        'prunable_sparsity': round(prunable_zeros / prunable, 6),
        'params': total, 'nonzero_params': total - zeros_all, 'sparsity': round(zeros_all / total, 6),
        'rule': 'sparsity = exact zeros / parameters; prunable = every conv / linear weight and bias; '
                'params = every parameter (BatchNorm included, never pruned)',
    }
