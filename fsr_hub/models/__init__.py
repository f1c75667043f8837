"""Model registry: importing this package registers every fsr_hub architecture with timm, each released weight
file as a pretrained tag of its architecture, and each release under its RobustBench name."""
from typing import Any

import timm
import torch.nn as nn

from ..releases import RELEASED
from .base import CIFAR10_CLASSES, FSRNet, FSROutput, FSRPretrainedCfg, Stage
from .plug import FSRWrapper, add_fsr
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


#: ``create`` keyword arguments that add FSR to a timm model (fsr_hub's own architectures take them as constructor
#: arguments); each maps to an :func:`add_fsr` argument
FSR_ARGS = {'fsr_positions': 'positions', 'fsr_tau': 'tau', 'fsr_hidden': 'hidden',
            'fsr_separation': 'separation', 'fsr_recalibration': 'recalibration'}


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name: the one place the package's tools do (training, verification, cost, release).

    ``timm.create_model(name, **kwargs)`` with a one-line ValueError for a name timm does not know. For a timm
    model that is not one of fsr_hub's own (e.g. ``resnet50``, ``convnext_atto``), non-empty ``fsr_positions``
    adds FSR with :func:`add_fsr` (``fsr_tau``, ``fsr_hidden``, ``fsr_separation``, ``fsr_recalibration`` go with
    it; without positions they are unused); ``pretrained=True`` then loads timm's backbone weights and the FSR
    modules start fresh. fsr_hub's own architectures (and ``hf-hub:`` / ``local-dir:`` names, whose config.json
    decides) get every argument in their constructor.
    """
    arch = name.split('.', 1)[0]
    hub = name.startswith(('hf-hub:', 'local-dir:'))
    if not hub and not timm.models.is_model(arch):
        raise ValueError(f'Unknown model {name!r}; fsr_hub models: {", ".join(ALL_MODELS)} (or any timm model).')
    if hub or arch in ALL_MODELS or arch in ALIASES:
        return timm.create_model(name, **kwargs)
    fsr = {FSR_ARGS[k]: kwargs.pop(k) for k in list(kwargs) if k in FSR_ARGS}
    model = timm.create_model(name, **kwargs)
    if not fsr.get('positions'):
        return model
    return add_fsr(model, **fsr)
