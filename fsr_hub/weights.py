"""Checked safetensors weights: deterministic save (fp16 option), sha256, strict load with one-line errors, and the
check in front of every pretrained load: the file a pretrained cfg names is resolved (a local file or folder, or
``hf_hub_id`` through huggingface_hub's cache) and its sha256 checked before timm reads a tensor of it."""
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Union

import timm
import torch
import torch.nn as nn
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .catalog import RELEASED, hub_id, local_release, release_name

__all__ = [
    'WeightsError', 'WEIGHTS_NAME', 'sha256_file', 'save_weights', 'read_weights', 'cast_dtype', 'check_fit',
    'load_weights',
    'resolve_pretrained_file', 'registry_sha256', 'expected_sha256', 'check_pretrained_file',
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

    Equal tensors and metadata give equal bytes: the JSON header is written with sorted keys (safetensors itself
    orders the metadata differently from call to call). The file gets the permissions of any file the user
    creates (umask), and is written next to its destination and renamed into place, so a crash never leaves a
    partial file.
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    data = save(out, metadata={'format': 'pt', **(metadata or {})})
    n = int.from_bytes(data[:8], 'little')
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode()
    header += b' ' * (-len(header) % 8)  # tensor data stays 8-byte aligned, as safetensors lays it out
    parts = (len(header).to_bytes(8, 'little'), header, memoryview(data)[8 + n:])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    digest = hashlib.sha256()
    try:
        with open(tmp, 'wb') as f:
            for part in parts:
                f.write(part)
                digest.update(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: Optional[str]) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected.lower():
        raise WeightsError(
            f'sha256 mismatch for {path}: expected {expected}, got {actual}. The file is truncated, tampered with, '
            f'or not the released one; delete it to re-download.')


def read_weights(path: PathLike, expected_sha256: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a safetensors file after checking it exists and, if given, its sha256."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'Weight file not found: {path}')
    _check_sha256(path, expected_sha256)
    try:
        return load_file(str(path), device='cpu')
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f'{path} is not a readable safetensors file ({e}).') from e


def cast_dtype(path: PathLike, source: PathLike) -> str:
    """The floating dtype ``path`` stores ``source``'s tensors in, exactly cast (e.g. 'float16' for a release saved
    with ``save_weights(..., dtype=torch.float16)`` from a float32 checkpoint); WeightsError unless every tensor of
    ``path`` is the same-named tensor of ``source`` cast to one dtype."""
    state, src = read_weights(path), read_weights(source)
    if set(state) != set(src):
        raise WeightsError(f'{path} and {source} hold different tensors: {path} is not a cast of {source}.')
    dtypes = {str(v.dtype).replace('torch.', '') for v in state.values() if v.is_floating_point()}
    if len(dtypes) != 1:
        raise WeightsError(f'{path} stores its floating tensors in {sorted(dtypes) or "no floating"} dtypes, '
                           f'expected one.')
    bad = next((k for k, v in state.items() if not torch.equal(v, src[k].to(v.dtype))), None)
    if bad is not None:
        raise WeightsError(f'{path}: tensor {bad} is not {source}\'s cast to {state[bad].dtype}.')
    return dtypes.pop()


def check_fit(
        state: Mapping[str, torch.Tensor],
        model: nn.Module,
        path: PathLike,
        skip_prefixes: tuple = (),
        skip_shape: Iterable[str] = (),
) -> None:
    """Raise WeightsError (naming ``path``) unless ``state`` has exactly the model's keys and shapes.

    Keys under ``skip_prefixes`` (re-initialised classifiers) are not compared; tensors in ``skip_shape`` (an
    input conv that timm adapts to another channel count) are compared by name only.
    """
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(skip_prefixes)}
    given = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    arch = type(model).__name__
    if missing or unexpected:
        raise WeightsError(
            f'{path} does not fit {arch}: {len(missing)} missing keys {missing[:5]}, '
            f'{len(unexpected)} unexpected keys {unexpected[:5]} (wrong architecture or FSR positions?).')
    skip_shape = set(skip_shape)
    wrong = [f'{k}: file {tuple(given[k].shape)} vs model {tuple(v.shape)}'
             for k, v in expected.items() if k not in skip_shape and given[k].shape != v.shape]
    if wrong:
        raise WeightsError(f'{path} does not fit {arch}: shape mismatch in {len(wrong)} tensors, e.g. {wrong[:3]}.')


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
    check_fit(state, model, path, skip_prefixes=drop_keys_with_prefix)
    if drop_keys_with_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(drop_keys_with_prefix)}
    model.load_state_dict(state, strict=not drop_keys_with_prefix)


# ----------------------------------------------------------------------------------------------------------------
# pretrained cfgs -> checked files


