"""CIFAR WideResNet-34-10 (pre-activation, widths 16/160/320/640) with Feature Separation and Recalibration.

FSR sits after ``block3`` and the final BN-ReLU (stage ``final_norm``, 640 x 8 x 8) by default (paper
Sec. 4.1). ``cifar_wrn34_10`` is the vanilla twin. The original code's unused ``sub_block1`` is not built.
"""
import math
from typing import Any

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from .base import FSRNet, Stage, cifar_cfg
from .registry import build_fsr_model, pretrained_cfgs

__all__ = ['CifarWideResNet', 'PreActBlock']


class PreActBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = None if in_chs == out_chs else nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.bn1(x))
        y = self.conv2(self.act(self.bn2(self.conv1(o))))
        # the projection shortcut takes the pre-activated input, the identity one the raw input
        return y + (x if self.shortcut is None else self.shortcut(o))


class CifarWideResNet(FSRNet):
    """Pre-activation WideResNet (Zagoruyko & Komodakis 2016) for 32x32 inputs; stages ``block1..block3``
    and ``final_norm`` (the final BN-ReLU).

    ``depth`` (6n + 4) and ``widen_factor`` set the size; every other option is :class:`FSRNet`'s.
    """

    def __init__(self, depth: int = 34, widen_factor: int = 10, *, in_chans: int = 3, **kwargs: Any):
        kwargs.setdefault('fsr_positions', ('final_norm',))
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f'WideResNet depth must be 6n + 4 (n >= 1), got {depth}.')
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False))
        stages = []
        for i in range(3):
            stride = 1 if i == 0 else 2
            blocks = [PreActBlock(widths[i] if d == 0 else widths[i + 1], widths[i + 1], stride if d == 0 else 1)
                      for d in range(n)]
            stages.append(Stage(f'block{i + 1}', nn.Sequential(*blocks), widths[i + 1], reduction=2 ** i))
        final_norm = nn.Sequential(nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True))
        stages.append(Stage('final_norm', final_norm, widths[3], reduction=4))
        super().__init__(stem=stem, stages=stages, in_chans=in_chans, **kwargs)
        self._init_weights()

    def _init_weights(self) -> None:
        # the WRN reference initialisation: He-normal convs (fan-out), unit BN, zero linear bias
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)


def _create_wideresnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    return build_fsr_model(CifarWideResNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)),
                           **kwargs)


default_cfgs = generate_default_cfgs({
    **pretrained_cfgs('fsr_wrn34_10', cifar_cfg((8, 8), classifier=('fc', 'fsr.final_norm.aux'))),
    **pretrained_cfgs('cifar_wrn34_10', cifar_cfg((8, 8), classifier='fc')),
})


@register_model
def fsr_wrn34_10(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """WideResNet-34-10 (CIFAR) with FSR after block3 and the final BN-ReLU."""
    model_args = dict(depth=34, widen_factor=10)
    return _create_wideresnet('fsr_wrn34_10', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_wrn34_10(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """WideResNet-34-10 (CIFAR), vanilla twin of fsr_wrn34_10 (no FSR)."""
    model_args = dict(depth=34, widen_factor=10, fsr_positions=())
    return _create_wideresnet('cifar_wrn34_10', pretrained, **dict(model_args, **kwargs))
