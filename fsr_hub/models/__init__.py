"""Model registry: importing this package registers every fsr_hub architecture with timm, each released weight
file as a pretrained tag of its architecture, and each release under its RobustBench name."""
from typing import Any

import timm
import torch.nn as nn

from ..releases import RELEASED
from .base import CIFAR10_CLASSES, FSRNet, FSROutput, FSRPretrainedCfg, Stage
from .registry import ALIASES, build_fsr_model, register_robustbench_alias
from .resnet import CifarResNet, cifar_resnet18, fsr_resnet18
from .vgg import CifarVGG, cifar_vgg16, fsr_vgg16
from .wideresnet import CifarWideResNet, cifar_wrn34_10, fsr_wrn34_10

FSR_MODELS = ('fsr_resnet18', 'fsr_vgg16', 'fsr_wrn34_10')
VANILLA_TWINS = {'fsr_resnet18': 'cifar_resnet18', 'fsr_vgg16': 'cifar_vgg16', 'fsr_wrn34_10': 'cifar_wrn34_10'}
#: every architecture this package registers: the FSR models, then their vanilla twins
ALL_MODELS = FSR_MODELS + tuple(VANILLA_TWINS.values())

for _name, _sha256 in RELEASED.items():
    register_robustbench_alias(_name, _sha256)


def create(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with a one-line ValueError for a name timm does not know.

    The one place the package's tools build a model by name (training, verification, release, the main job).
    """
    arch = name.split('.', 1)[0]
    if not name.startswith(('hf-hub:', 'local-dir:')) and not timm.models.is_model(arch):
        raise ValueError(f'Unknown model {name!r}; fsr_hub models: {", ".join(ALL_MODELS)} (or any timm model).')
    return timm.create_model(name, **kwargs)
