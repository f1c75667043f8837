"""Shared fixtures: a tiny FSR network, synthetic datasets on disk, and a random-weight release folder (``rel``)."""
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from fsr_hub.models.base import FSRNet, Stage
from jobs.device.synthetic_unpack import write_batch
from release_builders import build_release


class TinyFSRNet(FSRNet):
    """A two-stage, 8/16-channel CNN for 32x32 inputs (FSR after ``s2`` unless ``fsr_positions=()``)."""

    def __init__(self, num_classes: int = 10, fsr_positions=('s2',)):
        stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        s1 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        s2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        super().__init__(stem=stem, stages=[Stage('s1', s1, 8, reduction=2), Stage('s2', s2, 16, reduction=4)],
                         num_classes=num_classes, fsr_positions=fsr_positions, fsr_hidden=8)


def tiny_fsr_net(**kwargs) -> TinyFSRNet:
    torch.manual_seed(0)
    return TinyFSRNet(**kwargs)


def write_cifar_batches(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """Tiny ``cifar-10-batches-py`` folder in the original pickle format (n_train split over 5 batches)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / 'cifar-10-batches-py'
    folder.mkdir(parents=True, exist_ok=True)
    names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
    sizes = [n_train // 5] * 5 + [n_test]
    for name, n in zip(names, sizes):
        labels = [int(v) for v in rng.integers(0, 10, n)]
        write_batch(str(folder / name), name, labels, rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    [f'{i}.png' for i in range(n)])
    return Path(root)


def separable_data(n: int = 256, seed: int = 0):
    """uint8 NHWC images whose class is the colour (learnable in a few steps) and int64 labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    palette = torch.randint(0, 256, (10, 3), generator=g)
    noise = torch.randint(-30, 31, (n, 32, 32, 3), generator=g)
    x = (palette[y][:, None, None, :] + noise).clamp(0, 255).to(torch.uint8)
    return x, y


@pytest.fixture
def cifar_root(tmp_path):
    return write_cifar_batches(tmp_path / 'data')


@pytest.fixture(scope='module')
def _rel_template(tmp_path_factory):
    return build_release(tmp_path_factory.mktemp('template'))


@pytest.fixture
def rel(_rel_template, tmp_path):
    """A fresh copy of one random-weight release folder (tests may break it; the template is never touched)."""
    folder = tmp_path / 'model_cards' / _rel_template.folder.name
    shutil.copytree(_rel_template.folder, folder)
    return dataclasses.replace(_rel_template, folder=folder, model=None)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where no CUDA device exists (they run on the GPU machine: ``-m cuda``)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
