"""Training engine: the paper's recipe (Sec. 4.1) by default, natural training as an option, a time budget,
atomic checkpoints with exact resume, best-checkpoint selection on a held-out slice of the training set, DDP
under ``torchrun``.

A run is a sequence of named steps: :func:`_setup` (DDP, data, model, optimizer), :func:`_resume`,
:func:`_build_step` (eager, compiled or CUDA-graph step: :mod:`fsr_hub.step`), then per epoch
:func:`_out_of_time` (under a time budget: re-plans the epochs left when the machine has slowed down),
:func:`_train_epoch` (the lr per epoch or per iteration: :func:`fsr_hub.schedule.step_lr`; under a time budget the
first epoch also measures the speed and fixes the epoch count: :func:`_plan_budget`), the catastrophic-overfitting
guard (:func:`fsr_hub.guard.check_guard`), :func:`_evaluate` (on the epochs of :func:`fsr_hub.schedule.eval_epochs`) and
:func:`_checkpoint` (``last.pt``, ``best.safetensors`` at each new best, ``train_summary.json`` every epoch),
and :func:`_finish` (``final.safetensors``, the complete summary). Everything written is written atomically,
so a copy taken at any moment holds valid weights and a valid summary.

Speed on a GPU: the uint8 dataset lives on the device and is augmented there (:class:`fsr_hub.data.DeviceLoader`),
the attack and the update run under bf16 autocast, the model is channels_last, cuDNN autotunes, and the inner
loop never syncs with the host (metrics accumulate on the device and are read once per epoch). On a CPU with bf16
instructions (:func:`fsr_hub.hardware.fast_precision`) bf16 autocast and channels_last are the defaults too, and
the held-out evaluation runs in bf16 there (labelled in the summary).

Exact resume: at the start of every epoch the global torch generators (CPU and CUDA) are re-seeded from
(seed, rank, epoch), the loader's shuffling / augmentation is a function of (seed, epoch), and the lr is a
function of the epoch. A checkpoint written after epoch e therefore continues bit-exactly (on the CPU, and on
CUDA with ``deterministic=True``), whichever moment the previous process was killed at.
"""
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .attacks import pgd
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state, write_json
from .data import DATASETS, DeviceLoader, load_dataset, split_holdout
from .guard import OverfitGuard, check_guard
from .hardware import fast_precision, resolve_device, strict_float32, synchronize
from .models import create
from .init_from import load_init
from .objectives import ADML_BASES, OBJECTIVES, AdversarialObjective, ObjectiveConfig, adml_split
from .paper import ADML_BETA, ADML_EPOCHS, ADML_LR
from .schedule import (
    AT_MILESTONES, CYCLIC_LR_MAX, NATURAL_MILESTONES, NATURAL_RECIPE, PER_ITERATION, SCHEDULES,
    BudgetCosts, default_eval_every, eval_epochs, lr_milestones, plan_epochs, replan_epochs, step_lr,
)
from .schemas import CKPT_FORMAT
from .step import STEP_MODES, TrainStep, autocast, build_optimizer, default_step_mode, load_optimizer_state
from .train_attacks import SINGLE_STEP, check_attack, default_alpha
from .train_summary import architecture, architecture_of, plain_config, train_summary
from .weights import save_weights

__all__ = [
    'TrainConfig', 'TrainResult', 'train', 'save_checkpoint', 'load_checkpoint', 'CheckpointError', 'autocast',
    'robust_accuracy', 'STEP_MODES', 'NATURAL_RECIPE',
]

