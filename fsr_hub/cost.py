"""Parameter, FLOP and latency cost of FSR versus the vanilla twin (the paper's Table 7), and of FSR added to any
timm CNN (:func:`fsr_cost`).

FLOPs come from fvcore's ``FlopCountAnalysis``, which counts one fused multiply-add as one flop. The paper's
Table 7 reports twice that (multiply and add counted separately); both conventions are reported.
fvcore has no counter for elementwise ops (add, mul, sigmoid, ...) and pooling: they are listed as uncounted.
"""
import json
import time
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

with warnings.catch_warnings():  # fvcore decorates with torch.jit.script, which warns that it is deprecated
    warnings.simplefilter('ignore', FutureWarning)
    from fvcore.nn import FlopCountAnalysis, parameter_count

from .hardware import hardware_name, synchronize
from .models import FSR_MODELS, VANILLA_TWINS, create
from .paper import table7

__all__ = ['count_cost', 'module_flops', 'measure_latency', 'cost_table', 'fsr_cost', 'format_markdown']

def _fvcore_flops(model: nn.Module, input_size: Sequence[int]) -> FlopCountAnalysis:
    # fvcore's analysis of one eval-mode forward of a single image, traced; the model's mode is restored
    was_training = model.training
    device = next(model.parameters()).device
    flops = FlopCountAnalysis(model.eval(), torch.zeros(1, *input_size, device=device))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    with warnings.catch_warnings():  # fvcore traces with torch.jit, which warns that it is deprecated
        warnings.simplefilter('ignore', FutureWarning)
        flops.total()
    model.train(was_training)
    return flops


