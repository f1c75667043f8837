"""CIFAR ResNet-18 (3x3 stem, no max-pool) with Feature Separation and Recalibration.

FSR sits after ``layer4`` by default (paper Sec. 4.1). ``cifar_resnet18`` is the vanilla twin built by
the same code with no FSR position.
"""
from typing import Any, Sequence, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from .base import FSRNet, build_fsr_model, cifar_cfg, hub_id

__all__ = ['CifarResNet', 'BasicBlock']


class BasicBlock(nn.Module):
    expansion = 1

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
    """ResNet for 32x32 inputs (He et al. 2016, CIFAR variant as in the FSR code)."""

    def __init__(
            self,
            layers: Sequence[int] = (2, 2, 2, 2),
            num_classes: int = 10,
            in_chans: int = 3,
            fsr_positions: Sequence[Union[str, int]] = ('layer4',),
            fsr_tau: float = 0.1,
            fsr_hidden: int = 64,
            fsr_separation: bool = True,
            fsr_recalibration: bool = True,
            global_pool: str = 'avg',
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        stage_channels = {}
        in_chs = 64
        for i, (depth, chs) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = [BasicBlock(in_chs if d == 0 else chs, chs, stride=(1 if i == 0 or d > 0 else 2)) for d in range(depth)]
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            stage_channels[f'layer{i + 1}'] = chs
            in_chs = chs
        self._init_head_and_fsr(
            stage_channels, num_classes, fsr_positions, fsr_tau, fsr_hidden, fsr_separation, fsr_recalibration,
            global_pool,
        )


def _create_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return build_fsr_model(CifarResNet, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({
    'fsr_resnet18.at_cifar10': cifar_cfg(
        hf_hub_id=hub_id('fsr_resnet18.at_cifar10'), classifier=('fc', 'fsr.layer4.aux'), sha256=None),
    'cifar_resnet18.at_cifar10': cifar_cfg(hf_hub_id=hub_id('cifar_resnet18.at_cifar10'), classifier='fc', sha256=None),
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