PROBE_STEPS = 10  # steady-state steps timed (after the set-up calls) to plan a time budget


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the paper's CIFAR-10 recipe (use :meth:`for_dataset`)."""
    model: str = 'fsr_resnet18'
    #: constructor arguments of ``model`` (through :func:`fsr_hub.models.create`), e.g. ``{'fsr_positions':
    #: ['layer3', 'layer4']}`` to add FSR to a timm CNN; JSON values only, ``num_classes`` comes from the dataset
    model_args: Dict[str, Any] = field(default_factory=dict)
    dataset: str = 'cifar10'
    data: str = 'data'
    out: str = 'runs/train'
    #: weights to start from (fine-tuning): a release folder, a released ``arch.tag`` or a safetensors file
    #: (:mod:`fsr_hub.init_from`); None: a fresh initialisation
    init_from: Optional[str] = None
    objective: str = 'at'  # at | trades | mart | natural | adml (fine-tuning; sets its own defaults below)
    fsr_loss: bool = True
    lambda_sep: float = 1.0
    lambda_rec: float = 1.0
    beta: Optional[float] = None  # None: 6 (adml: 2, the official code's)
    adml_base: Optional[str] = None  # adml only: the first half's objective, at | trades | mart; None: at
    eps: float = 8 / 255
    attack: Optional[str] = None  # pgd | fgsm-rs | n-fgsm (fsr_hub.train_attacks); None: pgd
    alpha: Optional[float] = None  # None: pgd eps / 4 (CIFAR), eps / 8 (SVHN); fgsm-rs 1.25 eps; n-fgsm eps
    steps: Optional[int] = None  # None: 10 (pgd), 1 (fgsm-rs, n-fgsm)
    random_start: bool = True
    epochs: Optional[int] = None  # None: 100 (adml: 10); with time_budget: the most epochs
    time_budget: Optional[float] = None  # minutes for the whole run; the epoch count is fixed after the first steps
    batch_size: int = 128  # global batch; split evenly over DDP ranks
    #: piecewise (the paper) | cyclic (fast AT: per-iteration triangle) | adml (per-iteration warm-up and decay);
    #: None: piecewise (adml: adml)
    schedule: Optional[str] = None
    lr: Optional[float] = None  # None: 0.1 (CIFAR), 0.01 (SVHN); cyclic: the peak, 0.2; adml: the peak, 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: Optional[Tuple[int, ...]] = None  # None: after 75% and 90% of the epochs (natural: 50% and 75%)
    lr_gamma: float = 0.1
    augment: Optional[bool] = None  # None: the dataset's default (CIFAR yes, SVHN no)
    holdout: int = 1000  # last N training images, never trained on; 0 disables best-checkpoint selection
    eval_every: Optional[int] = None  # None: epochs // 10 (>= 1); the last quarter is evaluated every epoch anyway
    eval_steps: int = 20
    eval_batch_size: int = 500
    eval_amp: Optional[bool] = None  # bf16 held-out evaluation; None: on for the CPU when amp is (CUDA: float32)
    guard: Optional[bool] = None  # catastrophic-overfitting guard; None: on for attacks with a held-out slice
    guard_drop: float = 20.0  # points of guard PGD accuracy below its best that stop the run
    max_train_images: Optional[int] = None  # first N training images only (smoke runs)
    seed: int = 0
    device: Optional[str] = None  # None: cuda if available
    amp: Optional[bool] = None  # bf16 autocast; None: on for CUDA and CPUs with bf16 instructions
    channels_last: Optional[bool] = None  # None: as amp
    step: Optional[str] = None  # eager | compile | cuda-graph; None: cuda-graph on one CUDA device, else eager
    deterministic: bool = False  # CUDA: cuDNN deterministic algorithms and no autotuning (bit-exact resume)
    fp16: bool = False  # final/best safetensors in float16
    resume: bool = False
    progress: bool = True

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> 'TrainConfig':
        """The paper's recipe for ``dataset`` (SVHN: lr 0.01, step eps/8, no augmentation), then ``overrides``."""
        if dataset not in DATASETS:
            raise ValueError(f'Unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}.')
        cfg = cls(dataset=dataset, **overrides)
        return cfg.resolved()

    def with_objective_defaults(self) -> 'TrainConfig':
        """A copy with the objective's epoch count and schedule filled in where None (ADML fine-tuning: 10 epochs
        of its own schedule; otherwise 100 epochs, piecewise), the rest as given."""
        if self.objective not in OBJECTIVES:
            raise ValueError(f'Unknown objective {self.objective!r}; expected one of {OBJECTIVES}.')
        adml = self.objective == 'adml'
        return dataclasses.replace(
            self, epochs=self.epochs if self.epochs is not None else (ADML_EPOCHS if adml else 100),
            schedule=self.schedule if self.schedule is not None else ('adml' if adml else 'piecewise'))

    def resolved(self) -> 'TrainConfig':
        """A copy with every objective-, dataset-, device- and epoch-dependent default (None) filled in, after
        validation."""
        return self.with_objective_defaults()._resolved()

    def _resolved(self) -> 'TrainConfig':
        if self.dataset not in DATASETS:
            raise ValueError(f'Unknown dataset {self.dataset!r}; expected one of {sorted(DATASETS)}.')
        self._check_adml()
        for name in ('epochs', 'batch_size', 'eval_batch_size'):
            if getattr(self, name) <= 0:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}.')
        if self.eval_every is not None and self.eval_every <= 0:
            raise ValueError(f'eval_every must be positive, got {self.eval_every}.')
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f'time_budget must be a positive number of minutes, got {self.time_budget}.')
        if self.milestones is not None and any(int(m) < 1 for m in self.milestones):
            raise ValueError(f'milestones must be epoch counts >= 1, got {self.milestones}.')
        for name in ('holdout', 'steps', 'eps'):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}.')
        attack = self.attack or 'pgd'
        check_attack(attack, self.objective, self.steps, self.random_start)
        if self.schedule not in SCHEDULES:
            raise ValueError(f'Unknown schedule {self.schedule!r}; expected one of {", ".join(SCHEDULES)}.')
        if self.schedule in PER_ITERATION and self.milestones:
            raise ValueError(f'milestones are for the piecewise schedule, not --schedule {self.schedule}.')
        if not self.guard_drop > 0:
            raise ValueError(f'guard_drop must be a positive number of points, got {self.guard_drop}.')
        if self.guard and (self.objective == 'natural' or self.holdout == 0):
            raise ValueError('the overfitting guard attacks held-out images: it needs --holdout > 0 and an '
                             'adversarial objective.')
        if self.max_train_images is not None and self.max_train_images <= 0:
            raise ValueError(f'max_train_images must be positive, got {self.max_train_images}.')
        model_args = _model_args(self.model_args)
        svhn = self.dataset == 'svhn'
        device = resolve_device(self.device)
        cuda = device.type == 'cuda'
        world = _dist_info()[1]
        step = self.step or default_step_mode(device, world)
        if step not in STEP_MODES:
            raise ValueError(f'Unknown step {step!r}; expected one of {", ".join(STEP_MODES)}.')
        if step == 'cuda-graph' and (not cuda or world > 1):
            raise ValueError('the cuda-graph step needs one CUDA device in a single process; use --step eager or '
                             'compile (DDP, CPU).')
        fractions = NATURAL_MILESTONES if self.objective == 'natural' else AT_MILESTONES
        per_iteration = self.schedule in PER_ITERATION
        adml = self.objective == 'adml'
        amp = self.amp if self.amp is not None else fast_precision(device)
        return dataclasses.replace(
            self,
            model_args=model_args,
            attack=attack,
            alpha=self.alpha if self.alpha is not None else default_alpha(attack, self.eps, svhn, adml=adml),
            steps=self.steps if self.steps is not None else (1 if attack in SINGLE_STEP else 10),
            lr=self.lr if self.lr is not None else self._default_lr(svhn),
            beta=self.beta if self.beta is not None else (ADML_BETA if adml else 6.0),
            adml_base=(self.adml_base or 'at') if adml else None,
            augment=self.augment if self.augment is not None else DATASETS[self.dataset][1],
            device=str(device),
            amp=amp,
            channels_last=self.channels_last if self.channels_last is not None else fast_precision(device),
            eval_amp=self.eval_amp if self.eval_amp is not None else (amp and not cuda),
            guard=self.guard is not False and self.holdout > 0 and self.objective != 'natural',
            step=step,
            milestones=(() if per_iteration else tuple(int(m) for m in self.milestones)
                        if self.milestones is not None else lr_milestones(self.epochs, fractions)),
            eval_every=self.eval_every or default_eval_every(self.epochs),
        )

    def _check_adml(self) -> None:
        """ValueError for ADML settings without ADML, or a per-process batch ADML cannot split in halves."""
        if self.objective != 'adml':
            if self.adml_base is not None:
                raise ValueError(f'--adml-base {self.adml_base} is for --objective adml, not {self.objective}.')
            return
        if self.adml_base is not None and self.adml_base not in ADML_BASES:
            raise ValueError(f'Unknown ADML base {self.adml_base!r}; expected one of {", ".join(ADML_BASES)}.')
        if self.batch_size > 0:
            adml_split(self.batch_size // _dist_info()[1])

    def _default_lr(self, svhn: bool) -> float:
        """The lr (a peak for the per-iteration schedules) when none is given: ADML fine-tuning 1e-3, cyclic 0.2,
        otherwise 0.1 (SVHN 0.01)."""
        if self.objective == 'adml' or self.schedule == 'adml':
            return ADML_LR
        if self.schedule == 'cyclic':
            return CYCLIC_LR_MAX
        return 0.01 if svhn else 0.1

    def objective_config(self) -> ObjectiveConfig:
        return ObjectiveConfig(
            name=self.objective, beta=self.beta, fsr=self.fsr_loss, lambda_sep=self.lambda_sep,
            lambda_rec=self.lambda_rec, eps=self.eps, alpha=self.alpha, steps=self.steps,
            random_start=self.random_start, attack=self.attack, adml_base=self.adml_base or 'at')


@dataclass
class TrainResult:
    model: nn.Module
    history: List[Dict[str, Any]]
    summary: Dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    """The state of one training process, passed between the named steps of :func:`train`."""
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
    budget: Optional[Dict[str, Any]] = None  # the time-budget plan, once made
    costs: Dict[str, float] = field(default_factory=lambda: {'evaluation': 0.0, 'checkpoint': 0.0})
    guard: Optional[OverfitGuard] = None  # made by fsr_hub.guard.check_guard after the first epoch
    init: Optional[Dict[str, Any]] = None  # the weights the run started from (--init-from), as the summary records

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def deadline(self) -> Optional[float]:
        return None if self.raw.time_budget is None else self.clock_start + 60.0 * self.raw.time_budget

    @property
    def natural(self) -> bool:
        return self.cfg.objective == 'natural'

    def evaluates(self, epoch: int) -> bool:
        """Whether the held-out slice is evaluated after 0-based ``epoch``."""
        return bool(self.cfg.holdout) and epoch + 1 in eval_epochs(self.cfg.epochs, self.cfg.eval_every)


def _model_args(args: Any) -> Dict[str, Any]:
    """``model_args`` as the summary and the checkpoint hold them (tuples as lists), after validation."""
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ValueError(f'model_args must be a dict of constructor keyword arguments, got {args!r}.')
    if 'num_classes' in args:
        raise ValueError('model_args must not set num_classes: the dataset sets it.')
    try:
        return json.loads(json.dumps(args, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f'model_args must hold JSON values (they are written to train_summary.json): {e}.') from None


def _with_epochs(raw: TrainConfig, epochs: int) -> TrainConfig:
    """``raw`` resolved for another epoch count. Milestones and an evaluation interval equal to the defaults of
    the old count (filled in by :meth:`TrainConfig.resolved`, e.g. through ``for_dataset``) are taken for defaults
    and follow the new count; others are kept."""
    fractions = NATURAL_MILESTONES if raw.objective == 'natural' else AT_MILESTONES
    milestones = raw.milestones
    if milestones is not None and tuple(int(m) for m in milestones) == lr_milestones(raw.epochs, fractions):
        milestones = None
    eval_every = None if raw.eval_every == default_eval_every(raw.epochs) else raw.eval_every
    return dataclasses.replace(raw, epochs=epochs, milestones=milestones, eval_every=eval_every).resolved()


def _seed_epoch(seed: int, rank: int, epoch: int) -> None:
    s = (seed * 1_000_003 + rank * 10_007 + epoch) % (2 ** 63)
    torch.manual_seed(s)  # seeds CPU and every CUDA device


def _dist_info() -> Tuple[int, int, int]:
    world = int(os.environ.get('WORLD_SIZE', '1'))
    return int(os.environ.get('RANK', '0')), world, int(os.environ.get('LOCAL_RANK', '0'))


def _all_reduce_max(values: List[float], run: _Run) -> List[float]:
    if run.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=run.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _batch_counts(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: Optional[int], amp: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    with autocast(x.device, amp):
        clean = (model(x).argmax(1) == y).sum()
        robust = (model(pgd(model, x, y, eps, alpha, steps)).argmax(1) == y).sum() if steps is not None else clean
    return clean, robust


@torch.no_grad()
def robust_accuracy(
        model: nn.Module, loader: DeviceLoader, eps: float, alpha: float, steps: Optional[int], amp: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """On-device (clean correct, PGD-``steps`` correct, n) over ``loader`` (no random start, eval mode);
    ``steps=None``: clean accuracy only (PGD correct is None)."""
    device = loader.device
    model.eval()
    clean = torch.zeros((), device=device)
    robust = torch.zeros((), device=device)
    n = torch.zeros((), device=device)
    for x, y in loader:
        c, r = _batch_counts(model, x, y, eps, alpha, steps, amp)
        clean += c
        robust += r
        n += y.numel()
    return clean, (robust if steps is not None else None), n


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
    run = _setup(config, model, data, command, time.monotonic() if clock_start is None else clock_start)
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    if run.device.type == 'cuda':
        torch.backends.cudnn.benchmark = not run.cfg.deterministic
        torch.backends.cudnn.deterministic = run.cfg.deterministic
    try:
        _resume(run)
        _build_step(run)
        while run.epoch < run.cfg.epochs and not _out_of_time(run):
            metrics = _train_epoch(run, step_callback)
            collapsed = check_guard(run, metrics) if run.cfg.guard else False
            is_best = _evaluate(run, metrics) if run.evaluates(run.epoch) and not collapsed else False
            _checkpoint(run, metrics, is_best)
            run.epoch += 1
            if collapsed:
                break
        summary = _finish(run)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags
    return TrainResult(model=run.model, history=run.history, summary=summary)


def _setup(config: TrainConfig, model: Optional[nn.Module], data, command: Optional[str], clock_start: float) -> _Run:
    """Set-up: DDP process group, data and loaders, model, optimizer."""
    cfg = config.resolved()
    rank, world, local_rank = _dist_info()
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
    return _Run(raw=config.with_objective_defaults(), cfg=cfg, device=device, rank=rank, world=world,
                out=Path(cfg.out), model=model, optimizer=optimizer, loader=loader, hold_loader=hold_loader,
                clock_start=clock_start, command=command if command is not None else ' '.join(sys.argv),
                init=init.record() if init is not None else None)


def _resume(run: _Run) -> None:
    """Resume: model, optimizer, RNG, history, best and time-budget plan from ``last.pt`` (with ``resume``)."""
    path = run.out / 'last.pt'
    if not (run.cfg.resume and path.is_file()):
        return
    ckpt = load_checkpoint(path)  # on the CPU: RNG states must stay CPU tensors; weights are copied over
    old = ckpt['config']
    mine = (run.cfg.model, run.cfg.objective, run.cfg.attack, run.cfg.schedule)
    theirs = (old.get('model'), old.get('objective'), old.get('attack', 'pgd'), old.get('schedule', 'piecewise'))
    if theirs != mine:
        raise CheckpointError(
            f'{path} was written by a {"/".join(map(str, theirs))} run (model/objective/attack/schedule), not '
            f'{"/".join(mine)}; use another --out or drop --resume.')
    if old.get('model_args', {}) != run.cfg.model_args:
        raise CheckpointError(
            f'{path} was written by a {old.get("model")} run with model_args {old.get("model_args", {})}, not '
            f'{run.cfg.model_args}; give the same --fsr-* flags, use another --out or drop --resume.')
    run.model.load_state_dict(ckpt['model'])
    load_optimizer_state(run.optimizer, ckpt['optimizer'])
    set_rng_state(ckpt['rng'])
    run.epoch, run.history, run.best = ckpt['epoch'], list(ckpt['history']), dict(ckpt['best'])
    run.best_sha = ckpt.get('best_sha256')
    run.prior_seconds = float(ckpt.get('wall_clock_seconds', 0.0))
    if ckpt.get('budget') and run.raw.time_budget is not None:  # keep the epoch count the budget fixed
        run.budget = dict(ckpt['budget'])
        run.cfg = _with_epochs(run.raw, int(run.budget['epochs']))
        measured = run.budget['measured']
        run.costs.update(evaluation=measured['evaluation_seconds'], checkpoint=measured['checkpoint_seconds'])
    if run.is_main and run.cfg.progress:
        print(f'resumed from {path} at epoch {run.epoch}', file=sys.stderr)


def _build_step(run: _Run) -> None:
    """The training step (after resume: DDP broadcasts the loaded weights, a graph captures the loaded state)."""
    objective = AdversarialObjective(run.model, run.cfg.objective_config())
    loss_module: nn.Module = objective
    if run.world > 1:
        # without the FSR losses the auxiliary heads get no gradient, which DDP must be told about
        loss_module = nn.parallel.DistributedDataParallel(
            objective, device_ids=[run.device.index] if run.device.type == 'cuda' else None,
            find_unused_parameters=not run.cfg.fsr_loss)
    run.step = TrainStep(objective, run.optimizer, mode=run.cfg.step, amp=run.cfg.amp, loss_module=loss_module)


def _out_of_time(run: _Run) -> bool:
    """Under a time budget, at an epoch boundary: when the epochs left no longer fit (the machine slowed down), re-plan
    fewer epochs; the schedule follows the new count, so the run still ends with its last lr decay (piecewise) or
    the end of its cycle. True (stop) only when even one more epoch does not fit and the piecewise schedule's last
    decay is already behind."""
    if run.deadline is None or not run.history or run.budget is None or run.epoch >= run.cfg.epochs:
        return False
    epoch_seconds, elapsed = _all_reduce_max([run.history[-1]['epoch_seconds'], time.monotonic() - run.clock_start],
                                             run)
    left = 60.0 * run.raw.time_budget - run.budget['reserve_seconds'] - elapsed
    epochs, estimate, fits = replan_epochs(left, run.epoch, run.cfg.epochs, epoch_seconds, run.costs['evaluation'],
                                           run.costs['checkpoint'], run.raw.eval_every, run.cfg.holdout > 0)
    if not fits and run.cfg.schedule == 'piecewise' and run.cfg.milestones and run.epoch > run.cfg.milestones[-1]:
        run.budget['stopped_after_epoch'] = run.epoch
        if run.is_main:
            print(f'time budget: stopping after epoch {run.epoch} of {run.cfg.epochs} (the next would end past '
                  f'the deadline; the last lr decay is behind)', file=sys.stderr)
        return True
    if epochs < run.cfg.epochs:
        old = run.cfg.epochs
        run.cfg = _with_epochs(run.raw, epochs)
        run.budget['epochs'] = epochs
        run.budget.setdefault('replans', []).append({
            'after_epoch': run.epoch, 'from_epochs': old, 'epochs': epochs, 'fits': fits,
            'seconds_left': round(left, 3), 'epoch_seconds': round(epoch_seconds, 3),
            'estimated_seconds': round(estimate, 3)})
        run.budget['reproduce'] = (f're-planned after epoch {run.epoch} (from {old} to {epochs} epochs): the epochs '
                                   f'before ran under the longer schedule, so --epochs {epochs} alone does not '
                                   f'reproduce this run')
        if run.is_main:
            print(f'time budget: the machine slowed to {epoch_seconds:.1f} s/epoch; re-planned from {old} to '
                  f'{epochs} epochs after epoch {run.epoch} (schedule compressed)', file=sys.stderr, flush=True)
    return False


def _train_epoch(run: _Run, step_callback: Optional[Callable[[int, int], None]]) -> Dict[str, Any]:
    """One epoch of training steps; under a time budget the first epoch also plans the run."""
    cfg, epoch = run.cfg, run.epoch
    _seed_epoch(cfg.seed, run.rank, epoch)
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
    for i, (x, y) in enumerate(bar):
        if per_iteration and i:
            run.step.set_lr(step_lr(cfg, epoch, i, steps_per_epoch))
        stats += run.step(x, y)
        if step_callback is not None:
            step_callback(epoch, i)
        if planning and i + 1 in (warm, warm + PROBE_STEPS):
            synchronize(run.device)
            if i + 1 == warm:
                t_warm = time.perf_counter()
            else:
                _plan_budget(run, (time.perf_counter() - t_warm) / PROBE_STEPS, i + 1, t_warm - t0)
                planning = False
    if run.world > 1:
        dist.all_reduce(stats)
    synchronize(run.device)
    seconds = time.perf_counter() - t0
    if planning:  # an epoch too short to probe: time its steps after the set-up calls, or all of them
        steps = len(run.loader)
        after = steps - warm
        per_step = (t0 + seconds - t_warm) / after if after > 0 else seconds / steps
        _plan_budget(run, per_step, steps, t_warm - t0 if after > 0 else seconds)
    loss_sum, n, adv_c, nat_c = stats.tolist()
    lrs = {'lr': lr}
    if per_iteration:
        lrs['lr_end'] = step_lr(cfg, epoch, steps_per_epoch - 1, steps_per_epoch)
    return {'epoch': epoch + 1, **lrs, 'train_loss': round(loss_sum / n, 5),
            'train_adv_acc': round(100 * adv_c / n, 2) if adv_c >= 0 else None,
            'train_nat_acc': round(100 * nat_c / n, 2) if nat_c >= 0 else None,
            'epoch_seconds': round(seconds, 3), 'images_per_second': round(n / seconds, 1)}


def _plan_budget(run: _Run, step_seconds: float, steps_done: int, warmup_seconds: float) -> None:
    """Fix the epoch count under the time budget from the measured step time, one timed held-out evaluation and
    one timed checkpoint write; the lr schedule and evaluation epochs follow from the count (``--epochs N``
    reproduces the run). Neither timing changes the model, the optimizer or any generator."""
    evaluation = _time_evaluation(run) if run.cfg.holdout else 0.0
    checkpoint = _time_checkpoint(run) if run.is_main else 0.0
    elapsed = time.monotonic() - run.clock_start
    # maxima over the ranks: every rank then plans the same count
    step_seconds, evaluation, checkpoint, elapsed = _all_reduce_max(
        [step_seconds, evaluation, checkpoint, elapsed], run)
    budget = 60.0 * run.raw.time_budget
    reserve = max(1.0, 0.02 * budget)
    costs = BudgetCosts(step=step_seconds, steps_per_epoch=len(run.loader), steps_done=steps_done,
                        evaluation=evaluation, checkpoint=checkpoint)
    epochs, estimate, fits = plan_epochs(budget - reserve - elapsed, costs, max_epochs=run.raw.epochs,
                                         eval_every=run.raw.eval_every, holdout=run.cfg.holdout > 0)
    run.cfg = _with_epochs(run.raw, epochs)
    run.costs.update(evaluation=evaluation, checkpoint=checkpoint)
    run.budget = {
        'minutes': run.raw.time_budget, 'max_epochs': run.raw.epochs, 'epochs': epochs, 'fits': fits,
        'measured': {
            'seconds_per_step': round(step_seconds, 6), 'steps_per_epoch': len(run.loader),
            'seconds_per_epoch': round(step_seconds * len(run.loader), 3),
            'setup_steps': run.step.setup_calls, 'setup_seconds': round(warmup_seconds, 3),
            'evaluation_seconds': round(evaluation, 3), 'checkpoint_seconds': round(checkpoint, 3),
            'planned_after_seconds': round(elapsed, 3),
        },
        'reserve_seconds': round(reserve, 3), 'estimated_total_seconds': round(elapsed + estimate, 3),
        'stopped_after_epoch': None,
        'reproduce': f'the same command with --epochs {epochs} and without --time-budget trains this run exactly',
    }
    if run.is_main:
        warn = '' if fits else ' (even one epoch does not fit: running one)'
        print(f'time budget {run.raw.time_budget:g} min: {step_seconds * len(run.loader):.2f} s/epoch measured, '
              f'{epochs} epochs{warn}, ~{elapsed + estimate:.0f} s in all', file=sys.stderr, flush=True)


@torch.no_grad()
def _time_evaluation(run: _Run) -> float:
    """Seconds of one held-out evaluation: one batch timed after an untimed one (cuDNN autotuning), scaled."""
    x, y = next(iter(run.hold_loader))
    steps = None if run.natural else run.cfg.eval_steps
    run.model.eval()
    seconds = 0.0
    for _ in range(2):
        synchronize(run.device)
        t = time.perf_counter()
        with strict_float32():
            _batch_counts(run.model, x, y, run.cfg.eps, run.cfg.eps / 10, steps, amp=run.cfg.eval_amp)
        synchronize(run.device)
        seconds = time.perf_counter() - t
    return seconds * len(run.hold_loader)


def _time_checkpoint(run: _Run) -> float:
    """Seconds to write this run's checkpoint (to a probe file, removed at once)."""
    probe = run.out / 'last.pt.probe'
    t = time.perf_counter()
    save_checkpoint(_state(run), probe)
    seconds = time.perf_counter() - t
    probe.unlink()
    return seconds


def _evaluate(run: _Run, metrics: Dict[str, Any]) -> bool:
    """Evaluation on the held-out slice: PGD accuracy, or clean accuracy for natural training. True on a new best.

    float32 with TF32 off (like tools/verify.py: a bf16 attack is weaker and would flatter the checkpoint it picks)
    unless ``eval_amp`` (the CPU default with bf16 autocast: ~3x cheaper there; it only ranks epochs of one run, the
    summary says so, and every released number comes from tools/verify.py in float32)."""
    cfg = run.cfg
    t = time.perf_counter()
    with strict_float32():
        c, r, m = robust_accuracy(run.model, run.hold_loader, cfg.eps, cfg.eps / 10,
                                  None if run.natural else cfg.eval_steps, amp=cfg.eval_amp)
    counts = torch.stack([c, r if r is not None else torch.zeros_like(c), m])
    if run.world > 1:
        dist.all_reduce(counts)
    c, r, m = counts.tolist()
    run.costs['evaluation'] = time.perf_counter() - t
    metrics.update(holdout_clean_acc=round(100 * c / m, 2),
                   holdout_pgd_acc=None if run.natural else round(100 * r / m, 2),
                   holdout_seconds=round(run.costs['evaluation'], 3))
    accuracy = metrics['holdout_clean_acc' if run.natural else 'holdout_pgd_acc']
    if accuracy > run.best['accuracy']:
        run.best = {'accuracy': accuracy, 'epoch': metrics['epoch']}
        return True
    return False


def _state(run: _Run) -> Dict[str, Any]:
    return {
        'format': CKPT_FORMAT, 'epoch': run.epoch + 1, 'model': run.model.state_dict(),
        'optimizer': run.optimizer.state_dict(), 'rng': rng_state(), 'best': run.best, 'best_sha256': run.best_sha,
        'history': run.history, 'config': plain_config(run.cfg), 'budget': run.budget,
        'wall_clock_seconds': run.prior_seconds + time.time() - run.t_start,
    }


def _weights_metadata(run: _Run, epoch: int) -> Dict[str, str]:
    return {'architecture': architecture(run), 'epoch': str(epoch)}


def _checkpoint(run: _Run, metrics: Dict[str, Any], is_best: bool) -> None:
    """Checkpoint after an epoch: last.pt, best.safetensors on a new best, then the summary that names them."""
    metrics['best_epoch'] = run.best['epoch'] if run.best['epoch'] > 0 else None
    run.history.append(metrics)
    if run.is_main:
        print(json.dumps(metrics), flush=True)
        t = time.perf_counter()
        if is_best:
            run.best_sha = save_weights(run.model, run.out / 'best.safetensors', dtype=_weights_dtype(run),
                                        metadata=_weights_metadata(run, metrics['epoch']))
        save_checkpoint(_state(run), run.out / 'last.pt')
        run.costs['checkpoint'] = time.perf_counter() - t
        write_json(run.out / 'train_summary.json', train_summary(run, final_sha=None))
    if run.world > 1:
        dist.barrier()


def _finish(run: _Run) -> Dict[str, Any]:
    """final.safetensors and the complete summary."""
    summary: Dict[str, Any] = {}
    if run.is_main:
        epoch = run.history[-1]['epoch'] if run.history else 0
        final_sha = save_weights(run.model, run.out / 'final.safetensors', dtype=_weights_dtype(run),
                                 metadata=_weights_metadata(run, epoch))
        summary = train_summary(run, final_sha)
        write_json(run.out / 'train_summary.json', summary)
    if run.world > 1:
        dist.barrier()
    return summary


def _weights_dtype(run: _Run) -> Optional[torch.dtype]:
    return torch.float16 if run.cfg.fp16 else None
