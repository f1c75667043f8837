"""Training checkpoints and run outputs written atomically: a kill at any moment leaves the old file or the new
one, never a partial file. Checkpoints are read back with ``torch.load(weights_only=True)`` only."""
import json
import os
import pickle
from pathlib import Path
from typing import Any, Dict

import torch

from .schemas import CKPT_FORMAT

__all__ = ['CheckpointError', 'UnreadableTorchFile', 'load_weights_only', 'save_checkpoint', 'load_checkpoint',
           'write_json', 'rng_state', 'set_rng_state']


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not belong to this run."""


class UnreadableTorchFile(ValueError):
    """``torch.load(weights_only=True)`` cannot read a file; the message is one line: torch's reason."""


def load_weights_only(path: os.PathLike, map_location: Any = 'cpu') -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain values, never other pickled objects."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # torch's text ends advising weights_only=False: never here, so its reason only
        lines = [l.strip() for l in str(e).splitlines() if l.strip() and not l.startswith('Check the documentation')]
        raise UnreadableTorchFile(f"UnpicklingError: {lines[-1].split('. ')[0] if lines else ''}") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        # KeyError: torch's legacy loader reads a text file's first byte as an unknown pickle opcode
        first = (str(e).strip().splitlines() or [''])[0]
        raise UnreadableTorchFile(f'{type(e).__name__}: {first[:200]}') from e


def save_checkpoint(state: Dict[str, Any], path: os.PathLike) -> None:
    """torch.save to ``path.tmp``, fsync, then atomic ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'wb') as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: os.PathLike, map_location: Any = 'cpu') -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain types only: weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'Checkpoint not found: {path}')
    try:
        state = load_weights_only(path, map_location)
    except UnreadableTorchFile as e:
        raise CheckpointError(f'Checkpoint {path} is unreadable by torch.load(weights_only=True): {e}.') from e
    if not isinstance(state, dict) or state.get('format') != CKPT_FORMAT:
        raise CheckpointError(f'{path} is not an fsr-hub training checkpoint.')
    return state


def write_json(path: os.PathLike, data: Any, allow_nan: bool = True) -> Path:
    """Write ``data`` as indented JSON (folder created) through a synced temporary file and an atomic rename:
    readers see the old file or the new one, never half of one. ``allow_nan=False``: strict JSON (NaN refused)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'w') as f:
        f.write(json.dumps(data, indent=2, allow_nan=allow_nan) + '\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def rng_state() -> Dict[str, Any]:
    """The global CPU and CUDA generator states."""
    state: Dict[str, Any] = {'cpu': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
