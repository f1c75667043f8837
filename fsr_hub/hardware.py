"""The device a measurement ran on, named for reports; the CPU's bf16 instruction set and the precision it gets by
default; device synchronisation for timing; strict float32 and the memory formats it runs in."""
import os
import platform
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

__all__ = ['resolve_device', 'hardware_name', 'cpu_model', 'cpu_bf16_isa', 'fast_precision', 'synchronize',
           'strict_float32', 'BF16_ISAS', 'MEMORY_FORMATS']

#: CPU flags (``/proc/cpuinfo``) of bf16 arithmetic in hardware, the best first: AMX tiles (Intel Sapphire Rapids
#: and later), then AVX512-BF16 dot products (Intel Cooper Lake, AMD Zen 4 and later)
BF16_ISAS = ('amx_bf16', 'avx512_bf16')
CPUINFO = '/proc/cpuinfo'
#: the memory formats a model can run in, by the name reports give them
MEMORY_FORMATS = {'contiguous': torch.contiguous_format, 'channels_last': torch.channels_last}


def resolve_device(name: Optional[str] = None) -> torch.device:
    """``'cpu'``, ``'cuda'``, ``'cuda:1'``... as a torch.device (None: CUDA when available, else the CPU); a
    malformed name or a CUDA device this machine lacks is a ValueError that says so."""
    if name is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f'device {name!r}: {e}') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'device {name!r}: CUDA is not available on this machine (use cpu).')
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f'device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s).')
    return device


def hardware_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' for a CUDA device; processor, cores and torch threads for the CPU."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    isa = cpu_bf16_isa() or 'no bf16 instructions'
    return f'cpu ({cpu_model()}, {isa}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)'


def _cpuinfo() -> str:
    try:
        with open(CPUINFO) as f:
            return f.read()
    except OSError:  # not Linux: no flags known, fp32
        return ''


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    for line in _cpuinfo().splitlines():
        if line.startswith('model name'):
            return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_bf16_isa() -> Optional[str]:
    """The best bf16 instruction set of this CPU (one of :data:`BF16_ISAS`), or None."""
    flags = set()
    for line in _cpuinfo().splitlines():
        if line.startswith('flags'):
            flags.update(line.split(':', 1)[1].split())
    return next((isa for isa in BF16_ISAS if isa in flags), None)


def fast_precision(device: torch.device) -> bool:
    """Whether bf16 autocast and channels_last are the defaults on ``device``: on CUDA, and on a CPU with bf16 in
    hardware (:func:`cpu_bf16_isa`); float32 and the contiguous format elsewhere."""
    return device.type == 'cuda' or (device.type == 'cpu' and cpu_bf16_isa() is not None)


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (a no-op on the CPU), so wall-clock timings are honest."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _fp32_flags() -> Tuple[Any, Any]:
    b = torch.backends
    if hasattr(b.cuda.matmul, 'fp32_precision') and hasattr(b.cudnn, 'conv'):
        return b.cuda.matmul, b.cudnn.conv
    return None, None


@contextmanager
def strict_float32() -> Iterator[Dict[str, Any]]:
    """TF32 off for CUDA matmuls and cuDNN convolutions inside the block, the previous settings restored after.

    Uses the ``fp32_precision`` flags of torch >= 2.9 (mixing them with the legacy ``allow_tf32`` flags is an
    error there), the legacy flags on older torch. Yields what the report records.
    """
    matmul, conv = _fp32_flags()
    if matmul is not None:
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = conv.fp32_precision = 'ieee'
        try:
            yield {'dtype': 'float32', 'tf32': False, 'cuda_matmul_fp32_precision': matmul.fp32_precision,
                   'cudnn_conv_fp32_precision': conv.fp32_precision}
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    b = torch.backends
    saved = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = False
    try:
        yield {'dtype': 'float32', 'tf32': False, 'cuda_matmul_allow_tf32': False, 'cudnn_allow_tf32': False}
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = saved
