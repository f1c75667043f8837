"""CIFAR VGG16 with batch norm and Feature Separation and Recalibration.

13 conv layers (with bias) + BN + ReLU in five blocks separated by 2x2 max-pools, then a final max-pool
and a 512-512-512-10 MLP classifier. FSR sits after ``block3`` (the 4th conv block, 512 x 4 x 4, before
its max-pool) by default (paper Sec. 4.1). ``cifar_vgg16`` is the vanilla twin.
"""
from typing import Any, Sequence, Union

import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from .base import FSRNet, build_fsr_model, cifar_cfg, hub_id

__all__ = ['CifarVGG']

_VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _conv_block(in_chs: int, widths: Sequence[int]) -> nn.Sequential:
    layers = []
    for w in widths:
        layers += [nn.Conv2d(in_chs, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_chs = w
    return nn.Sequential(*layers)


class CifarVGG(FSRNet):
    """VGG with BN for 32x32 inputs; stages are ``block0, pool0, ..., pool3, block4``."""

    def __init__(
            self,
            blocks: Sequence[Sequence[int]] = _VGG16_BLOCKS,
            num_classes: int = 10,
            in_chans: int = 3,
            fsr_positions: Sequence[Union[str, int]] = ('block3',),
            fsr_tau: float = 0.1,
            fsr_hidden: int = 64,
            fsr_separation: bool = True,
            fsr_recalibration: bool = True,
            global_pool: str = 'max',
            mlp_hidden: int = 512,
    ):
        super().__init__()
        self.stem = nn.Identity()
        stage_channels = {}
        in_chs = in_chans
        for i, widths in enumerate(blocks):
            if i > 0:
                self.add_module(f'pool{i - 1}', nn.MaxPool2d(2, 2))
                stage_channels[f'pool{i - 1}'] = in_chs
            self.add_module(f'block{i}', _conv_block(in_chs, widths))
            in_chs = widths[-1]
            stage_channels[f'block{i}'] = in_chs
        pre_logits = nn.Sequential(
            nn.Linear(in_chs, mlp_hidden), nn.ReLU(inplace=True),
            nn.Linear(mlp_hidden, mlp_hidden), nn.ReLU(inplace=True),
        )
        # global max-pool over the final 2x2 map == the original's last 2x2 max-pool + flatten
        self._init_head_and_fsr(
            stage_channels, num_classes, fsr_positions, fsr_tau, fsr_hidden, fsr_separation, fsr_recalibration,
            global_pool, pre_logits=pre_logits, head_hidden_size=mlp_hidden,
        )
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
    return build_fsr_model(CifarVGG, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({
    'fsr_vgg16.at_cifar10': cifar_cfg(
        hf_hub_id=hub_id('fsr_vgg16.at_cifar10'), first_conv='block0.0', classifier=('fc', 'fsr.block3.aux'),
        sha256=None),
    'cifar_vgg16.at_cifar10': cifar_cfg(
        hf_hub_id=hub_id('cifar_vgg16.at_cifar10'), first_conv='block0.0', classifier='fc', sha256=None),
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