def count_cost(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> Dict:
    """Parameters and fvcore FLOPs (multiply-adds) of one eval-mode forward of a single image.

    The input is created on the model's device; the model's train/eval mode is restored afterwards.
    """
    flops = _fvcore_flops(model, input_size)
    return {
        'params': int(parameter_count(model)['']),
        'gflops_fvcore': flops.total() / 1e9,
        'uncounted_ops': dict(sorted(flops.unsupported_ops().items())),
    }


def module_flops(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> Dict[str, int]:
    """fvcore FLOPs (multiply-adds) of one eval-mode forward of a single image per module name ('' = the model);
    a module the forward does not call counts 0."""
    return {name: int(v) for name, v in _fvcore_flops(model, input_size).by_module().items()}


@torch.no_grad()
def measure_latency(
        models: Sequence[nn.Module],
        batch_size: int = 32,
        iters: int = 5,
        warmup: int = 1,
        device: str = 'cpu',
        input_size: Sequence[int] = (3, 32, 32),
) -> List[float]:
    """Median eval forward time (ms) per model on ``batch_size`` inputs of ``input_size`` (C, H, W), the models
    interleaved each iteration so they share conditions."""
    dev = torch.device(device)
    models = [m.eval().to(dev) for m in models]
    x = torch.rand(batch_size, *input_size, device=dev)
    times: List[List[float]] = [[] for _ in models]
    for it in range(warmup + iters):
        for i, m in enumerate(models):
            synchronize(dev)
            t0 = time.perf_counter()
            m(x)
            synchronize(dev)
            if it >= warmup:
                times[i].append((time.perf_counter() - t0) * 1e3)
    return [sorted(t)[len(t) // 2] for t in times]


def cost_table(
        models: Optional[Sequence[str]] = None,
        latency: bool = False,
        device: str = 'cpu',
        batch_size: int = 32,
        iters: int = 5,
) -> List[Dict]:
    """One row per FSR architecture: vanilla twin vs FSR params, FLOPs in both conventions, optional latency."""
    rows = []
    for name in models or FSR_MODELS:
        if name not in VANILLA_TWINS:
            raise ValueError(f'Unknown FSR model {name!r}; choose from {sorted(VANILLA_TWINS)}.')
        vanilla_model = create(VANILLA_TWINS[name])
        fsr_model = create(name)
        row = {'model': name, 'vanilla': VANILLA_TWINS[name],
               **_compare(count_cost(vanilla_model), count_cost(fsr_model)), 'paper_table7': table7(name)}
        if latency:
            row['latency'] = _latency(vanilla_model, fsr_model, batch_size, iters, device)
        rows.append(row)
    return rows


def fsr_cost(
        name: str,
        model_args: Optional[Mapping[str, Any]] = None,
        input_size: Sequence[int] = (3, 32, 32),
        latency: bool = False,
        device: str = 'cpu',
        batch_size: int = 32,
        iters: int = 5,
) -> Dict:
    """Cost of FSR in any model :func:`fsr_hub.models.create` builds, e.g. ``fsr_cost('resnet50',
    {'num_classes': 10, 'fsr_positions': ['layer3', 'layer4']}, (3, 224, 224))``: params and FLOPs (both
    conventions) of ``create(name, **model_args)`` (after) and of the same model with no FSR position (before:
    the plain timm model, or an fsr_hub architecture's vanilla twin), each built fresh, counted on one image of
    ``input_size``; a row of :func:`format_markdown`."""
    model_args = dict(model_args or {})
    after_model = create(name, **model_args)
    positions = tuple(getattr(after_model, 'fsr_positions', ()))
    if not positions:
        raise ValueError(f'{name} with {model_args} has no FSR module: give fsr_positions (feature_info modules).')
    before_model = create(name, **{**model_args, 'fsr_positions': ()})
    row = {
        'model': name,
        'label': f"{name} + FSR after {', '.join(positions)}",
        'vanilla': name,
        'model_args': json.loads(json.dumps(model_args)),  # as JSON keeps them
        'input_size': [int(v) for v in input_size],
        **_compare(count_cost(before_model, input_size), count_cost(after_model, input_size)),
        'paper_table7': None,
    }
    if latency:
        row['latency'] = _latency(before_model, after_model, batch_size, iters, device, input_size)
    return row


def _compare(vanilla: Dict, fsr: Dict) -> Dict[str, Any]:
    # params and FLOPs (both conventions) without and with FSR, as a cost row holds them
    return {
        'params': vanilla['params'], 'params_fsr': fsr['params'],
        'gflops_fvcore': vanilla['gflops_fvcore'], 'gflops_fvcore_fsr': fsr['gflops_fvcore'],
        'gflops_paper_convention': 2 * vanilla['gflops_fvcore'],
        'gflops_paper_convention_fsr': 2 * fsr['gflops_fvcore'],
        'uncounted_ops_fsr': fsr['uncounted_ops'],
    }


def _latency(vanilla: nn.Module, fsr: nn.Module, batch_size: int, iters: int, device: str,
             input_size: Sequence[int] = (3, 32, 32)) -> Dict[str, Any]:
    ms_vanilla, ms_fsr = measure_latency([vanilla, fsr], batch_size, iters, device=device, input_size=input_size)
    return {
        'device': hardware_name(torch.device(device)),
        'batch_size': batch_size, 'iters': iters, 'threads': torch.get_num_threads(),
        'ms_vanilla': ms_vanilla, 'ms_fsr': ms_fsr, 'ratio': ms_fsr / ms_vanilla,
    }


def format_markdown(rows: Sequence[Dict]) -> str:
    """Markdown table of :func:`cost_table` / :func:`fsr_cost` rows, with the conventions spelled out."""
    lines = [
        '| model | params vanilla | params +FSR | GFLOPs fvcore (MAC) vanilla -> +FSR | '
        'GFLOPs 2x fvcore (paper convention) vanilla -> +FSR | paper Table 7 |',
        '| --- | ---: | ---: | --- | --- | --- |',
    ]
    for r in rows:
        p = r['paper_table7']
        paper = (f"{p['vanilla']['params_m']} M -> {p['fsr']['params_m']} M, "
                 f"{p['vanilla']['gflops']} -> {p['fsr']['gflops']} G"
                 if p else 'not in Table 7')
        lines.append(
            f"| {r.get('label', r['model'])} | {r['params']:,} | {r['params_fsr']:,} | "
            f"{r['gflops_fvcore']:.4f} -> {r['gflops_fvcore_fsr']:.4f} "
            f"(+{r['gflops_fvcore_fsr'] / r['gflops_fvcore'] - 1:.1%}) | "
            f"{r['gflops_paper_convention']:.4f} -> {r['gflops_paper_convention_fsr']:.4f} | {paper} |")
    lat = [r for r in rows if 'latency' in r]
    if lat:
        l0 = lat[0]['latency']
        lines += [
            '',
            f"Forward latency, eval mode, batch {l0['batch_size']}, median of {l0['iters']} runs, "
            f"device {l0['device']}, models interleaved:",
            '',
            '| model | vanilla ms | +FSR ms | ratio |',
            '| --- | ---: | ---: | ---: |',
        ]
        lines += [f"| {r.get('label', r['model'])} | {r['latency']['ms_vanilla']:.1f} | {r['latency']['ms_fsr']:.1f} | "
                  f"{r['latency']['ratio']:.3f} |" for r in lat]
    ops = sorted({op for r in rows for op in r['uncounted_ops_fsr']})
    lines += [
        '',
        'fvcore counts one multiply-add as one flop; the paper\'s Table 7 counts multiply and add separately (2x). '
        f"Ops fvcore does not count (left out of both columns): {', '.join(ops) or 'none'}.",
    ]
    sizes = sorted({'x'.join(map(str, r['input_size'])) for r in rows if 'input_size' in r})
    if sizes:
        lines[-1] += f" Counted on one image of {', '.join(sizes)} (C x H x W)."
    return '\n'.join(lines)
