"""Shared skeleton of the CIFAR-style FSR networks: a stem, named stages, FSR modules after chosen
stages, a pooled classifier head, and timm's model interface on top.

Each architecture file builds its stem and stages and declares which stage names FSR may follow;
everything FSR-related (insertion, auxiliary outputs, classifier reset) lives here once.
"""
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Type, Union

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import PretrainedCfg, build_model_with_cfg

from ..fsr import FSR, FSRAux

__all__ = [
    'FSRNet', 'FSROutput', 'FSRPretrainedCfg', 'HF_ORG', 'CIFAR10_CLASSES', 'cifar_cfg', 'hub_id', 'build_fsr_model',
]

#: Hugging Face organisation the released weights live under; override with the FSR_HUB_ORG environment
#: variable (read at import) or per call with ``pretrained_cfg_overlay=dict(hf_hub_id='org/name')``.
HF_ORG = os.environ.get('FSR_HUB_ORG', 'fsr-hub')

CIFAR10_CLASSES = (
    'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck',
)


@dataclass
class FSRPretrainedCfg(PretrainedCfg):
    """timm's PretrainedCfg plus the sha256 of the released weight file, checked on every load."""
    sha256: Optional[str] = None


def hub_id(name: str) -> str:
    """Hub repo id of a released ``arch.tag``: ``<HF_ORG>/<arch>.<tag>``."""
    return f'{HF_ORG}/{name}'


def cifar_cfg(**kwargs: Any) -> FSRPretrainedCfg:
    """Pretrained cfg of a 32x32 model fed raw [0, 1] pixels (no normalisation: mean 0, std 1)."""
    base = dict(
        input_size=(3, 32, 32), interpolation='bilinear', crop_pct=1.0,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=10, label_names=CIFAR10_CLASSES,
        first_conv='stem.0', license='mit', paper_name='Feature Separation and Recalibration for Adversarial Robustness',
        paper_ids='arXiv:2303.13846', origin_url='https://github.com/wkim97/FSR',
    )
    base.update(kwargs)
    return FSRPretrainedCfg(**base)


@dataclass
class FSROutput:
    """Output of :meth:`FSRNet.forward_train`: final logits and the auxiliary outputs per FSR position."""
    logits: torch.Tensor
    aux: Dict[str, FSRAux]


class FSRNet(nn.Module):
    """Base of every fsr_hub network; subclasses set ``stem``, the stage modules and ``stage_channels``.

    Args (shared by all architectures):
        num_classes: classifier outputs (also the auxiliary FSR heads).
        fsr_positions: stage names (or indices into ``stage_names``) after which an FSR module is inserted;
            empty for the vanilla twin.
        fsr_tau, fsr_hidden, fsr_separation, fsr_recalibration: see :class:`fsr_hub.fsr.FSR`.
        global_pool: pooling before the classifier ('avg' or 'max').
    """

    def _init_head_and_fsr(
            self,
            stage_channels: Dict[str, int],
            num_classes: int,
            fsr_positions: Sequence[Union[str, int]],
            fsr_tau: float,
            fsr_hidden: int,
            fsr_separation: bool,
            fsr_recalibration: bool,
            global_pool: str,
            pre_logits: Optional[nn.Module] = None,
            head_hidden_size: Optional[int] = None,
    ) -> None:
        self.stage_names = tuple(stage_channels)
        self.num_classes = num_classes
        self.num_features = stage_channels[self.stage_names[-1]]
        self.head_hidden_size = head_hidden_size or self.num_features
        self.fsr_positions = self._resolve_positions(fsr_positions)
        self.fsr = nn.ModuleDict({
            name: FSR(stage_channels[name], num_classes, fsr_tau, fsr_hidden, fsr_separation, fsr_recalibration)
            for name in self.fsr_positions
        })
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.pre_logits = pre_logits if pre_logits is not None else nn.Identity()
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def _resolve_positions(self, positions: Sequence[Union[str, int]]) -> tuple:
        if isinstance(positions, (str, int)):
            positions = (positions,)
        names = []
        for p in positions:
            if isinstance(p, int) and not isinstance(p, bool):
                if not -len(self.stage_names) <= p < len(self.stage_names):
                    raise ValueError(f'FSR position index {p} out of range for stages {self.stage_names}.')
                p = self.stage_names[p]
            if p not in self.stage_names:
                raise ValueError(f'Unknown FSR position {p!r}; valid positions are {self.stage_names}.')
            if p in names:
                raise ValueError(f'FSR position {p!r} given twice.')
            names.append(p)
        return tuple(sorted(names, key=self.stage_names.index))

    def _forward_stages(self, x: torch.Tensor, aux: Optional[Dict[str, FSRAux]]) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f'Expected an image batch of shape (B, C, H, W), got shape {tuple(x.shape)}.')
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.fsr:
                x, a = self.fsr[name](x, need_aux=aux is not None)
                if aux is not None:
                    aux[name] = a
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw [0, 1] pixels -> unpooled features (B, num_features, h, w), through every FSR module."""
        return self._forward_stages(x, None)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: torch.Tensor) -> FSROutput:
        """Logits plus, per FSR position, the mask and the auxiliary logits p+, p-, p~- for the FSR losses."""
        aux: Dict[str, FSRAux] = {}
        logits = self.forward_head(self._forward_stages(x, aux))
        return FSROutput(logits=logits, aux=aux)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def classifier_names(self) -> tuple:
        """Module names of every classification head: the main ``fc`` and each FSR auxiliary head."""
        return ('fc',) + tuple(f'fsr.{name}.aux' for name in self.fsr_positions)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the main classifier and every FSR auxiliary head with fresh ones of ``num_classes``."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.fsr.values():
            m.reset_aux(num_classes)


def build_fsr_model(model_cls: Type[FSRNet], variant: str, pretrained: bool = False, **kwargs: Any) -> FSRNet:
    """timm's ``build_model_with_cfg`` plus fsr_hub's checked safetensors loading (see :mod:`fsr_hub.weights`)."""
    from ..weights import load_pretrained  # weights imports this module

    pretrained_cfg = kwargs.pop('pretrained_cfg', None)
    if isinstance(pretrained_cfg, dict):  # e.g. from an hf-hub config.json: keep our sha256 field
        known = {f.name for f in dataclasses.fields(FSRPretrainedCfg)}
        unknown = sorted(set(pretrained_cfg) - known)
        if unknown:
            raise ValueError(f'pretrained_cfg for {variant} has unknown keys {unknown}.')
        pretrained_cfg = FSRPretrainedCfg(**pretrained_cfg)
    cache_dir = kwargs.pop('cache_dir', None)
    model = build_model_with_cfg(model_cls, variant, pretrained=False, pretrained_cfg=pretrained_cfg, **kwargs)
    if pretrained:
        load_pretrained(model, cache_dir=cache_dir)
    return model
