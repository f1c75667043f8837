"""Adversarial training engine: the paper's recipe (Sec. 4.1) by default, atomic checkpoints with exact resume,
best-checkpoint selection on a held-out slice of the training set, DDP under ``torchrun``, and a benchmark.

Speed on a GPU: the uint8 dataset lives on the device and is augmented there (:class:`fsr_hub.data.DeviceLoader`),
forward/backward of both the attack and the update run under bf16 autocast, the model is channels_last, and the
inner loop never syncs with the host (metrics accumulate on the device and are read once per epoch).

Exact resume: at the start of every epoch the global torch generators (CPU and CUDA) are re-seeded from
(seed, rank, epoch), and the loader's shuffling / augmentation is a function of (seed, epoch). A checkpoint
written after epoch e (model, optimizer, scheduler, RNG states, history) therefore continues bit-exactly
(with deterministic kernels), whichever moment the previous process was killed at.
"""
import dataclasses
import json
import os
import pickle
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .attacks import pgd
from .data import DATASETS, DeviceLoader, load_dataset, split_holdout
from .hardware import hardware_name, synchronize
from .objectives import OBJECTIVES, AdversarialObjective, ObjectiveConfig
from .weights import save_weights

__all__ = [
    'TrainConfig', 'TrainResult', 'train', 'save_checkpoint', 'load_checkpoint', 'CheckpointError',
    'autocast', 'robust_accuracy', 'benchmark_train_step', 'benchmark_eval',
]

CKPT_FORMAT = 'fsr-hub/ckpt/v1'


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not belong to this run."""


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the paper's CIFAR-10 recipe (use :meth:`for_dataset`)."""
    model: str = 'fsr_resnet18'
    dataset: str = 'cifar10'
    data: str = 'data'
    out: str = 'runs/train'
    objective: str = 'at'
    fsr_loss: bool = True
    lambda_sep: float = 1.0
    lambda_rec: float = 1.0
    beta: float = 6.0
    eps: float = 8 / 255
    alpha: Optional[float] = None  # None: eps / 4 (CIFAR), eps / 8 (SVHN)
    steps: int = 10
    random_start: bool = True
    epochs: int = 100
    batch_size: int = 128  # global batch; split evenly over DDP ranks
    lr: Optional[float] = None  # None: 0.1 (CIFAR), 0.01 (SVHN)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: Tuple[int, ...] = (75, 90)
    lr_gamma: float = 0.1
    augment: Optional[bool] = None  # None: the dataset's default (CIFAR yes, SVHN no)
    holdout: int = 1000  # last N training images, never trained on; 0 disables best-checkpoint selection
    eval_every: int = 1
    eval_steps: int = 20
    eval_batch_size: int = 500
    max_train_images: Optional[int] = None  # first N training images only (smoke runs)
    seed: int = 0
    device: Optional[str] = None  # None: cuda if available
    amp: Optional[bool] = None  # bf16 autocast; None: on for CUDA
    channels_last: Optional[bool] = None  # None: on for CUDA
    compile: bool = False
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

    def resolved(self) -> 'TrainConfig':
        """A copy with every dataset- and device-dependent default (None) filled in, after validation."""
        if self.dataset not in DATASETS:
            raise ValueError(f'Unknown dataset {self.dataset!r}; expected one of {sorted(DATASETS)}.')
        if self.objective not in OBJECTIVES:
            raise ValueError(f'Unknown objective {self.objective!r}; expected one of {OBJECTIVES}.')
        for name in ('epochs', 'batch_size', 'eval_every', 'eval_batch_size'):
            if getattr(self, name) <= 0:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}.')
        if self.holdout < 0 or self.steps < 0 or self.eps < 0:
            raise ValueError('holdout, steps and eps must be >= 0.')
        svhn = self.dataset == 'svhn'
        device = self.device or ('cuda' if torch.cuda.is_available() else 'cpu')
        cuda = torch.device(device).type == 'cuda'
        return dataclasses.replace(
            self,
            alpha=self.alpha if self.alpha is not None else self.eps / (8 if svhn else 4),
            lr=self.lr if self.lr is not None else (0.01 if svhn else 0.1),
            augment=self.augment if self.augment is not None else DATASETS[self.dataset][1],
            device=device,
            amp=self.amp if self.amp is not None else cuda,
            channels_last=self.channels_last if self.channels_last is not None else cuda,
            milestones=tuple(int(m) for m in self.milestones),
        )

    def objective_config(self) -> ObjectiveConfig:
        return ObjectiveConfig(
            name=self.objective, beta=self.beta, fsr=self.fsr_loss, lambda_sep=self.lambda_sep,
            lambda_rec=self.lambda_rec, eps=self.eps, alpha=self.alpha, steps=self.steps,
            random_start=self.random_start)


