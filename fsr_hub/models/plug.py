"""FSR on any timm CNN: :func:`add_fsr` inserts the FSR module after chosen feature stages of a timm classifier.

The backbone is kept as it is (same modules, same state-dict keys under ``backbone.``): each FSR module is applied
by a forward hook on its stage, a hook that returns the replacement output ``f~`` (public, documented
``nn.Module.register_forward_hook`` behaviour). So timm-pretrained weights load strictly into the backbone, and the
model has the interface of fsr_hub's own networks: ``forward`` gives logits, ``forward_train`` gives
:class:`~fsr_hub.models.base.FSROutput` with the auxiliary outputs per position.
"""
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..fsr import FSRArgs, FSRAux, Position, resolve_positions
from .base import FSROutput
from .registry import without_weights

__all__ = ['FSRWrapper', 'add_fsr']


def _feature_modules(model: nn.Module) -> List[Dict[str, Any]]:
    arch = type(model).__name__
    info = getattr(model, 'feature_info', None)
    if info is None:
        raise ValueError(f'add_fsr needs a timm classifier that lists its feature stages in feature_info; {arch} '
                         f'has no feature_info.')
    if not isinstance(getattr(model, 'num_classes', None), int):
        raise ValueError(f'add_fsr needs a classifier with num_classes (it sizes the auxiliary heads); {arch} has '
                         f'none (a features_only model? add FSR to the classifier, then use forward_intermediates).')
    if not isinstance(info, (list, tuple)) or not info or not all(
            isinstance(f, dict) and 'module' in f and 'num_chs' in f for f in info):
        raise ValueError(f'feature_info of {arch} must be a non-empty list of dicts with module and num_chs.')
    return list(info)


