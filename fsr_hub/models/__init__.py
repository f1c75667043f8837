"""Model registry: importing this package registers every fsr_hub architecture with timm, each released weight
file as a pretrained tag of its architecture, and each release under its RobustBench name."""
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Optional

import timm
import torch.nn as nn
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

from ..fsr import FSRArgs
from ..catalog import RELEASED
from ..weights import check_pretrained_file, load_weights
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
FSR_ARGS = {'fsr_positions': 'positions', **{f'fsr_{f.name}': f.name for f in fields(FSRArgs)}}


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name: the one place the package's tools do (training, verification, cost, release).

    ``timm.create_model(name, **kwargs)`` with a one-line ValueError for a name timm does not know. For a timm
    model that is not one of fsr_hub's own (e.g. ``resnet50``, ``convnext_atto``), non-empty ``fsr_positions``
    adds FSR with :func:`add_fsr` (``fsr_tau``, ``fsr_hidden``, ``fsr_separation``, ``fsr_recalibration`` go with
    it; without positions they are unused); ``pretrained=True`` then loads timm's backbone weights and the FSR
    modules start fresh. fsr_hub's own architectures get every argument in their constructor.

    ``hf-hub:<repo>`` / ``local-dir:<folder>`` names go to timm, which builds config.json's architecture with its
    ``model_args``, except an fsr_hub release of another timm architecture (e.g. ``resnet18`` + FSR), which timm
    cannot build (it passes the FSR arguments to the timm constructor, and timm's pretrained cfg has no
    ``sha256``): that one is built here, ``create(architecture, num_classes=..., **model_args, **kwargs)``, and
    ``pretrained=True`` loads its ``model.safetensors`` strictly after checking the sha256 config.json pins.
    """
    arch = name.split('.', 1)[0]
    hub = name.startswith(('hf-hub:', 'local-dir:'))
    if not hub and not timm.models.is_model(arch):
        raise ValueError(f'Unknown model {name!r}; fsr_hub models: {", ".join(ALL_MODELS)} (or any timm model).')
    if hub:
        config = _hub_config(name, kwargs.get('cache_dir'))
        if config is not None and _release_of_timm_arch(config):
            return _create_release(name, config, **kwargs)
        return timm.create_model(name, **kwargs)
    if arch in ALL_MODELS or arch in ALIASES:
        return timm.create_model(name, **kwargs)
    fsr = {FSR_ARGS[k]: kwargs.pop(k) for k in list(kwargs) if k in FSR_ARGS}
    model = timm.create_model(name, **kwargs)
    if not fsr.get('positions'):
        return model
    return add_fsr(model, **fsr)


def _hub_config(name: str, cache_dir: Any = None) -> Optional[Dict[str, Any]]:
    """config.json of an ``hf-hub:`` / ``local-dir:`` name, or None where it cannot be read (timm then reports)."""
    source, _, where = name.partition(':')
    try:
        if source == 'local-dir':
            path = Path(where) / 'config.json'
        else:
            repo, _, revision = where.partition('@')
            path = Path(hf_hub_download(repo, 'config.json', revision=revision or None, cache_dir=cache_dir))
        config = json.loads(path.read_text())
    except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError, OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _release_of_timm_arch(config: Dict[str, Any]) -> bool:
    """Whether config.json is an fsr_hub release (its pretrained_cfg pins the sha256) of a timm architecture."""
    arch, pcfg = config.get('architecture'), config.get('pretrained_cfg')
    return (isinstance(arch, str) and arch not in ALL_MODELS and arch not in ALIASES and isinstance(pcfg, dict)
            and bool(pcfg.get('sha256')))


def _create_release(name: str, config: Dict[str, Any], pretrained: bool = False, cache_dir: Any = None,
                    **kwargs: Any) -> nn.Module:
    """An fsr_hub release of a timm architecture (see :func:`create`)."""
    arch, args = config['architecture'], config.get('model_args') or {}
    if not isinstance(args, dict):
        raise ValueError(f'{name}: config.json model_args must be a JSON object.')
    classes = {'num_classes': config['num_classes']} if 'num_classes' in config else {}
    model = create(arch, **{**classes, **args, **kwargs})
    if pretrained:
        source, _, where = name.partition(':')
        cfg = {**config['pretrained_cfg'], 'architecture': arch}
        if source == 'local-dir':
            cfg['file'] = where
        else:
            cfg.update(hf_hub_id=where, source='hf-hub')
        load_weights(model, check_pretrained_file(cfg, cache_dir))
    return model
