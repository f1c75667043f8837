"""The configuration of a training run: :class:`TrainConfig`, every knob with the paper's CIFAR-10 recipe as
default, validated and resolved (objective-, dataset-, device- and epoch-dependent defaults filled in) before a
run starts; :func:`with_epochs` re-resolves it for another epoch count (a time budget fixing the count).
"""
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from .data import DATASETS
from .hardware import fast_precision, resolve_device
from .objectives import ADML_BASES, OBJECTIVES, ObjectiveConfig, adml_split
from .paper import ADML_BETA, ADML_EPOCHS, ADML_LR
from .schedule import (
    AT_MILESTONES, CYCLIC_LR_MAX, NATURAL_MILESTONES, PER_ITERATION, SCHEDULES, default_eval_every, lr_milestones,
    parse_lr_plan,
)
from .step import STEP_MODES, default_step_mode
from .train_attacks import SINGLE_STEP, check_attack, default_alpha

__all__ = ['TrainConfig', 'with_epochs', 'dist_info']


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
    #: per-iteration schedules: 'EPOCHS@STEP,...', the schedule's epoch count from each global step on (a time-budget
    #: run's recorded plan and re-plans, replayed: fsr_hub.schedule.parse_lr_plan); None: ``epochs`` throughout
    lr_plan: Optional[str] = None
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
    #: the epoch-dependent fields (milestones, eval_every) that resolution filled in, which
    #: :func:`with_epochs` fills in again for another count; internal: no flag, not in summaries
    defaulted: Tuple[str, ...] = field(default=(), repr=False, compare=False, metadata={'internal': True})

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
        if self.lr_plan is not None:
            self._check_lr_plan()
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
        world = dist_info()[1]
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
        defaults = {'milestones': () if per_iteration else lr_milestones(self.epochs, fractions),
                    'eval_every': default_eval_every(self.epochs)}
        # a field stays "filled in" while it holds the default of this count; a value set in its place is the user's
        filled = tuple(n for n, v in defaults.items() if getattr(self, n) is None
                       or (n in self.defaulted and _same(getattr(self, n), v)))
        return dataclasses.replace(
            self,
            defaulted=filled,
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
                        if self.milestones is not None else defaults['milestones']),
            eval_every=self.eval_every or defaults['eval_every'],
        )

    def _check_lr_plan(self) -> None:
        if self.schedule not in PER_ITERATION:
            raise ValueError(f'lr_plan replays a per-iteration schedule ({", ".join(PER_ITERATION)}), not '
                             f'--schedule {self.schedule}.')
        if self.time_budget is not None:
            raise ValueError('lr_plan replays a recorded schedule: give it with --epochs, not --time-budget.')
        last = parse_lr_plan(self.lr_plan)[-1][1]
        if last != self.epochs:
            raise ValueError(f'the lr plan {self.lr_plan!r} ends with {last} epochs but --epochs is {self.epochs}.')

    def _check_adml(self) -> None:
        """ValueError for ADML settings without ADML, or a per-process batch ADML cannot split in halves."""
        if self.objective != 'adml':
            if self.adml_base is not None:
                raise ValueError(f'--adml-base {self.adml_base} is for --objective adml, not {self.objective}.')
            return
        if self.adml_base is not None and self.adml_base not in ADML_BASES:
            raise ValueError(f'Unknown ADML base {self.adml_base!r}; expected one of {", ".join(ADML_BASES)}.')
        if self.batch_size > 0:
            adml_split(self.batch_size // dist_info()[1])

    def _default_lr(self, svhn: bool) -> float:
        """The lr (a peak for the per-iteration schedules) when none is given: ADML fine-tuning 1e-3, cyclic 0.2,
        otherwise 0.1 (SVHN 0.01)."""
        if self.objective == 'adml' or self.schedule == 'adml':
            return ADML_LR
        if self.schedule == 'cyclic':
            return CYCLIC_LR_MAX
        return 0.01 if svhn else 0.1

    def objective_config(self) -> ObjectiveConfig:
        """The training objective's settings (:class:`fsr_hub.objectives.ObjectiveConfig`) of this config."""
        return ObjectiveConfig(
            name=self.objective, beta=self.beta, fsr=self.fsr_loss, lambda_sep=self.lambda_sep,
            lambda_rec=self.lambda_rec, eps=self.eps, alpha=self.alpha, steps=self.steps,
            random_start=self.random_start, attack=self.attack, adml_base=self.adml_base or 'at')


def _same(value: Any, default: Any) -> bool:
    return tuple(value) == tuple(default) if isinstance(default, tuple) else value == default


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


def with_epochs(raw: TrainConfig, epochs: int) -> TrainConfig:
    """``raw`` resolved for another epoch count: the milestones and evaluation interval that resolution filled
    in (e.g. through ``for_dataset``) follow the new count; those given are kept, whatever their value."""
    refill = {name: None for name in raw.defaulted}
    return dataclasses.replace(raw, epochs=epochs, **refill).resolved()


def dist_info() -> Tuple[int, int, int]:
    """(rank, world size, local rank) of this process under ``torchrun``; (0, 1, 0) in a single process."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    return int(os.environ.get('RANK', '0')), world, int(os.environ.get('LOCAL_RANK', '0'))
