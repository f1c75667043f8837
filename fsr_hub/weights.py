"""Checked safetensors weights: save (fp16 option), sha256, strict load with clear errors, and resolution of
a model's pretrained cfg to a file (local ``file`` or ``hf_hub_id`` through huggingface_hub's cache)."""
import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import timm
import torch
import torch.nn as nn
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    'WeightsError', 'WEIGHTS_NAME', 'sha256_file', 'save_weights', 'read_weights', 'load_weights',
    'resolve_pretrained_file', 'load_pretrained', 'registry_sha256',
]

WEIGHTS_NAME = 'model.safetensors'
PathLike = Union[str, os.PathLike]


class WeightsError(RuntimeError):
    """A weight file is missing, corrupt, tampered with, or does not fit the model."""


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def save_weights(
        model_or_state: Union[nn.Module, Mapping[str, torch.Tensor]],
        path: PathLike,
        dtype: Optional[torch.dtype] = None,
        metadata: Optional[Dict[str, str]] = None,
) -> str:
    """Write a state dict as safetensors (floating tensors cast to ``dtype`` if given); returns its sha256.

    The file is written next to its destination and renamed into place, so a crash never leaves a partial file.
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    save_file(out, str(tmp), metadata={'format': 'pt', **(metadata or {})})
    os.replace(tmp, path)
    return sha256_file(path)


def read_weights(path: PathLike, expected_sha256: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a safetensors file after checking it exists and, if given, its sha256."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'Weight file not found: {path}')
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise WeightsError(
                f'sha256 mismatch for {path}: expected {expected_sha256}, got {actual}. The file is truncated, '
                f'tampered with, or not the released one; delete it to re-download.')
    try:
        return load_file(str(path), device='cpu')
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f'{path} is not a readable safetensors file ({e}).') from e


def load_weights(
        model: nn.Module,
        path: PathLike,
        expected_sha256: Optional[str] = None,
        drop_keys_with_prefix: tuple = (),
) -> None:
    """Strictly load a safetensors file into ``model``; every mismatch is reported naming the file.

    ``drop_keys_with_prefix`` removes classifier weights (their modules keep a fresh init) when a model is
    built with another ``num_classes`` than the weights were trained for.
    """
    state = read_weights(path, expected_sha256)
    expected = model.state_dict()
    if drop_keys_with_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(drop_keys_with_prefix)}
        expected = {k: v for k, v in expected.items() if not k.startswith(drop_keys_with_prefix)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    arch = type(model).__name__
    if missing or unexpected:
        raise WeightsError(
            f'{path} does not fit {arch}: {len(missing)} missing keys {missing[:5]}, '
            f'{len(unexpected)} unexpected keys {unexpected[:5]} (wrong architecture or FSR positions?).')
    wrong = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}'
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise WeightsError(f'{path} does not fit {arch}: shape mismatch in {len(wrong)} tensors, e.g. {wrong[:3]}.')
    model.load_state_dict(state, strict=not drop_keys_with_prefix)


def resolve_pretrained_file(cfg: Mapping[str, Any], cache_dir: Optional[PathLike] = None) -> Path:
    """Local path of the weight file a pretrained cfg names (``file``, else ``hf_hub_id`` via the HF cache)."""
    name = cfg.get('architecture', 'model')
    if cfg.get('tag'):
        name = f"{name}.{cfg['tag']}"
    if cfg.get('file'):
        path = Path(cfg['file'])
        return path / WEIGHTS_NAME if path.is_dir() else path
    hub = cfg.get('hf_hub_id')
    if not hub:
        raise WeightsError(f'No pretrained weights exist for {name}; use pretrained=False.')
    if not cfg.get('sha256') and cfg.get('source') != 'hf-hub':
        raise WeightsError(
            f'No weights have been released for {name} yet (no sha256 pinned). Build it with pretrained=False, or '
            f'load your own file with pretrained_cfg_overlay=dict(file=...).')
    repo, _, revision = hub.partition('@')
    filename = cfg.get('hf_hub_filename') or WEIGHTS_NAME
    try:
        return Path(hf_hub_download(repo, filename, revision=revision or None, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError, OSError) as e:
        raise WeightsError(
            f'Could not get {filename} of {name} from the Hugging Face Hub repo {hub}: {type(e).__name__}: {e}') from e


def _registry_cfg(architecture: Optional[str], tag: Optional[str]) -> Any:
    if not architecture or not tag:
        return None
    try:
        return timm.models.get_pretrained_cfg(f'{architecture}.{tag}')
    except (RuntimeError, KeyError, ValueError):
        return None


def registry_sha256(architecture: str, tag: str) -> Optional[str]:
    """The sha256 pinned in the timm registry for ``arch.tag`` (None: unregistered or not released yet)."""
    return getattr(_registry_cfg(architecture, tag), 'sha256', None)


def _expected_sha256(cfg: Mapping[str, Any]) -> Optional[str]:
    # Weights fetched from the registry's own hub repo are held to the registry pin, whatever the repo's
    # config.json says: replacing both files on the hub must not pass.
    reg = _registry_cfg(cfg.get('architecture'), cfg.get('tag'))
    pin = getattr(reg, 'sha256', None)
    if pin and not cfg.get('file') and cfg.get('hf_hub_id') == getattr(reg, 'hf_hub_id', None):
        if cfg.get('sha256') and cfg['sha256'] != pin:
            raise WeightsError(
                f"{cfg['hf_hub_id']}: config.json pins sha256 {cfg['sha256']} but fsr_hub's registry pins {pin}.")
        return pin
    return cfg.get('sha256')


def load_pretrained(
        model: nn.Module, cfg: Optional[Mapping[str, Any]] = None, cache_dir: Optional[PathLike] = None) -> None:
    """Resolve, check (sha256) and strictly load the weights named by ``model.pretrained_cfg``."""
    cfg = cfg if cfg is not None else model.pretrained_cfg
    path = resolve_pretrained_file(cfg, cache_dir)
    drop: tuple = ()
    if cfg.get('num_classes') is not None and cfg['num_classes'] != model.num_classes:
        drop = tuple(f'{c}.' for c in model.classifier_names())
    load_weights(model, path, _expected_sha256(cfg), drop_keys_with_prefix=drop)
