"""Training engine: :func:`train` runs (or resumes) the paper's recipe (Sec. 4.1) by default, natural training and
ADML fine-tuning as options, under an optional time budget, on one device or with DDP under ``torchrun``.

A run is a sequence of steps on its :class:`~fsr_hub.train_run.RunState`: set-up (:mod:`fsr_hub.train_run`), resume
and checkpoints (:mod:`fsr_hub.train_checkpoint`), the training step (:mod:`fsr_hub.step`), then per epoch the
time-budget check (:mod:`fsr_hub.train_budget`), the epoch's steps (here), the overfitting guard
(:mod:`fsr_hub.guard`) and the held-out evaluation that picks the best checkpoint (:mod:`fsr_hub.train_holdout`).

Exact resume: each epoch re-seeds the global generators from (seed, rank, epoch), the loader's order and
augmentation are functions of (seed, epoch) and the lr of the epoch, so a checkpoint written after epoch e continues
bit-exactly (on the CPU, and on CUDA with ``deterministic=True``).
"""
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .guard import check_guard
from .hardware import synchronize
from .objectives import AdversarialObjective
from .schedule import NATURAL_RECIPE, PER_ITERATION, step_lr
from .step import STEP_MODES, TrainStep, autocast
from .train_budget import PROBE_STEPS, out_of_time, plan_budget
from .train_checkpoint import resume_run, write_epoch_checkpoint, write_final_outputs
from .train_config import TrainConfig
from .train_holdout import evaluate_holdout, robust_accuracy
from .train_run import RunState, seed_epoch, setup_run

