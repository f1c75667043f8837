"""What every analysis shares: the optional-dependency check, the deadline, feature hooks, atomic JSON output and
the sections' metadata."""
import importlib
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..fsr import FSR
from ..hardware import hardware_name
from ..schemas import ANALYSIS_SCHEMA

__all__ = [
    'AnalysisError', 'Deadline', 'require', 'prepare', 'batched', 'fsr_position', 'fsr_tap', 'capture_tap',
    'save_figure', 'section_meta',
    'ANALYSIS_SCHEMA', 'PNG_NAMES',
]

#: file name of each analysis' figure in a release folder (the card embeds those it finds)
PNG_NAMES = {'eps_curve': 'eps_curve.png', 'feature_swap': 'feature_swap.png', 'knn': 'knn.png',
             'gradcam': 'gradcam.png', 'ib_split': 'ib_split.png', 'ib_attack': 'ib_attack.png'}

# module -> PyPI distribution, for the error message
_DISTRIBUTIONS = {'pytorch_grad_cam': 'grad-cam', 'matplotlib': 'matplotlib', 'torchattack': 'torchattack',
                  'scipy': 'scipy'}


class AnalysisError(ValueError):
    """Bad input to an analysis (wrong model kind, empty data, unreadable results file)."""


def require(module: str) -> Any:
    """Import an optional dependency of the analyses, or raise ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        dist = _DISTRIBUTIONS.get(module.split('.')[0], module)
        raise ImportError(f"this analysis needs {dist!r}, which is not installed: "
                          f"pip install 'fsr-hub[analysis]'.") from e


class Deadline:
    """Wall-clock budget of one analysis command. Work is done in units (a feature, an eps, a batch of images);
    a unit starts only if the time left exceeds the longest unit so far, so a run ends before its deadline
    unless its first unit alone is longer. ``minutes=None``: no deadline."""

    def __init__(self, minutes: Optional[float] = None):
        if minutes is not None and minutes <= 0:
            raise AnalysisError(f'--deadline-minutes must be positive, got {minutes}.')
        self.start = time.perf_counter()
        self.seconds = None if minutes is None else 60.0 * minutes
        self.longest = 0.0
        self.stopped = False

    def left(self) -> float:
        return float('inf') if self.seconds is None else self.seconds - (time.perf_counter() - self.start)

    @contextmanager
    def unit(self) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.longest = max(self.longest, time.perf_counter() - t0)

    def allows_next(self) -> bool:
        """True when another unit fits; once False, :attr:`stopped` records that the run was cut short."""
        ok = self.left() > self.longest
        self.stopped = self.stopped or not ok
        return ok

    def elapsed(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def fsr_position(model: nn.Module, position: Optional[str] = None) -> str:
    """The FSR position an analysis looks at: ``position`` if given, else the model's last FSR position."""
    fsr = getattr(model, 'fsr', None)
    if not isinstance(fsr, nn.ModuleDict) or not len(fsr):
        raise AnalysisError(f'{type(model).__name__} has no FSR module: this analysis needs an FSR model '
                            f'(fsr_resnet18, fsr_vgg16, fsr_wrn34_10), not a vanilla twin.')
    if position is None:
        return list(fsr.keys())[-1]
    if position not in fsr:
        raise AnalysisError(f'No FSR module at {position!r}; the model has {list(fsr.keys())}.')
    return position


@contextmanager
def capture_tap(module: nn.Module) -> Iterator[List[torch.Tensor]]:
    """Collect (detached) outputs of ``module`` while the block runs."""
    out: List[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, o: out.append(o.detach()))
    try:
        yield out
    finally:
        handle.remove()


def fsr_tap(model: nn.Module, position: str) -> nn.Module:
    """The identity hook point on the output of the FSR module at ``position`` (see :class:`fsr_hub.fsr.FSR`)."""
    module = model.fsr[fsr_position(model, position)]
    if not isinstance(module, FSR):
        raise AnalysisError(f'model.fsr[{position!r}] is a {type(module).__name__}, not an FSR module.')
    return module.tap


def prepare(model: nn.Module, device: Union[str, torch.device]) -> nn.Module:
    """``model`` on ``device`` in eval mode (deterministic FSR masks), float32 only (reduced precision weakens
    attacks)."""
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise AnalysisError('analyses run in float32: the model has non-float32 parameters.')
    return model.to(device).eval()


def batched(fn, x: torch.Tensor, batch_size: int, device: Union[str, torch.device],
            *rest: torch.Tensor) -> torch.Tensor:
    """``fn`` applied to ``batch_size`` slices of x (and of the tensors in ``rest``) on ``device``; results
    concatenated on the CPU."""
    if batch_size <= 0:
        raise AnalysisError(f'batch size must be positive, got {batch_size}.')
    out = []
    for i in range(0, len(x), batch_size):
        out.append(fn(x[i:i + batch_size].to(device), *(t[i:i + batch_size].to(device) for t in rest)).cpu())
    return torch.cat(out)


def section_meta(model_info: Mapping[str, Any], data: Mapping[str, Any], device: Union[str, torch.device],
                 deadline: Deadline, command: Optional[str] = None) -> Dict[str, Any]:
    """The fields every analysis section carries besides its numbers."""
    return {
        'schema': ANALYSIS_SCHEMA,
        'model': dict(model_info),
        'data': dict(data),
        'hardware': {'device': hardware_name(torch.device(device)), 'torch': torch.__version__, 'dtype': 'float32'},
        'seconds': deadline.elapsed(),
        'complete': not deadline.stopped,
        'deadline_minutes': None if deadline.seconds is None else deadline.seconds / 60.0,
        'command': command,
    }


def save_figure(fig: Any, path: Union[str, os.PathLike]) -> Path:
    """Save a matplotlib Figure as PNG atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    fig.savefig(tmp, format='png')
    os.replace(tmp, path)
    return path



