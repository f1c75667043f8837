"""Model registry: importing this package registers every fsr_hub architecture with timm."""
from typing import Any

import timm
import torch.nn as nn

from .base import FSRNet, FSROutput, FSRPretrainedCfg, HF_ORG, CIFAR10_CLASSES, hub_id
from .resnet import CifarResNet, fsr_resnet18, cifar_resnet18
from .vgg import CifarVGG, fsr_vgg16, cifar_vgg16
from .wideresnet import CifarWideResNet, fsr_wrn34_10, cifar_wrn34_10

FSR_MODELS = ('fsr_resnet18', 'fsr_vgg16', 'fsr_wrn34_10')
VANILLA_TWINS = {'fsr_resnet18': 'cifar_resnet18', 'fsr_vgg16': 'cifar_vgg16', 'fsr_wrn34_10': 'cifar_wrn34_10'}
#: every architecture this package registers: the FSR models, then their vanilla twins
ALL_MODELS = FSR_MODELS + tuple(VANILLA_TWINS.values())


def create(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with a one-line ValueError for a name timm does not know.

    The one place the package's tools build a model by name (training, verification, release, the main job).
    """
    arch = name.split('.', 1)[0]
    if not name.startswith('hf-hub:') and not timm.models.is_model(arch):
        raise ValueError(f'Unknown model {name!r}; fsr_hub models: {", ".join(ALL_MODELS)} (or any timm model).')
    return timm.create_model(name, **kwargs)
