"""The state of one training process (:class:`RunState`), passed between the steps of
:func:`fsr_hub.engine.train`, and its set-up (:func:`setup_run`: DDP process group, data and loaders, model,
optimizer), with the per-epoch seeding and the cross-rank reduction the steps share.
"""
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from .data import DATASETS, DeviceLoader, load_dataset, split_holdout
from .guard import OverfitGuard
from .init_from import load_init
from .models import create
from .schedule import check_lr_plan, eval_epochs
from .step import TrainStep, build_optimizer
from .train_config import TrainConfig, dist_info
from .train_summary import architecture_of

__all__ = ['RunState', 'setup_run', 'seed_epoch', 'all_reduce_max']


@dataclass
class RunState:
    """The state of one training process, passed between the steps of :func:`fsr_hub.engine.train`."""
    raw: TrainConfig  # as given (with the objective's epochs and schedule): re-resolved when a time budget fixes
    # the epoch count
    cfg: TrainConfig  # resolved
    device: torch.device
    rank: int
    world: int
    out: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DeviceLoader
    hold_loader: Optional[DeviceLoader]
    command: str
    clock_start: float  # time.monotonic() when the run (and its time budget) started
    t_start: float = field(default_factory=time.time)
    step: Optional[TrainStep] = None
    epoch: int = 0  # the next epoch to run, 0-based
    history: List[Dict[str, Any]] = field(default_factory=list)
    best: Dict[str, Any] = field(default_factory=lambda: {'accuracy': -1.0, 'epoch': -1})
    best_sha: Optional[str] = None
    prior_seconds: float = 0.0  # wall clock of earlier (resumed) processes
    prior_processes: List[Dict[str, Any]] = field(default_factory=list)  # their records (process_records)
    first_epoch: int = 0  # the 0-based epoch this process started at (> 0 when resumed)
    budget: Optional[Dict[str, Any]] = None  # the time-budget plan, once made
    steady_epoch_seconds: Optional[float] = None  # the last epoch of this process without its one-off set-up
    costs: Dict[str, float] = field(default_factory=lambda: {'evaluation': 0.0, 'checkpoint': 0.0})
    guard: Optional[OverfitGuard] = None  # made by fsr_hub.guard.check_guard after the first epoch
    init: Optional[Dict[str, Any]] = None  # the weights the run started from (--init-from), as the summary records

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def deadline(self) -> Optional[float]:
        return None if self.raw.time_budget is None else self.clock_start + 60.0 * self.raw.time_budget

    def wall_clock_seconds(self) -> float:
        """Wall clock of the whole run so far, summed over this and earlier (resumed) processes."""
        return self.prior_seconds + time.time() - self.t_start

    @property
    def natural(self) -> bool:
        return self.cfg.objective == 'natural'

    def evaluates(self, epoch: int) -> bool:
        """Whether the held-out slice is evaluated after 0-based ``epoch``."""
        return bool(self.cfg.holdout) and epoch + 1 in eval_epochs(self.cfg.epochs, self.cfg.eval_every)


def setup_run(config: TrainConfig, model: Optional[nn.Module], data: Optional[Tuple[torch.Tensor, torch.Tensor]],
              command: Optional[str], clock_start: float) -> RunState:
    """The state of a new run of ``config``: DDP process group, data and loaders, model, optimizer, output folder.
    ``model`` and ``data`` override building the configured model and reading the dataset (see
    :func:`fsr_hub.engine.train`)."""
    cfg = config.resolved()
    rank, world, local_rank = dist_info()
    device = torch.device(cfg.device)
    if world > 1:
        if device.type == 'cuda':
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if cfg.batch_size % world:
        raise ValueError(f'batch_size {cfg.batch_size} is not divisible by the {world} DDP processes.')
    if data is None:
        images, labels = load_dataset(cfg.dataset, cfg.data, train=True)
        if cfg.max_train_images is not None:
            images, labels = images[:cfg.max_train_images + cfg.holdout], labels[:cfg.max_train_images + cfg.holdout]
        data = images, labels
    (train_x, train_y), (hold_x, hold_y) = split_holdout(data[0], data[1], cfg.holdout)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    if model is None:
        model = create(cfg.model, num_classes=DATASETS[cfg.dataset][0], **cfg.model_args)
    init = load_init(model, cfg.init_from, architecture_of(model, cfg.model)) if cfg.init_from else None
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = DeviceLoader(
        train_x, train_y, cfg.batch_size // world, device=device, shuffle=True, augment=cfg.augment,
        drop_last=True, seed=cfg.seed, rank=rank, world_size=world, channels_last=cfg.channels_last)
    if len(loader) == 0:
        raise ValueError(f'{len(train_y)} training images give no full batch of {cfg.batch_size}.')
    if cfg.lr_plan is not None:
        check_lr_plan(cfg.lr_plan, len(loader))
    # after the set-up checks, before any training: an output folder that cannot be written fails now, not after an
    # epoch
    if rank == 0:
        if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
            raise ValueError(f'out {cfg.out} is a file, not a folder.')
        try:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f'out {cfg.out}: cannot create the output folder ({e.strerror or e}).') from None
    hold_loader = DeviceLoader(
        hold_x, hold_y, cfg.eval_batch_size, device=device, rank=rank, world_size=world,
        channels_last=cfg.channels_last) if cfg.holdout else None
    optimizer = build_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.step, device)
    return RunState(raw=config.with_objective_defaults(), cfg=cfg, device=device, rank=rank, world=world,
                    out=Path(cfg.out), model=model, optimizer=optimizer, loader=loader, hold_loader=hold_loader,
                    clock_start=clock_start, command=command if command is not None else ' '.join(sys.argv),
                    init=init.record() if init is not None else None)


def seed_epoch(seed: int, rank: int, epoch: int) -> None:
    """Re-seed the global torch generators (CPU and every CUDA device) from (seed, rank, epoch): exact resume."""
    s = (seed * 1_000_003 + rank * 10_007 + epoch) % (2 ** 63)
    torch.manual_seed(s)  # seeds CPU and every CUDA device


def all_reduce_max(values: List[float], run: RunState) -> List[float]:
    """The maxima of ``values`` over the DDP ranks (``values`` itself in a single process)."""
    if run.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=run.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()

