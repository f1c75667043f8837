"""Released and planned weights, and the names they go by: the one home of ``arch.tag`` names and hub repo ids.

A name is registered with timm as a pretrained tag only once its weights are released: its release folder
``model_cards/<arch>.<tag>/`` exists and the sha256 of its ``model.safetensors`` is pinned in :data:`RELEASED`.
:data:`PLANNED` lists the releases the project intends (the GPU queue), so that tools can tell a planned,
not yet released name from a typo.

Each released name also goes by a RobustBench name (:func:`robustbench_name`), registered with timm as an alias.
"""
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

from .paper import split_tag

__all__ = ['DEFAULT_ORG', 'RELEASED', 'PLANNED', 'DEFAULT_ORDER', 'CHECKOUT_CARDS', 'release_name', 'split_name',
           'hub_id', 'robustbench_name', 'default_release', 'local_release', 'release_of']

#: Hugging Face organisation of the released weights (override per call, never through the environment)
DEFAULT_ORG = 'fsr-hub'

#: ``arch.tag`` -> sha256 of the released ``model.safetensors``
RELEASED: Dict[str, str] = {
    'fsr_resnet18.fgsmrs_cifar10': '7eefb5d1d572af58b0c24d6097a8c73608311c268e668591265932fd9253d3b9',
    'cifar_resnet18.fgsmrs_cifar10': '0dd1c6815b435656bb6278b783f356e4c6638e4d8a08f13e260fbafe175eb30a',
    'fsr_resnet18.fgsmrscyc_cifar10': '5b33f164e0e1db5c996553cbd1a4354d5f571da63da61135aa064ed48ae9c34d',
    'cifar_resnet18.fgsmrscyc_cifar10': '446b986eeefe5d8a4541d85c5802e777d0ef8ba8628628b61d5c2d54f8711eb7',
    'fsr_vgg16.fgsmrscyc_cifar10': '2311081dbf979bc1daad7f299b2c7d207357d5385f0d31fec2d4151708e93da7',
    'cifar_vgg16.fgsmrscyc_cifar10': 'ede9ebc76a6103bb4e8d8d49ac6dad682cbc55282eea8a90563758f537ba559e',
}

#: releases the project plans; not registered with timm until they appear in :data:`RELEASED`
PLANNED: Tuple[str, ...] = (
    'fsr_resnet18.at_cifar10', 'cifar_resnet18.at_cifar10', 'fsr_vgg16.at_cifar10', 'cifar_vgg16.at_cifar10',
    'fsr_wrn34_10.at_cifar10', 'cifar_wrn34_10.at_cifar10',
)


#: the release ``python -m fsr_hub`` evaluates by default: the first of these that is released (the paper's recipe
#: once it is, until then the best CPU-trained one), else the first that is planned
DEFAULT_ORDER: Tuple[str, ...] = ('fsr_resnet18.at_cifar10', 'fsr_resnet18.fgsmrscyc_cifar10',
                                   'fsr_resnet18.fgsmrs_cifar10')

#: ``model_cards/`` of the source checkout this package is imported from; an installed wheel has none
CHECKOUT_CARDS = Path(__file__).resolve().parent.parent / 'model_cards'


def default_release(released: Optional[Mapping[str, str]] = None) -> str:
    """The release to show first: the first name of :data:`DEFAULT_ORDER` in ``released`` (default
    :data:`RELEASED`), else the first that is planned."""
    released = RELEASED if released is None else released
    return next((n for n in DEFAULT_ORDER if n in released), DEFAULT_ORDER[0])


def local_release(name: str) -> Optional[Path]:
    """The release folder of ``name`` in the source checkout (``model_cards/<name>/`` beside the package) when it
    holds the weights, else None (an installed package, or weights moved out): loaders then go to the hub."""
    folder = CHECKOUT_CARDS / name
    return folder if (folder / 'model.safetensors').is_file() else None


def release_of(sha256: Optional[str]) -> Optional[str]:
    """The release whose weights are pinned to ``sha256`` in :data:`RELEASED`, else None."""
    return next((name for name, pin in RELEASED.items() if pin == sha256), None)


def release_name(architecture: str, tag: Optional[str]) -> str:
    """``('fsr_resnet18', 'at_cifar10')`` -> ``'fsr_resnet18.at_cifar10'``; no tag -> the architecture."""
    return f'{architecture}.{tag}' if tag else architecture


def split_name(name: str) -> Tuple[str, Optional[str]]:
    """``'fsr_resnet18.at_cifar10'`` -> ``('fsr_resnet18', 'at_cifar10')``; no tag -> ``(name, None)``."""
    arch, sep, tag = name.partition('.')
    return arch, (tag if sep else None)


def hub_id(name: str, org: Optional[str] = None) -> str:
    """Hub repo id of a release: ``<org>/<arch>.<tag>`` (org: :data:`DEFAULT_ORG`)."""
    return f'{org or DEFAULT_ORG}/{name}'


#: RobustBench-style short names of the architectures (RobustBench writes e.g. RN18, WRN-34-10)
_ROBUSTBENCH_ARCH = {
    'fsr_resnet18': 'rn18', 'fsr_vgg16': 'vgg16', 'fsr_wrn34_10': 'wrn_34_10',
    'cifar_resnet18': 'rn18_nofsr', 'cifar_vgg16': 'vgg16_nofsr', 'cifar_wrn34_10': 'wrn_34_10_nofsr',
}


def robustbench_name(name: str) -> str:
    """RobustBench name of release ``arch.tag``: ``kim2023fsr_<arch>[_<method>]_<dataset>_linf``.

    RobustBench's ``load_model(model_name, dataset, threat_model)`` first asks timm for
    ``f'{model_name}_{dataset}_{threat_model}'.lower()`` (with '-' as '_'), so
    ``load_model('Kim2023FSR_RN18', 'cifar10', 'Linf')`` finds ``fsr_resnet18.at_cifar10`` as
    ``kim2023fsr_rn18_cifar10_linf``. The method is part of the name unless it is the paper's PGD-AT (``at``);
    the vanilla twins carry ``_nofsr``. Every release is L-inf (eps 8/255).
    """
    arch, tag = split_name(name)
    if arch not in _ROBUSTBENCH_ARCH or not tag:
        raise ValueError(f'{name!r} is not a release name <architecture>.<tag> of an fsr_hub architecture.')
    method, dataset = split_tag(tag)
    return '_'.join(['kim2023fsr', _ROBUSTBENCH_ARCH[arch]] + ([] if method == 'at' else [method]) + [dataset, 'linf'])
