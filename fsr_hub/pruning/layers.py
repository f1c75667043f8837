"""The layers MAD prunes and their weights as matrices.

Every ``nn.Conv2d`` and ``nn.Linear`` of a model is prunable, those of FSR modules included (fsr_* models: the
Separation / Recalibration convs and the auxiliary heads count like any other layer). A layer's parameters are
seen as one C_out x d matrix: the weight flattened per output unit (conv: C_in * kh * kw, in ``F.unfold`` order),
with the bias, if any, as one more column.

Classification heads (``model.classifier_names()``, else ``model.get_classifier()``) are pruned per class row;
every other layer joins one global pool.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ['Layer', 'prunable_layers', 'head_names', 'layer_matrix', 'split_matrix']


@dataclass
class Layer:
    """One prunable layer: its module, and whether it is pruned per class row (a classification head)."""
    name: str
    module: nn.Module
    per_row: bool

    @property
    def kind(self) -> str:
        return 'conv' if isinstance(self.module, nn.Conv2d) else 'linear'

    @property
    def shape(self) -> Tuple[int, int]:
        """(rows, columns) of the layer's matrix (bias column included)."""
        w = self.module.weight
        return w.shape[0], w[0].numel() + (self.module.bias is not None)


def head_names(model: nn.Module) -> Tuple[str, ...]:
    """Module names of the classification heads (main classifier, FSR auxiliary heads)."""
    names = getattr(model, 'classifier_names', None)
    if names is not None:
        return tuple(names())
    head = model.get_classifier() if hasattr(model, 'get_classifier') else None
    return tuple(n for n, m in model.named_modules() if head is not None and m is head)


def _check(name: str, module: nn.Module) -> None:
    if type(module) not in (nn.Conv2d, nn.Linear):
        raise ValueError(f'layer {name} is a {type(module).__name__}: MAD handles plain nn.Conv2d / nn.Linear only '
                         f'(their K-FAC factors are computed from the module input).')
    if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != 'zeros'
                                          or isinstance(module.padding, str)):
        raise ValueError(f'conv {name}: grouped convs, padding modes other than zeros and string padding are not '
                         f'supported (groups={module.groups}, padding={module.padding!r}, '
                         f'padding_mode={module.padding_mode!r}).')


def prunable_layers(model: nn.Module) -> Dict[str, Layer]:
    """Every conv / linear layer of ``model`` by module name, in module order; ValueError for one MAD cannot
    handle (a grouped conv, a conv / linear subclass with its own forward)."""
    heads = set(head_names(model))
    layers: Dict[str, Layer] = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _check(name, m)
            layers[name] = Layer(name, m, per_row=name in heads and isinstance(m, nn.Linear))
    if not layers:
        raise ValueError(f'{type(model).__name__} has no conv or linear layer to prune.')
    return layers


def layer_matrix(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``weight`` as a C_out x d matrix, with ``bias`` appended as the last column."""
    mat = weight.reshape(weight.shape[0], -1)
    return torch.cat([mat, bias[:, None]], dim=1) if bias is not None else mat


def split_matrix(mat: torch.Tensor, module: nn.Module) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Inverse of :func:`layer_matrix` for ``module``: (weight-shaped tensor, bias-shaped tensor or None)."""
    w = module.weight
    if module.bias is not None:
        return mat[:, :-1].reshape(w.shape), mat[:, -1].reshape(module.bias.shape)
    return mat.reshape(w.shape), None
