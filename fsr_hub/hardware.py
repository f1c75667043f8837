"""The device a measurement ran on, named for reports; device synchronisation for timing; strict float32."""
import os
import platform
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

__all__ = ['resolve_device', 'hardware_name', 'synchronize', 'strict_float32']


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
    return f'cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)'


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
