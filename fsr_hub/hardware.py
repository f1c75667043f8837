"""The device a measurement ran on, named for reports, and device synchronisation for timing."""
import os
import platform

import torch

__all__ = ['hardware_name', 'synchronize']


def hardware_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' for a CUDA device; processor, cores and torch threads for the CPU."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)'


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (a no-op on the CPU), so wall-clock timings are honest."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
