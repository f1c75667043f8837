"""Helper models named on a command line as ``MODEL:WEIGHTS``: the source of the transfer attacks (``transfer``,
``ti_fgsm``, ``di_fgsm``) and the naturally trained f_nat of the Grad-CAM figure.

``WEIGHTS`` is a safetensors file, or the name of real weights this package knows without a download:

* ``pyautoattack``: the naturally trained CIFAR-10 ResNet-18 that the ``pyautoattack`` dependency ships as
  ``pyautoattack/examples/model_test.pt`` (the common CIFAR ResNet layout of the original FSR backbone), loaded
  with ``torch.load(weights_only=True)`` and converted to ``cifar_resnet18`` by :mod:`fsr_hub.convert`. It is
  the paper's f_nat in spirit (a natural model of the same backbone) and a transfer source; the paper's own
  source for TI-FGSM / DI-FGSM was a naturally trained ResNet-50 (reports name the source they used).
  Measured: 94.5 % (189 of 200) on the package's CIFAR-10 test sample.
"""
import functools
import importlib.util
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from .convert import convert_official_state_dict, load_official_checkpoint
from .models import create
from .weights import WeightsError, check_fit, load_weights, sha256_file

__all__ = ['PYAUTOATTACK', 'PYAUTOATTACK_SPEC', 'NAMED_WEIGHTS', 'pyautoattack_checkpoint', 'natural_resnet18',
           'load_model', 'load_model_spec', 'describe_source']

PYAUTOATTACK = 'pyautoattack'
#: the spec of pyautoattack's naturally trained ResNet-18 (``--transfer-from`` / ``--natural``)
PYAUTOATTACK_SPEC = f'cifar_resnet18:{PYAUTOATTACK}'
#: named weights -> (the architecture they are, what they are)
NAMED_WEIGHTS: Dict[str, Tuple[str, str]] = {
    PYAUTOATTACK: ('cifar_resnet18', "naturally trained CIFAR-10 ResNet-18 of pyautoattack (examples/model_test.pt)"),
}


def pyautoattack_checkpoint() -> Path:
    """Path of ``pyautoattack/examples/model_test.pt``; WeightsError when the installed package lacks it."""
    spec = importlib.util.find_spec('pyautoattack')
    path = Path(spec.submodule_search_locations[0]) / 'examples' / 'model_test.pt' if spec else None
    if path is None or not path.is_file():
        raise WeightsError('pyautoattack/examples/model_test.pt is not installed (a pyautoattack wheel without its '
                           'examples, e.g. the device job\'s): convert it where it is installed with '
                           'tools/convert_official.py --arch cifar_resnet18 and pass the safetensors file instead.')
    return path


@functools.lru_cache(maxsize=1)
def _pyautoattack_state() -> Tuple[Dict[str, torch.Tensor], str]:
    path = pyautoattack_checkpoint()
    return convert_official_state_dict(load_official_checkpoint(path), 'cifar_resnet18'), sha256_file(path)


def natural_resnet18() -> nn.Module:
    """pyautoattack's naturally trained CIFAR-10 ResNet-18 as an fsr_hub ``cifar_resnet18`` in eval mode (a new
    module each call; the converted tensors are cached)."""
    state, _ = _pyautoattack_state()
    model = create('cifar_resnet18', num_classes=10)
    check_fit(state, model, 'pyautoattack/examples/model_test.pt')
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_model(name: str, weights: Optional[str], num_classes: int = 10,
               model_args: Optional[Mapping[str, Any]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """``name`` built with ``model_args`` and ``weights`` (a safetensors file, loaded strictly; None: random
    initialisation), in eval mode, with its description for reports: architecture, weights, sha256."""
    model = create(name, num_classes=num_classes, **dict(model_args or {}))
    if weights:
        load_weights(model, weights)
    return model.eval(), {'architecture': name, 'weights': weights, 'sha256': sha256_file(weights) if weights else None}


def load_model_spec(spec: str, num_classes: int = 10, what: str = 'model',
                    model_args: Optional[Mapping[str, Any]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """``MODEL:WEIGHTS`` -> (the model in eval mode, its description for reports: architecture, weights, sha256).

    ``WEIGHTS`` is a safetensors file or a name in :data:`NAMED_WEIGHTS`; ``what`` names the option in errors.
    ``model_args`` (e.g. the FSR settings of a timm CNN + FSR, from its train summary) build the model of a file.
    """
    name, sep, weights = spec.partition(':')
    if not sep or not name or not weights:
        raise ValueError(f'{what} must be MODEL:WEIGHTS (a safetensors file, or one of {", ".join(NAMED_WEIGHTS)}), '
                         f'got {spec!r}.')
    if weights in NAMED_WEIGHTS:
        arch, description = NAMED_WEIGHTS[weights]
        if name != arch or num_classes != 10 or model_args:
            raise ValueError(f'{what}: the {weights!r} weights are a 10-class {arch}, not a {num_classes}-class '
                             f'{name} (use {arch}:{weights} on CIFAR-10).')
        model = natural_resnet18()
        sha = _pyautoattack_state()[1]
        return model, {'architecture': arch, 'weights': weights, 'sha256': sha, 'description': description}
    return load_model(name, weights, num_classes, model_args)


def describe_source(src: Mapping[str, Any], model_args: Optional[Mapping[str, Any]] = None) -> str:
    """One line naming a model that :func:`load_model_spec` described: architecture, its ``model_args`` when
    given, weights and the start of their sha256 (how reports name an attack's source)."""
    described = f' {json.dumps(dict(model_args), sort_keys=True)}' if model_args else ''
    return f"{src['architecture']}{described} ({src['weights']}, sha256 {src['sha256'][:12]})"