__all__ = [
    'TrainConfig', 'TrainResult', 'train', 'save_checkpoint', 'load_checkpoint', 'CheckpointError', 'autocast',
    'robust_accuracy', 'STEP_MODES', 'NATURAL_RECIPE',
]


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained (unwrapped) model, the per-epoch metrics and, on rank 0, the summary."""
    model: nn.Module
    history: List[Dict[str, Any]]
    summary: Dict[str, Any] = field(default_factory=dict)


def train(
        config: TrainConfig,
        model: Optional[nn.Module] = None,
        data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        step_callback: Optional[Callable[[int, int], None]] = None,
        command: Optional[str] = None,
        clock_start: Optional[float] = None,
) -> TrainResult:
    """Run (or resume) training; returns the trained (unwrapped) model and per-epoch metrics.

    ``model`` overrides ``config.model`` (tests, custom architectures); ``data`` = (uint8 NHWC images, labels)
    overrides reading ``config.data`` (the held-out slice is still split off its end). ``step_callback(epoch,
    step)`` runs after every optimizer step. ``clock_start`` (a ``time.monotonic()`` value, default now) is
    when the time budget started. Rank 0 writes to ``config.out``: ``last.pt`` and ``train_summary.json``
    after every epoch, ``best.safetensors`` at each new best, ``final.safetensors`` at the end.
    """
    run = setup_run(config, model, data, command, time.monotonic() if clock_start is None else clock_start)
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    if run.device.type == 'cuda':
        torch.backends.cudnn.benchmark = not run.cfg.deterministic
        torch.backends.cudnn.deterministic = run.cfg.deterministic
    try:
        resume_run(run)
        _build_step(run)
        while run.epoch < run.cfg.epochs and not out_of_time(run):
            metrics = _train_epoch(run, step_callback)
            collapsed = check_guard(run, metrics) if run.cfg.guard else False
            is_best = evaluate_holdout(run, metrics) if run.evaluates(run.epoch) and not collapsed else False
            write_epoch_checkpoint(run, metrics, is_best)
            run.epoch += 1
            if collapsed:
                break
        summary = write_final_outputs(run)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags
    return TrainResult(model=run.model, history=run.history, summary=summary)


def _build_step(run: RunState) -> None:
    """The training step (after resume: DDP broadcasts the loaded weights, a graph captures the loaded state)."""
    objective = AdversarialObjective(run.model, run.cfg.objective_config())
    loss_module: nn.Module = objective
    if run.world > 1:
        # without the FSR losses the auxiliary heads get no gradient, which DDP must be told about
        loss_module = nn.parallel.DistributedDataParallel(
            objective, device_ids=[run.device.index] if run.device.type == 'cuda' else None,
            find_unused_parameters=not run.cfg.fsr_loss)
    run.step = TrainStep(objective, run.optimizer, mode=run.cfg.step, amp=run.cfg.amp, loss_module=loss_module)


def _train_epoch(run: RunState, step_callback: Optional[Callable[[int, int], None]]) -> Dict[str, Any]:
    """One epoch of training steps; under a time budget the first epoch also plans the run. The steps never wait for
    the host: their statistics add up on the device and are read once, at the end of the epoch."""
    cfg, epoch = run.cfg, run.epoch
    seed_epoch(cfg.seed, run.rank, epoch)
    run.loader.set_epoch(epoch)
    per_iteration = cfg.schedule in PER_ITERATION
    steps_per_epoch = len(run.loader)
    lr = step_lr(cfg, epoch, 0, steps_per_epoch)
    run.step.set_lr(lr)
    planning = run.raw.time_budget is not None and run.budget is None
    warm = run.step.setup_calls
    stats = torch.zeros(4, device=run.device)
    synchronize(run.device)
    t0 = t_warm = time.perf_counter()
    bar = tqdm(run.loader, desc=f'epoch {epoch + 1}/{cfg.epochs}', disable=not (run.is_main and cfg.progress),
               leave=False, file=sys.stderr)
    plan_seconds = 0.0  # spent inside the epoch on planning the budget (timed evaluation and checkpoint)
    for i, (x, y) in enumerate(bar):
        if per_iteration and i:
            run.step.set_lr(step_lr(cfg, epoch, i, steps_per_epoch))
        stats += run.step(x, y)
        if step_callback is not None:
            step_callback(epoch, i)
        if i + 1 == warm or (planning and i + 1 == warm + PROBE_STEPS):
            synchronize(run.device)
            if i + 1 == warm:
                t_warm = time.perf_counter()
            else:
                t_plan = time.perf_counter()
                plan_budget(run, (t_plan - t_warm) / PROBE_STEPS, i + 1, t_warm - t0)
                plan_seconds = time.perf_counter() - t_plan
                planning = False
                cfg = run.cfg  # the plan fixed the epoch count: the rest of the epoch follows its schedule
    if run.world > 1:
        dist.all_reduce(stats)
    synchronize(run.device)
    seconds = time.perf_counter() - t0
    after = steps_per_epoch - warm
    # the set-up calls (compilation, graph capture) and the planning happen once per process: a step costs what
    # the steps after them took (all of them in an epoch of set-up calls only)
    per_step = (t0 + seconds - t_warm - plan_seconds) / after if after > 0 else seconds / steps_per_epoch
    run.steady_epoch_seconds = per_step * steps_per_epoch
    if planning:  # an epoch too short to probe: plan from its steps
        plan_budget(run, per_step, steps_per_epoch, t_warm - t0 if after > 0 else seconds)
    loss_sum, n, adv_c, nat_c = stats.tolist()
    lrs = {'lr': lr}
    if per_iteration:
        lrs['lr_end'] = step_lr(cfg, epoch, steps_per_epoch - 1, steps_per_epoch)
    return {'epoch': epoch + 1, **lrs, 'train_loss': round(loss_sum / n, 5),
            'train_adv_acc': round(100 * adv_c / n, 2) if adv_c >= 0 else None,
            'train_nat_acc': round(100 * nat_c / n, 2) if nat_c >= 0 else None,
            'epoch_seconds': round(seconds, 3), 'images_per_second': round(n / seconds, 1)}
