"""Throughput of the training step (the trainer's own :class:`fsr_hub.step.TrainStep`, in any step mode) and
of PGD-20 evaluation, on random data; the float32 evaluation's memory formats side by side."""
import time
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn

from .attacks import pgd
from .hardware import MEMORY_FORMATS, synchronize
from .objectives import AdversarialObjective, ObjectiveConfig
from .step import TrainStep, autocast, build_optimizer

__all__ = ['benchmark_train_step', 'benchmark_eval', 'compare_eval_formats']

EPOCH_IMAGES = 50_000  # one CIFAR-10 training epoch


def _timed(fn: Callable[[int], Any], repeats: int, device: torch.device) -> float:
    """Wall-clock seconds of ``fn(0) .. fn(repeats - 1)``, device-synchronised at both ends."""
    synchronize(device)
    t0 = time.perf_counter()
    for i in range(repeats):
        fn(i)
    synchronize(device)
    return time.perf_counter() - t0


def benchmark_train_step(
        model: nn.Module, objective: str = 'at', batch_size: int = 128, batches: int = 10,
        warmup: Optional[int] = None, device: str = 'cpu', amp: bool = False, channels_last: bool = False,
        step: str = 'eager', fsr_loss: bool = True, steps: int = 10, max_seconds: Optional[float] = None,
        compile_backend: str = 'inductor',
) -> Dict[str, Any]:
    """Images/s and seconds per 50,000-image epoch of the PGD-``steps`` training step in step mode ``step``.

    ``warmup`` untimed steps run first (default: the step's one-time set-up calls plus one); ``includes_setup``
    in the result says when fewer were asked for, so that the timing includes compilation or capture.
    ``max_seconds`` caps the whole measurement, warm-up included, by timing fewer than ``batches`` steps (at
    least one). Four random batches are used in turn.
    """
    dev = torch.device(device)
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    obj = AdversarialObjective(model, ObjectiveConfig(name=objective, fsr=fsr_loss, steps=steps))
    opt = build_optimizer(model, 0.01, 0.9, 5e-4, step, dev)
    train_step = TrainStep(obj, opt, mode=step, amp=amp, compile_backend=compile_backend)
    warmup = train_step.setup_calls + 1 if warmup is None else warmup
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xs = [torch.rand(batch_size, 3, 32, 32, generator=g).to(dev).contiguous(memory_format=fmt) for _ in range(4)]
    ys = [torch.randint(0, 10, (batch_size,), generator=g).to(dev) for _ in range(4)]

    def run(i: int) -> None:
        train_step(xs[i % 4], ys[i % 4])

    warmup_seconds = _timed(run, warmup, dev)
    n = batches
    if max_seconds is not None:  # one synchronised step tells how many more fit
        probe = _timed(lambda i: run(warmup), 1, dev)
        n = max(1, min(batches, int((max_seconds - warmup_seconds - probe) / max(probe, 1e-9))))
    elapsed = _timed(lambda i: run(warmup + i), n, dev)
    if train_step.fallback is not None:  # the step ran eagerly: its timing is not the asked path's
        raise RuntimeError(f'the {step} step fell back to eager: {train_step.fallback}')
    ips = n * batch_size / elapsed
    return {'images_per_second': ips, 'seconds_per_epoch': EPOCH_IMAGES / ips, 'warmup_steps': warmup,
            'warmup_seconds': warmup_seconds, 'timed_steps': n, 'includes_setup': warmup < train_step.setup_calls}


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

    def run(i: int) -> None:
        with autocast(dev, amp):
            x_adv = pgd(model, x, y, 8 / 255, 0.8 / 255, steps)
            model(x_adv).argmax(1)

    _timed(run, warmup, dev)
    ips = batches * batch_size / _timed(run, batches, dev)
    return {'images_per_second': ips, 'seconds_per_10k': 10000 / ips}


def compare_eval_formats(model: nn.Module, batch_size: int = 100, rounds: int = 3, repeats: int = 3,
                         device: str = 'cpu') -> Dict[str, Any]:
    """Float32 seconds per image of the two costs an evaluation's attacks are made of, in each memory format of
    :data:`~fsr_hub.hardware.MEMORY_FORMATS`: a gradient evaluation (forward + input-gradient backward: PGD, APGD,
    FAB) and a forward alone (Square's queries). The formats alternate in ``rounds`` rounds of ``repeats`` calls
    each (after untimed calls in each format), so that drifting machine speed hits both alike; the median round is
    kept. Also the largest logit difference between the formats on the same images."""
    if rounds < 1 or repeats < 1 or batch_size < 1:
        raise ValueError(f'rounds, repeats and batch_size must be positive, got {rounds}, {repeats}, {batch_size}.')
    dev = torch.device(device)
    model = model.to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, 32, 32, generator=gen).to(dev)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(dev)

    def grad(_: int) -> None:
        xr = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xr), y)
        torch.autograd.grad(loss, xr)

    def forward(_: int) -> None:
        with torch.no_grad():
            model(x)

    times: Dict[str, Dict[str, list]] = {f: {'gradient': [], 'forward': []} for f in MEMORY_FORMATS}
    logits = {}
    try:
        for name, fmt in MEMORY_FORMATS.items():  # untimed: the first calls in a format set up its kernels
            model.to(memory_format=fmt)
            grad(0)
            with torch.no_grad():
                logits[name] = model(x)
        for _ in range(rounds):
            for name, fmt in MEMORY_FORMATS.items():
                model.to(memory_format=fmt)
                times[name]['gradient'].append(_timed(grad, repeats, dev) / (repeats * batch_size))
                times[name]['forward'].append(_timed(forward, repeats, dev) / (repeats * batch_size))
    finally:
        model.to(memory_format=torch.contiguous_format)
    out: Dict[str, Any] = {f: {k: sorted(v)[len(v) // 2] for k, v in t.items()} for f, t in times.items()}
    out['speedup'] = {k: out['contiguous'][k] / out['channels_last'][k] for k in ('gradient', 'forward')}
    out['max_logit_difference'] = float((logits['contiguous'] - logits['channels_last']).abs().max())
    return out