class FSRWrapper(nn.Module):
    """A timm classifier with FSR modules after chosen feature stages (use :func:`add_fsr` to build one).

    Attributes: ``backbone`` (the timm model, taken over, not copied: its stages now run FSR whichever way it is
    called), ``fsr`` (one :class:`fsr_hub.fsr.FSR` per position; ModuleDict keys are the module names with ``.``
    as ``_``), ``fsr_positions`` (the feature-module names, in forward order), ``fsr_args`` (the
    :func:`fsr_hub.models.create` keyword arguments that rebuild the FSR part).

    Weights: ``model.backbone.load_state_dict(timm_state_dict)`` loads a plain timm checkpoint strictly (or build
    the backbone with ``pretrained=True`` before adding FSR); ``model.state_dict()`` / ``load_state_dict`` cover
    the whole model (``backbone.*`` and ``fsr.*`` keys). Use DDP, not ``nn.DataParallel`` (whose replicas would
    run the hooks of the original).
    """

    def __init__(
            self,
            model: nn.Module,
            positions: Union[Position, Sequence[Position]],
            tau: float = FSRArgs.tau,
            hidden: int = FSRArgs.hidden,
            separation: bool = FSRArgs.separation,
            recalibration: bool = FSRArgs.recalibration,
    ):
        super().__init__()
        arch = type(model).__name__
        info = _feature_modules(model)
        if isinstance(model, FSRWrapper) or getattr(model, 'fsr_positions', ()):
            raise ValueError(f'{arch} already has FSR modules (after {", ".join(model.fsr_positions)}); add FSR to '
                             f'a model without any (e.g. the vanilla twin) or build it with fsr_positions=....')
        fmt = getattr(model, 'output_fmt', 'NCHW')
        if fmt != 'NCHW':
            raise ValueError(f'FSR needs NCHW feature maps; the stages of {arch} give {fmt}.')
        names = [f['module'] for f in info]
        if not isinstance(positions, (str, int)) and not positions:
            raise ValueError(f'add_fsr needs at least one position; feature modules of {arch}: {", ".join(names)}.')
        self.fsr_positions = resolve_positions(positions, names, arch, 'feature module', 'feature_info modules')
        channels = {f['module']: int(f['num_chs']) for f in info}
        stages = {}
        for p in self.fsr_positions:
            try:
                stages[p] = model.get_submodule(p)
            except AttributeError:
                raise ValueError(f'feature_info of {arch} names module {p!r}, which {arch} does not have.') from None

        self.backbone = model
        self._keys = {p: p.replace('.', '_') for p in self.fsr_positions}
        self._channels = {p: channels[p] for p in self.fsr_positions}
        fsr = FSRArgs(tau, hidden, separation, recalibration)
        self.fsr = nn.ModuleDict({self._keys[p]: fsr.build(channels[p], model.num_classes) for p in self.fsr_positions})
        ref = next(model.parameters(), None)
        if ref is not None:
            self.fsr.to(device=ref.device, dtype=ref.dtype)
        self.fsr_args: Dict[str, Any] = dict(fsr_positions=list(self.fsr_positions), **fsr.model_args())
        # per-call state of forward / forward_train, read by the hooks (None outside those calls)
        self._aux: Optional[Dict[str, FSRAux]] = None
        self._ran: Optional[List[str]] = None
        for p, stage in stages.items():
            # a bound method (not a closure) so that deepcopy / pickling rebind the hook to the copy
            stage.register_forward_hook(partial(self._after_stage, p))

    # ------------------------------------------------------------------------------------------------------------
    # FSR insertion

    def _after_stage(self, position: str, module: nn.Module, args: Any, output: Any) -> torch.Tensor:
        c = self._channels[position]
        if not (isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[1] == c):
            got, hint = type(output).__name__, ''
            if isinstance(output, torch.Tensor):
                got = f'shape {tuple(output.shape)}'
                if output.ndim == 4 and output.shape[-1] == c:
                    hint = ' (channels last: an NHWC stage)'
                elif output.ndim == 3 and output.shape[-1] == c:
                    hint = ' (tokens (B, N, C): not a convolutional stage)'
            raise ValueError(f'FSR after {position!r} needs an NCHW feature map (B, {c}, H, W); '
                             f'{type(self.backbone).__name__}.{position} gives {got}{hint}.')
        # the auxiliary outputs are computed whenever autograd records, forward_train or not: a stage inside a
        # checkpointed region is recomputed in backward (outside forward_train), which must run the same ops
        out, aux = self.fsr[self._keys[position]](output, need_aux=self._aux is not None or torch.is_grad_enabled())
        if self._ran is not None:
            if position in self._ran:
                raise RuntimeError(f'{type(self.backbone).__name__}.{position} ran twice in one forward; FSR can '
                                   f'only follow a module that runs once.')
            self._ran.append(position)
        if self._aux is not None:
            self._aux[position] = aux
        return out

    def _run(self, x: torch.Tensor, aux: Optional[Dict[str, FSRAux]]) -> torch.Tensor:
        self._aux, self._ran = aux, []
        try:
            logits = self.backbone(x)
        finally:
            ran, self._aux, self._ran = self._ran, None, None
        if len(ran) != len(self.fsr_positions):
            missing = [p for p in self.fsr_positions if p not in ran]
            why = (' (its grad checkpointing calls the blocks inside these modules directly: disable it)'
                   if getattr(self.backbone, 'grad_checkpointing', False) else '')
            raise RuntimeError(f'FSR positions {missing} did not run in the forward of '
                               f'{type(self.backbone).__name__}{why}.')
        return logits

    # ------------------------------------------------------------------------------------------------------------
    # forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None)

    def forward_train(self, x: torch.Tensor) -> FSROutput:
        """Logits plus, per FSR position, the mask and the auxiliary logits p+, p-, p~- for the FSR losses."""
        aux: Dict[str, FSRAux] = {}
        logits = self._run(x, aux)
        return FSROutput(logits=logits, aux={p: aux[p] for p in self.fsr_positions})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's unpooled features, through every FSR module."""
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    def forward_intermediates(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The backbone's ``forward_intermediates`` (timm's signature); the feature of a stage that FSR follows
        is the FSR output f~, as for fsr_hub's own networks."""
        return self.backbone.forward_intermediates(x, *args, **kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # timm model interface

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    @property
    def feature_info(self) -> List[Dict[str, Any]]:
        """The backbone's feature_info (``module``: names inside the backbone, as ``fsr_positions``)."""
        return list(self.backbone.feature_info)

    @property
    def pretrained_cfg(self) -> Dict[str, Any]:
        """The backbone's pretrained cfg (architecture, input size, mean / std, ...) without its weight source,
        and with this model's ``classifier`` names."""
        cfg = without_weights(getattr(self.backbone, 'pretrained_cfg', None) or {}, remove_null=False)
        cfg['classifier'] = self.classifier_names()
        return cfg

    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()

    def classifier_names(self) -> Tuple[str, ...]:
        """Module names of every classification head: the backbone's, then each FSR auxiliary head."""
        own = getattr(self.backbone, 'classifier_names', None)
        if own is not None:
            heads = tuple(own())
        else:
            head = self.backbone.get_classifier()
            heads = tuple(n for n, m in self.backbone.named_modules() if m is head)[:1]
        return tuple(f'backbone.{n}' for n in heads) + tuple(f'fsr.{self._keys[p]}.aux' for p in self.fsr_positions)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the backbone's classifier and every FSR auxiliary head with fresh ones of ``num_classes``."""
        if global_pool is None:
            self.backbone.reset_classifier(num_classes)
        else:
            self.backbone.reset_classifier(num_classes, global_pool)
        ref = next(self.fsr.parameters())
        for m in self.fsr.values():
            m.reset_aux(num_classes)
        self.fsr.to(device=ref.device, dtype=ref.dtype)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The backbone's grad checkpointing. Where it calls the blocks inside an FSR position's module directly
        (timm's ResNet and EfficientNet do), ``forward`` then raises instead of silently skipping FSR."""
        self.backbone.set_grad_checkpointing(enable)


def add_fsr(
        model: nn.Module,
        positions: Union[Position, Sequence[Position]],
        tau: float = FSRArgs.tau,
        hidden: int = FSRArgs.hidden,
        separation: bool = FSRArgs.separation,
        recalibration: bool = FSRArgs.recalibration,
) -> FSRWrapper:
    """Insert the FSR module (Kim et al., CVPR 2023) after the feature stages ``positions`` of a timm classifier.

    Args:
        model: a timm classification model with ``feature_info`` and NCHW stages (ResNet, ConvNeXt, EfficientNet,
            RegNet, fsr_hub's vanilla twins, ...). It is taken over, not copied.
        positions: ``feature_info[i]['module']`` names (e.g. ``'layer4'``, ``'stages.2'``) or indices into
            ``feature_info``; several at once (Eq. 5 averages their FSR losses, as :func:`fsr_hub.fsr_aux_loss`).
        tau, hidden, separation, recalibration: the settings of the FSR modules (:class:`fsr_hub.fsr.FSRArgs`);
            the auxiliary heads get the stage's ``num_chs`` inputs and ``model.num_classes`` outputs.

    Returns an :class:`FSRWrapper`: ``forward`` gives logits, ``forward_train`` gives ``FSROutput(logits, aux)``
    with ``aux`` keyed by position, and the eval-mode FSR mask is deterministic.

    Pretrained backbones load strictly, before or after::

        model = add_fsr(timm.create_model('resnet50', pretrained=True, num_classes=10), ['layer3', 'layer4'])
        model.backbone.load_state_dict(timm_state_dict)   # strict: the backbone's keys are unchanged
    """
    return FSRWrapper(model, positions, tau=tau, hidden=hidden, separation=separation, recalibration=recalibration)