@dataclass
class TrainResult:
    model: nn.Module
    history: List[Dict[str, Any]]
    summary: Dict[str, Any] = field(default_factory=dict)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` (CPU included) or a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def _seed_epoch(seed: int, rank: int, epoch: int) -> None:
    s = (seed * 1_000_003 + rank * 10_007 + epoch) % (2 ** 63)
    torch.manual_seed(s)  # seeds CPU and every CUDA device


def _rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {'cpu': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_checkpoint(state: Dict[str, Any], path: os.PathLike) -> None:
    """torch.save to ``path.tmp``, fsync, then atomic ``os.replace``: a kill at any moment leaves either the old
    or the new file, never a partial one."""
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
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        raise CheckpointError(f'Checkpoint {path} is unreadable ({type(e).__name__}: {e}).') from e
    if not isinstance(state, dict) or state.get('format') != CKPT_FORMAT:
        raise CheckpointError(f'{path} is not an fsr-hub training checkpoint.')
    return state


@torch.no_grad()
def robust_accuracy(
        model: nn.Module, loader: DeviceLoader, eps: float, alpha: float, steps: int, amp: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On-device (clean correct, PGD correct, n) over ``loader`` with PGD-``steps`` (no random start), eval mode."""
    device = loader.device
    model.eval()
    clean = torch.zeros((), device=device)
    robust = torch.zeros((), device=device)
    n = torch.zeros((), device=device)
    for x, y in loader:
        with autocast(device, amp):
            clean += (model(x).argmax(1) == y).sum()
            x_adv = pgd(model, x, y, eps, alpha, steps)
            robust += (model(x_adv).argmax(1) == y).sum()
        n += y.numel()
    return clean, robust, n


def _dist_info() -> Tuple[int, int, int]:
    world = int(os.environ.get('WORLD_SIZE', '1'))
    return int(os.environ.get('RANK', '0')), world, int(os.environ.get('LOCAL_RANK', '0'))


def _build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    import timm
    from . import models  # registers the fsr_hub architectures

    if not timm.models.is_model(cfg.model):
        raise ValueError(f'Unknown model {cfg.model!r}; fsr_hub models: {", ".join(models.ALL_MODELS)}.')
    return timm.create_model(cfg.model, num_classes=num_classes)


def _load_data(cfg: TrainConfig):
    images, labels = load_dataset(cfg.dataset, cfg.data, train=True)
    if cfg.max_train_images is not None:
        images, labels = images[:cfg.max_train_images + cfg.holdout], labels[:cfg.max_train_images + cfg.holdout]
    return split_holdout(images, labels, cfg.holdout)


def train(
        config: TrainConfig,
        model: Optional[nn.Module] = None,
        data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        step_callback: Optional[Callable[[int, int], None]] = None,
        command: Optional[str] = None,
) -> TrainResult:
    """Run (or resume) adversarial training; returns the trained (unwrapped) model and per-epoch metrics.

    ``model`` overrides ``config.model`` (tests, custom architectures); ``data`` = (uint8 NHWC images, labels)
    overrides reading ``config.data`` (the held-out slice is still split off its end). ``step_callback(epoch,
    step)`` runs after every optimizer step. Rank 0 writes ``last.pt`` / ``best.pt`` every epoch and, at the
    end, ``final.safetensors``, ``best.safetensors`` and ``train_summary.json`` in ``config.out``.
    """
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
    is_main = rank == 0
    out_dir = Path(cfg.out)
    t_start = time.time()

    if data is None:
        (train_x, train_y), (hold_x, hold_y) = _load_data(cfg)
    else:
        (train_x, train_y), (hold_x, hold_y) = split_holdout(data[0], data[1], cfg.holdout)
    num_classes = DATASETS[cfg.dataset][0]
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    if model is None:
        model = _build_model(cfg, num_classes)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    loader = DeviceLoader(
        train_x, train_y, cfg.batch_size // world, device=device, shuffle=True, augment=cfg.augment,
        drop_last=True, seed=cfg.seed, rank=rank, world_size=world, channels_last=cfg.channels_last)
    if len(loader) == 0:
        raise ValueError(f'{len(train_y)} training images give no full batch of {cfg.batch_size}.')
    hold_loader = DeviceLoader(
        hold_x, hold_y, cfg.eval_batch_size, device=device, rank=rank, world_size=world,
        channels_last=cfg.channels_last) if cfg.holdout else None

    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), cfg.lr_gamma)

    start_epoch, history, prior_seconds = 0, [], 0.0
    best = {'accuracy': -1.0, 'epoch': -1}
    last_path, best_path = out_dir / 'last.pt', out_dir / 'best.pt'
    if cfg.resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)  # on the CPU: RNG states must stay CPU tensors; weights are copied over
        if ckpt['config'].get('model') != cfg.model or ckpt['config'].get('objective') != cfg.objective:
            raise CheckpointError(
                f'{last_path} was written by a {ckpt["config"].get("model")}/{ckpt["config"].get("objective")} run, '
                f'not {cfg.model}/{cfg.objective}; use another --out or drop --resume.')
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scheduler.load_state_dict(ckpt['scheduler'])
        _set_rng_state(ckpt['rng'])
        start_epoch, history, best = ckpt['epoch'], list(ckpt['history']), dict(ckpt['best'])
        prior_seconds = float(ckpt.get('wall_clock_seconds', 0.0))
        if is_main and cfg.progress:
            print(f'resumed from {last_path} at epoch {start_epoch}', file=sys.stderr)

    objective = AdversarialObjective(model, cfg.objective_config())
    step_module: nn.Module = objective
    if world > 1:
        # without the FSR losses the auxiliary heads get no gradient, which DDP must be told about
        step_module = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == 'cuda' else None,
            find_unused_parameters=not cfg.fsr_loss)
    attack_model: nn.Module = model
    if cfg.compile:
        step_module = torch.compile(step_module)
        attack_model = torch.compile(model)

    for epoch in range(start_epoch, cfg.epochs):
        _seed_epoch(cfg.seed, rank, epoch)
        loader.set_epoch(epoch)
        model.train()
        stats = torch.zeros(4, device=device)
        lr = optimizer.param_groups[0]['lr']
        synchronize(device)
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f'epoch {epoch + 1}/{cfg.epochs}', disable=not (is_main and cfg.progress),
                   leave=False, file=sys.stderr)
        for step, (x, y) in enumerate(bar):
            with autocast(device, cfg.amp):
                x_adv = objective.perturb(x, y, attack_model=attack_model)
                loss, s = step_module(x, x_adv, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stats += s
            if step_callback is not None:
                step_callback(epoch, step)
        scheduler.step()
        if world > 1:
            dist.all_reduce(stats)
        synchronize(device)
        train_seconds = time.perf_counter() - t0

        metrics: Dict[str, Any] = {'epoch': epoch + 1, 'lr': lr}
        loss_sum, n, adv_c, nat_c = stats.tolist()
        metrics.update(train_loss=round(loss_sum / n, 5), train_adv_acc=round(100 * adv_c / n, 2),
                       train_nat_acc=round(100 * nat_c / n, 2) if nat_c >= 0 else None)
        metrics.update(epoch_seconds=round(train_seconds, 3), images_per_second=round(n / train_seconds, 1))
        is_best = False
        if hold_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            te = time.perf_counter()
            # float32 like tools/verify.py: a bf16 attack is weaker and would flatter the checkpoint it picks
            c, r, m = robust_accuracy(model, hold_loader, cfg.eps, cfg.eps / 10, cfg.eval_steps, amp=False)
            counts = torch.stack([c, r, m])
            if world > 1:
                dist.all_reduce(counts)
            c, r, m = counts.tolist()
            metrics.update(holdout_clean_acc=round(100 * c / m, 2), holdout_pgd_acc=round(100 * r / m, 2),
                           holdout_seconds=round(time.perf_counter() - te, 3))
            if metrics['holdout_pgd_acc'] > best['accuracy']:
                best = {'accuracy': metrics['holdout_pgd_acc'], 'epoch': epoch + 1}
                is_best = True
        metrics['best_epoch'] = best['epoch'] if best['epoch'] > 0 else None
        history.append(metrics)
        if is_main:
            print(json.dumps(metrics), flush=True)
            state = {
                'format': CKPT_FORMAT, 'epoch': epoch + 1, 'model': model.state_dict(),
                'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(), 'rng': _rng_state(),
                'best': best, 'history': history, 'config': _plain_config(cfg),
                'wall_clock_seconds': prior_seconds + time.time() - t_start,
            }
            save_checkpoint(state, last_path)
            if is_best:
                save_checkpoint(state, best_path)
        if world > 1:
            dist.barrier()

    summary: Dict[str, Any] = {}
    if is_main:
        summary = _write_outputs(cfg, model, history, best, best_path, out_dir, prior_seconds + time.time() - t_start,
                                 device, command, world)
    if world > 1:
        dist.barrier()
    return TrainResult(model=model, history=history, summary=summary)


def _plain_config(cfg: TrainConfig) -> Dict[str, Any]:
    d = asdict(cfg)
    d['milestones'] = list(d['milestones'])
    return d


def _write_outputs(cfg, model, history, best, best_path, out_dir, wall_clock_seconds, device, command,
                   world) -> Dict[str, Any]:
    dtype = torch.float16 if cfg.fp16 else None
    arch = cfg.model if not hasattr(model, 'pretrained_cfg') else model.pretrained_cfg.get('architecture', cfg.model)
    final_sha = save_weights(model, out_dir / 'final.safetensors', dtype=dtype,
                             metadata={'architecture': str(arch), 'epoch': str(history[-1]['epoch'] if history else 0)})
    best_sha = None
    if best['epoch'] > 0 and best_path.is_file():
        best_state = load_checkpoint(best_path)['model']
        best_sha = save_weights(best_state, out_dir / 'best.safetensors', dtype=dtype,
                                metadata={'architecture': str(arch), 'epoch': str(best['epoch'])})
    summary = {
        'schema': 'fsr-hub/train/v1',
        'architecture': str(arch),
        'config': _plain_config(cfg),
        'history': history,
        'best': {**best, 'selected_by': f'PGD-{cfg.eval_steps} (step eps/10) accuracy on the last {cfg.holdout} '
                                        f'training images (held out, not trained on)'} if best['epoch'] > 0 else None,
        'weights': {'final': {'file': 'final.safetensors', 'sha256': final_sha},
                    'best': {'file': 'best.safetensors', 'sha256': best_sha} if best_sha else None,
                    'dtype': 'float16' if cfg.fp16 else 'float32'},
        'epoch_seconds': [h['epoch_seconds'] for h in history],  # every epoch, across resumes
        'wall_clock_seconds': round(wall_clock_seconds, 3),  # summed over resumed processes
        'hardware': {'device': hardware_name(device), 'world_size': world, 'torch': torch.__version__},
        'command': command if command is not None else ' '.join(sys.argv),
    }
    tmp = out_dir / 'train_summary.json.tmp'
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out_dir / 'train_summary.json')
    return summary


# ---------------------------------------------------------------------------------------------------------------
# benchmark


def _timed(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> float:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (device-synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return time.perf_counter() - t0


def benchmark_train_step(
        model: nn.Module, objective: str = 'at', batch_size: int = 128, batches: int = 10, warmup: int = 2,
        device: str = 'cpu', amp: bool = False, channels_last: bool = False, compile: bool = False,
        fsr_loss: bool = True, steps: int = 10,
) -> Dict[str, float]:
    """Images/s and seconds per 50,000-image epoch of the PGD-``steps`` training step on random data."""
    dev = torch.device(device)
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    obj = AdversarialObjective(model, ObjectiveConfig(name=objective, fsr=fsr_loss, steps=steps))
    step_module: nn.Module = torch.compile(obj) if compile else obj
    attack_model: nn.Module = torch.compile(model) if compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(batch_size, 3, 32, 32, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch_size,), device=dev)

    def step():
        model.train()
        with autocast(dev, amp):
            x_adv = obj.perturb(x, y, attack_model=attack_model)
            loss, _ = step_module(x, x_adv, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ips = batches * batch_size / _timed(step, warmup, batches, dev)
    return {'images_per_second': ips, 'seconds_per_epoch': 50000 / ips}


@torch.no_grad()
def benchmark_eval(
        model: nn.Module, batch_size: int = 500, batches: int = 5, warmup: int = 1, device: str = 'cpu',
        amp: bool = False, channels_last: bool = False, steps: int = 20,
) -> Dict[str, float]:
    """Images/s and seconds per 10,000-image pass of PGD-``steps`` evaluation (eval mode) on random data."""
    dev = torch.device(device)
    model = model.to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.rand(batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)

    def run():
        with autocast(dev, amp):
            x_adv = pgd(model, x, y, 8 / 255, 0.8 / 255, steps)
            model(x_adv).argmax(1)

    ips = batches * batch_size / _timed(run, warmup, batches, dev)
    return {'images_per_second': ips, 'seconds_per_10k': 10000 / ips}
