"""CIFAR VGG16 with batch norm and Feature Separation and Recalibration.

13 conv layers (with bias) + BN + ReLU in five blocks separated by 2x2 max-pools, then a final max-pool
and a 512-512-512-10 MLP classifier. FSR sits after ``block3`` (the 4th conv block, 512 x 4 x 4, before
its max-pool) by default (paper Sec. 4.1). ``cifar_vgg16`` is the vanilla twin.
"""
from typing import Any, Sequence

import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from .base import FSRNet, Stage, cifar_cfg
from .registry import build_fsr_model, pretrained_cfgs

__all__ = ['CifarVGG']

_VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _conv_block(in_chs: int, widths: Sequence[int]) -> nn.Sequential:
    layers = []
    for w in widths:
        layers += [nn.Conv2d(in_chs, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_chs = w
    return nn.Sequential(*layers)


class CifarVGG(FSRNet):
    """VGG with BN for 32x32 inputs; stages ``block0, pool0, ..., pool3, block4`` (the blocks are the features).

    ``blocks``: conv widths per block; ``mlp_hidden``: width of the two hidden classifier layers (``pre_logits``);
    every other option is :class:`FSRNet`'s (global max-pool by default: over the final 2x2 map it equals the
    original's last 2x2 max-pool + flatten).
    """

    def __init__(self, blocks: Sequence[Sequence[int]] = _VGG16_BLOCKS, mlp_hidden: int = 512, *,
                 in_chans: int = 3, **kwargs: Any):
        kwargs.setdefault('fsr_positions', ('block3',))
        kwargs.setdefault('global_pool', 'max')
        stages, in_chs = [], in_chans
        for i, widths in enumerate(blocks):
            if i > 0:
                stages.append(Stage(f'pool{i - 1}', nn.MaxPool2d(2, 2), in_chs, reduction=2 ** i, feature=False))
            stages.append(Stage(f'block{i}', _conv_block(in_chs, widths), widths[-1], reduction=2 ** i))
            in_chs = widths[-1]
        pre_logits = nn.Sequential(
            nn.Linear(in_chs, mlp_hidden), nn.ReLU(inplace=True),
            nn.Linear(mlp_hidden, mlp_hidden), nn.ReLU(inplace=True),
        )
        super().__init__(stem=nn.Identity(), stages=stages, in_chans=in_chans, pre_logits=pre_logits,
                         head_hidden_size=mlp_hidden, **kwargs)
        self._init_weights()

    def _init_weights(self) -> None:
        # the VGG reference initialisation, as in the FSR code (FSR convs and auxiliary head included)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


def _create_vgg(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    n_blocks = len(kwargs.get('blocks', _VGG16_BLOCKS))
    return build_fsr_model(CifarVGG, variant, pretrained, feature_cfg=dict(out_indices=tuple(range(n_blocks))),
                           **kwargs)


default_cfgs = generate_default_cfgs({
    **pretrained_cfgs('fsr_vgg16', cifar_cfg((2, 2), first_conv='block0.0', classifier=('fc', 'fsr.block3.aux'))),
    **pretrained_cfgs('cifar_vgg16', cifar_cfg((2, 2), first_conv='block0.0', classifier='fc')),
})


@register_model
def fsr_vgg16(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG16-BN (CIFAR) with FSR after the 4th conv block."""
    return _create_vgg('fsr_vgg16', pretrained, **kwargs)


@register_model
def cifar_vgg16(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG16-BN (CIFAR), vanilla twin of fsr_vgg16 (no FSR)."""
    model_args = dict(fsr_positions=())
    return _create_vgg('cifar_vgg16', pretrained, **dict(model_args, **kwargs))
