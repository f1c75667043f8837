"""``--init-from``: the weights a fine-tuning run starts from, resolved, checked and loaded strictly.

A source is one of

* a release folder (``model_cards/<arch>.<tag>/`` with config.json and model.safetensors): its config.json must
  name the run's architecture; the weights are held to the sha256 config.json pins and, for a released name, to
  :data:`fsr_hub.catalog.RELEASED` (the two must agree);
* a released name ``arch.tag``: resolved as ``timm.create_model(name, pretrained=True)`` resolves it
  (:func:`fsr_hub.weights.check_pretrained_file`: the checkout's release folder, else the Hugging Face Hub cache)
  and held to its pin;
* a ``.safetensors`` file: pinned only when it is a released file; when its metadata names an architecture (the
  trainer's files do), that must be the run's.

Every failure is an :class:`InitError` (a ValueError) with a one-line message naming the source.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import timm
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from .catalog import RELEASED, local_release, release_name, release_of, split_name
from .weights import WeightsError, check_pretrained_file, load_weights, sha256_file

__all__ = ['InitError', 'InitSource', 'resolve_init', 'load_init']


class InitError(ValueError):
    """An ``--init-from`` source that cannot be used (one line, naming it)."""


@dataclass(frozen=True)
class InitSource:
    """A resolved and checked ``--init-from`` source."""
    source: str  # as given
    kind: str  # release-folder | release-name | file
    path: Path  # the safetensors file
    sha256: str
    pin: Optional[str]  # the sha256 the file was held to; None: an unpinned file
    release: Optional[str] = None  # arch.tag of a release
    folder: Optional[Path] = None  # the release folder, whose results.json is the start model's verify report

    def record(self) -> Dict[str, Any]:
        """The ``init_from`` entry of ``train_summary.json``."""
        return {'source': self.source, 'kind': self.kind, 'file': str(self.path), 'sha256': self.sha256,
                'pinned': self.pin is not None, 'release': self.release,
                'release_folder': str(self.folder) if self.folder is not None else None}


def _checked(source: str, cfg: Mapping[str, Any]) -> Path:
    """The weight file ``cfg`` names, checked (sha256 against its pin, a readable safetensors file)."""
    try:
        return check_pretrained_file(dict(cfg))
    except WeightsError as e:
        raise InitError(f'--init-from {source}: {e}') from None


def _read_config(source: str, path: Path) -> Dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise InitError(f'--init-from {source}: a release folder needs config.json, and {path} is missing.') from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InitError(f'--init-from {source}: {path} is not valid JSON ({e}).') from None
    if not isinstance(config, dict):
        raise InitError(f'--init-from {source}: {path} must hold a JSON object.')
    return config


def _from_folder(source: str, folder: Path, architecture: str) -> InitSource:
    config = _read_config(source, folder / 'config.json')
    arch = config.get('architecture')
    if arch != architecture:
        raise InitError(f"--init-from {source}: config.json names architecture {arch!r}, not the run's "
                        f"{architecture!r} (--model).")
    pcfg = config.get('pretrained_cfg') if isinstance(config.get('pretrained_cfg'), dict) else {}
    name = release_name(arch, pcfg['tag']) if pcfg.get('tag') else None
    pin, registry_pin = pcfg.get('sha256'), RELEASED.get(name) if name else None
    if pin and registry_pin and pin != registry_pin:
        raise InitError(f"--init-from {source}: config.json pins sha256 {pin} but fsr_hub's registry pins "
                        f"{registry_pin} for {name}.")
    pin = registry_pin or pin
    path = _checked(source, {'file': str(folder), 'sha256': pin})
    return InitSource(source, 'release-folder', path, pin or sha256_file(path), pin, name, folder)


def _from_name(source: str, architecture: str) -> InitSource:
    arch, _ = split_name(source)
    if arch != architecture:
        raise InitError(f"--init-from {source}: weights of a {arch}, not of the run's {architecture} (--model).")
    if source not in RELEASED:
        raise InitError(f'--init-from {source}: not a released name, a release folder or a safetensors file '
                        f'(released: {", ".join(sorted(RELEASED)) or "none yet"}).')
    cfg = timm.models.get_pretrained_cfg(source).to_dict()
    path = _checked(source, {**cfg, 'sha256': RELEASED[source]})
    return InitSource(source, 'release-name', path, RELEASED[source], RELEASED[source], source, local_release(source))


def _from_file(source: str, path: Path, architecture: str) -> InitSource:
    path = _checked(source, {'file': str(path)})
    try:
        with safe_open(str(path), framework='pt') as f:
            declared = (f.metadata() or {}).get('architecture')
    except (SafetensorError, OSError) as e:
        raise InitError(f'--init-from {source}: not a readable safetensors file ({e}).') from None
    if declared and declared != architecture:
        raise InitError(f"--init-from {source}: the file's metadata names architecture {declared!r}, not the run's "
                        f"{architecture!r} (--model).")
    sha = sha256_file(path)
    release = release_of(sha)
    return InitSource(source, 'file', path, sha, sha if release else None, release,
                      local_release(release) if release else None)


def resolve_init(source: str, architecture: str) -> InitSource:
    """Resolve and check ``source`` (see the module docstring) for a model of ``architecture``."""
    path = Path(source)
    if path.is_dir():
        return _from_folder(source, path, architecture)
    if path.is_file() or path.suffix == '.safetensors':
        return _from_file(source, path, architecture)
    if '.' in source and '/' not in source:
        return _from_name(source, architecture)
    raise InitError(f'--init-from {source}: neither a release folder, a safetensors file nor a released name '
                    f'(released: {", ".join(sorted(RELEASED)) or "none yet"}).')


def load_init(model: nn.Module, source: str, architecture: str) -> InitSource:
    """Load the weights of ``source`` into ``model`` (an ``architecture``) strictly; returns what was loaded."""
    init = resolve_init(source, architecture)
    try:
        load_weights(model, init.path)  # strict; the sha256 was checked when resolving
    except WeightsError as e:
        raise InitError(f'--init-from {source}: {e}') from None
    return init
