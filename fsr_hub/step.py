"""One training step, shared by the trainer and the benchmark: the attack, the loss, the backward pass and the
SGD update, run in one of three ways (:data:`STEP_MODES`):

- ``eager``: plain PyTorch, the reference.
- ``compile``: the attacked model and the objective's forward through ``torch.compile``; fused SGD on CUDA.
- ``cuda-graph``: the whole step, attack included, captured once as a CUDA graph and replayed for every batch,
  which removes the launch overhead of the attack's many small kernels (its requirements: :class:`TrainStep`).

Nothing in a step synchronises with the host: it returns its statistics as a device tensor.
"""
import contextlib
import sys
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from .objectives import AdversarialObjective

__all__ = ['STEP_MODES', 'autocast', 'default_step_mode', 'build_optimizer', 'load_optimizer_state', 'TrainStep']

STEP_MODES = ('eager', 'compile', 'cuda-graph')


def autocast(device: torch.device, enabled: bool, cache: bool = True):
    """bf16 autocast on ``device`` (CPU included) or a no-op context; ``cache=False`` for CUDA-graph capture."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


def default_step_mode(device: torch.device, world_size: int = 1) -> str:
    """cuda-graph on a single CUDA device, eager elsewhere (the CPU, and DDP, where graphs are not supported here)."""
    return 'cuda-graph' if device.type == 'cuda' and world_size == 1 else 'eager'


def _check_mode(mode: str, device: torch.device) -> None:
    if mode not in STEP_MODES:
        raise ValueError(f'Unknown step {mode!r}; expected one of {", ".join(STEP_MODES)}.')
    if mode == 'cuda-graph' and device.type != 'cuda':
        raise ValueError(f'the cuda-graph step needs a CUDA device, not {device}; use the eager or compile step.')


def build_optimizer(
        model: nn.Module, lr: float, momentum: float, weight_decay: float, mode: str, device: torch.device,
) -> torch.optim.SGD:
    """SGD with momentum for a :class:`TrainStep` of ``mode``.

    eager: torch's default implementation (foreach on CUDA), the reference. compile and cuda-graph on CUDA: the
    fused kernel; cuda-graph also keeps the lr in a float32 device tensor, which the captured graph reads.
    """
    _check_mode(mode, device)
    fused = mode != 'eager' and device.type == 'cuda'
    lr_value: Any = torch.tensor(float(lr), dtype=torch.float32, device=device) if mode == 'cuda-graph' else float(lr)
    return torch.optim.SGD(model.parameters(), lr=lr_value, momentum=momentum, weight_decay=weight_decay, fused=fused)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    """Load a state dict saved by an optimizer of any step mode, keeping this optimizer's implementation
    (fused / foreach) and lr objects: a saved float lr must not replace the device tensor a graph reads."""
    keep = [{k: g[k] for k in ('lr', 'fused', 'foreach') if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, keep):
        group.update(kept)


class TrainStep:
    """``step(x, y)``: one optimisation step on the batch; returns its statistics (see
    :meth:`fsr_hub.objectives.AdversarialObjective.forward`) as a new device tensor.

    Args:
        objective: the objective of ``objective.model``, the model trained.
        optimizer: from :func:`build_optimizer` with the same ``mode``.
        mode: one of :data:`STEP_MODES`.
        amp: bf16 autocast for the attack and the update.
        loss_module: what computes the update's loss, e.g. a DDP wrapper of ``objective`` (default: ``objective``).
        compile_backend: the ``torch.compile`` backend of the compile mode ('eager' only traces: cheap tests).
        graph_warmup: eager steps before the capture (cuda-graph).

    The cuda-graph mode needs static shapes (the trainer drops the last incomplete batch; a batch of another shape
    is refused), randomness from the global CUDA generator (the random start and the FSR Gumbel noise: torch's
    Philox generator is graph-safe, every replay draws fresh numbers from the generator's current seed and offset,
    so re-seeding between replays works), optimizer state and lr on the device (fused SGD with a tensor lr that
    :meth:`set_lr` fills in place) and autocast without its weight cache. The first steps run eagerly on a side
    stream (cuDNN autotuning, lazy initialisation, the momentum buffers) before the capture; they are real training
    steps, so no step is wasted or repeated.
    """

    def __init__(
            self,
            objective: AdversarialObjective,
            optimizer: torch.optim.Optimizer,
            mode: str = 'eager',
            amp: bool = False,
            loss_module: Optional[nn.Module] = None,
            compile_backend: str = 'inductor',
            graph_warmup: int = 3,
    ):
        self.model = objective.model
        self.device = next(self.model.parameters()).device
        _check_mode(mode, self.device)
        if mode == 'cuda-graph' and not all(
                isinstance(g['lr'], torch.Tensor) and g['lr'].device == self.device for g in optimizer.param_groups):
            raise ValueError('the cuda-graph step needs an optimizer with its lr on the device: use '
                             "build_optimizer(..., mode='cuda-graph').")
        if graph_warmup < 1:
            raise ValueError('graph_warmup must be >= 1 (the momentum buffers exist before the capture), '
                             f'got {graph_warmup}.')
        self.objective = objective
        self.optimizer = optimizer
        self.mode = mode
        self.amp = amp
        self.graph_warmup = graph_warmup
        self.loss_module: nn.Module = loss_module if loss_module is not None else objective
        self.attack_model: nn.Module = self.model
        if mode == 'compile':
            self.loss_module = torch.compile(self.loss_module, backend=compile_backend)
            self.attack_model = torch.compile(self.model, backend=compile_backend)
        self.calls = 0
        self.fallback: Optional[str] = None  # why a cuda-graph step runs eagerly instead (its capture failed)
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._side: Optional[torch.cuda.Stream] = None

    @property
    def setup_calls(self) -> int:
        """How many first calls include one-time set-up (cuDNN autotuning, compilation, warm-up and capture)."""
        return {'eager': 1, 'compile': 2, 'cuda-graph': self.graph_warmup + 1}[self.mode]

    def set_lr(self, lr: float) -> None:
        """Set every parameter group's lr; a device-tensor lr is filled in place (the captured graph reads it)."""
        for group in self.optimizer.param_groups:
            if isinstance(group['lr'], torch.Tensor):
                group['lr'].fill_(lr)
            else:
                group['lr'] = float(lr)

    def body(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The step itself, the same in every mode (run, compiled or captured)."""
        self.optimizer.zero_grad(set_to_none=True)  # under capture: the graph's backward allocates the gradients
        self.model.train()
        with autocast(self.device, self.amp, cache=self.mode != 'cuda-graph'):
            x_adv = self.objective.perturb(x, y, attack_model=self.attack_model)
            loss, stats = self.loss_module(x, x_adv, y)
        loss.backward()
        self.optimizer.step()
        return stats

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.mode != 'cuda-graph' or self.fallback is not None:
            return self.body(x, y)
        if self._graph is None:
            if self.calls <= self.graph_warmup:
                return self._on_side_stream(x, y)
            try:
                self._capture(x, y)
            except RuntimeError as e:  # a capture records kernels without running them: nothing was updated
                self.fallback = f'capture failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})'
                print(f'warning: cuda-graph step {self.fallback}; running the step eagerly', file=sys.stderr)
                return self.body(x, y)
        if x.shape != self._x.shape or y.shape != self._y.shape:
            raise ValueError(f'the cuda-graph step was captured for batches of {tuple(self._x.shape)}, got '
                             f'{tuple(x.shape)}: graphs need static shapes (drop the last incomplete batch).')
        self._x.copy_(x)
        self._y.copy_(y)
        self._graph.replay()
        return self._stats.clone()

    def _on_side_stream(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # warm-up before a capture runs on a side stream, as torch.cuda.graph's documentation asks
        main = torch.cuda.current_stream(self.device)
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side):
            stats = self.body(x, y)
        main.wait_stream(self._side)
        return stats

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._x = x.detach().clone()  # static inputs (clone keeps channels_last); each replay copies a batch in
        self._y = y.detach().clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._stats = self.body(self._x, self._y)
        self._graph = graph
