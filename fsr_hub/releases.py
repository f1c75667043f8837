"""Released and planned weights, and the names they go by: the one home of ``arch.tag`` names and hub repo ids.

A name is registered with timm as a pretrained tag only once its weights are released: its release folder
``model_cards/<arch>.<tag>/`` exists and the sha256 of its ``model.safetensors`` is pinned in :data:`RELEASED`.
:data:`PLANNED` lists the releases the project intends (the GPU queue), so that tools can tell a planned,
not yet released name from a typo.
"""
from typing import Dict, Optional, Tuple

__all__ = ['DEFAULT_ORG', 'RELEASED', 'PLANNED', 'release_name', 'split_name', 'hub_id']

#: Hugging Face organisation of the released weights (override per call, never through the environment)
DEFAULT_ORG = 'fsr-hub'

#: ``arch.tag`` -> sha256 of the released ``model.safetensors``
RELEASED: Dict[str, str] = {}

#: releases the project plans; not registered with timm until they appear in :data:`RELEASED`
PLANNED: Tuple[str, ...] = (
    'fsr_resnet18.at_cifar10', 'cifar_resnet18.at_cifar10', 'fsr_vgg16.at_cifar10', 'cifar_vgg16.at_cifar10',
    'fsr_wrn34_10.at_cifar10', 'cifar_wrn34_10.at_cifar10',
)


def release_name(architecture: str, tag: str) -> str:
    """``('fsr_resnet18', 'at_cifar10')`` -> ``'fsr_resnet18.at_cifar10'``."""
    return f'{architecture}.{tag}'


def split_name(name: str) -> Tuple[str, Optional[str]]:
    """``'fsr_resnet18.at_cifar10'`` -> ``('fsr_resnet18', 'at_cifar10')``; no tag -> ``(name, None)``."""
    arch, sep, tag = name.partition('.')
    return arch, (tag if sep else None)


def hub_id(name: str, org: Optional[str] = None) -> str:
    """Hub repo id of a release: ``<org>/<arch>.<tag>`` (org: :data:`DEFAULT_ORG`)."""
    return f'{org or DEFAULT_ORG}/{name}'
