"""CIFAR ResNet-18 (3x3 stem, no max-pool) with Feature Separation and Recalibration.

FSR sits after ``layer4`` by default (paper Sec. 4.1). ``cifar_resnet18`` is the vanilla twin built by
the same code with no FSR position.
"""
from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from .base import FSRNet, Stage, cifar_cfg
from .registry import build_fsr_model, pretrained_cfgs

__all__ = ['CifarResNet', 'BasicBlock']


class BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.downsample = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.downsample(x))


class CifarResNet(FSRNet):
    """ResNet for 32x32 inputs (He et al. 2016, CIFAR variant as in the FSR code); stages ``layer1..layer4``.

    ``layers``: blocks per stage; every other option is :class:`FSRNet`'s.
    """

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), *, in_chans: int = 3, **kwargs: Any):
        kwargs.setdefault('fsr_positions', ('layer4',))
        stem = nn.Sequential(
            nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        stages, in_chs = [], 64
        for i, (depth, chs) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = [BasicBlock(in_chs if d == 0 else chs, chs, stride=(1 if i == 0 or d > 0 else 2))
                      for d in range(depth)]
            stages.append(Stage(f'layer{i + 1}', nn.Sequential(*blocks), chs, reduction=2 ** i))
            in_chs = chs
        super().__init__(stem=stem, stages=stages, in_chans=in_chans, **kwargs)


def _create_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return build_fsr_model(CifarResNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs)


default_cfgs = generate_default_cfgs({
    **pretrained_cfgs('fsr_resnet18', cifar_cfg((4, 4), classifier=('fc', 'fsr.layer4.aux'))),
    **pretrained_cfgs('cifar_resnet18', cifar_cfg((4, 4), classifier='fc')),
})


@register_model
def fsr_resnet18(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-18 (CIFAR) with FSR after layer4."""
    model_args = dict(layers=(2, 2, 2, 2))
    return _create_resnet('fsr_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-18 (CIFAR), vanilla twin of fsr_resnet18 (no FSR)."""
    model_args = dict(layers=(2, 2, 2, 2), fsr_positions=())
    return _create_resnet('cifar_resnet18', pretrained, **dict(model_args, **kwargs))