def _cfg_name(cfg: Mapping[str, Any]) -> str:
    return release_name(cfg.get('architecture') or 'model', cfg.get('tag'))


def resolve_pretrained_file(cfg: Mapping[str, Any], cache_dir: Optional[PathLike] = None) -> Path:
    """Local path of the weight file a pretrained cfg names: ``file`` (a file, or a folder holding
    ``model.safetensors``, as ``local-dir:`` gives), else ``hf_hub_id``: the registry's own repo of a released name
    from its release folder when this package runs from a source checkout that holds it, any other through
    huggingface_hub's cache (``cache_dir`` as timm's own ``cache_dir``)."""
    name = _cfg_name(cfg)
    if cfg.get('url') or cfg.get('state_dict'):
        raise WeightsError(f'{name}: fsr_hub loads weights from a safetensors file or the Hugging Face Hub only, '
                           f'not from a url or an in-memory state_dict.')
    if cfg.get('file'):
        path = Path(cfg['file'])
        return path / WEIGHTS_NAME if path.is_dir() else path
    hub = cfg.get('hf_hub_id')
    if not hub:
        released = timm.list_pretrained(f"{cfg.get('architecture')}.*") if cfg.get('architecture') else []
        raise WeightsError(
            f'{name} has no pretrained weights (released tags: {", ".join(released) or "none yet"}). Build it with '
            f'pretrained=False, or load your own file with pretrained_cfg_overlay=dict(file=..., sha256=...).')
    repo, _, revision = hub.partition('@')
    filename = cfg.get('hf_hub_filename') or WEIGHTS_NAME
    name = repo.partition('/')[2]
    local = local_release(name) if not revision and name in RELEASED and repo == hub_id(name) else None
    if local is not None and filename == WEIGHTS_NAME:
        return local / WEIGHTS_NAME
    try:
        return Path(hf_hub_download(repo, filename, revision=revision or None, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError, OSError) as e:
        raise WeightsError(f'Could not get {filename} of {name} from the Hugging Face Hub repo {hub}: '
                           f'{type(e).__name__}: {e}'.replace('\n', ' ')) from e


def _registry_cfg(architecture: Optional[str], tag: Optional[str]) -> Any:
    if not architecture or not tag:
        return None
    try:
        return timm.models.get_pretrained_cfg(release_name(architecture, tag))
    except (RuntimeError, KeyError, ValueError):
        return None


def registry_sha256(architecture: str, tag: str) -> Optional[str]:
    """The sha256 pinned in the timm registry for ``arch.tag`` (None: not released)."""
    return getattr(_registry_cfg(architecture, tag), 'sha256', None)


def expected_sha256(cfg: Mapping[str, Any]) -> Optional[str]:
    """The sha256 a pretrained cfg's weight file must have (None: unpinned).

    Weights from the registry's own hub repo of a released ``arch.tag`` are held to the registry pin, whatever
    the cfg (e.g. the repo's config.json) says: replacing both files on the hub must not pass.
    """
    reg = _registry_cfg(cfg.get('architecture'), cfg.get('tag'))
    pin = getattr(reg, 'sha256', None)
    hub = (cfg.get('hf_hub_id') or '').partition('@')[0]
    if pin and not cfg.get('file') and hub and hub == getattr(reg, 'hf_hub_id', None):
        if cfg.get('sha256') and cfg['sha256'] != pin:
            raise WeightsError(f"{cfg['hf_hub_id']}: config.json pins sha256 {cfg['sha256']} but fsr_hub's registry "
                               f"pins {pin}.")
        return pin
    return cfg.get('sha256')


def check_pretrained_file(cfg: Mapping[str, Any], cache_dir: Optional[PathLike] = None) -> Path:
    """Resolve the weight file of a pretrained cfg and check it before any tensor of it is read: its sha256
    (see :func:`expected_sha256`), that it is a safetensors file, and that its header parses."""
    expected = expected_sha256(cfg)
    if expected is None and not cfg.get('file') and cfg.get('hf_hub_id') and cfg.get('source') != 'hf-hub':
        raise WeightsError(
            f"{_cfg_name(cfg)}: no sha256 pinned for the weights of {cfg['hf_hub_id']}; pass "
            f"pretrained_cfg_overlay=dict(sha256=...) to load them.")
    path = resolve_pretrained_file(cfg, cache_dir)
    if not path.is_file():
        raise WeightsError(f'Weight file not found: {path}')
    if path.suffix != '.safetensors':
        raise WeightsError(f'{path}: fsr_hub loads safetensors files only (*.safetensors), never pickles.')
    _check_sha256(path, expected)
    try:
        with safe_open(str(path), framework='pt'):
            pass
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f'{path} is not a readable safetensors file ({e}).') from e
    return path
