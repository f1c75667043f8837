"""The small CIFAR-10 test sample shipped with the package (``fsr_hub/assets/cifar10_test_sample.png``).

The file is one lossless PNG mosaic of 32x32 tiles (row-major, ``cols`` tiles per row) whose ``fsr_hub``
text chunk holds, as JSON, the labels and the original CIFAR-10 test-set indices of the tiles. Images are
ordered round-robin over the classes (the k-th image of every class before any (k+1)-th one), so the first
``n`` images are class-balanced whenever ``n`` is a multiple of 10. ``tools/make_sample.py`` writes it.
"""
import json
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from .data import DatasetError, load_cifar10

__all__ = ['SAMPLE_PATH', 'SampleError', 'load_sample', 'read_sample', 'write_sample', 'build_sample_from_cifar']

SAMPLE_PATH = Path(__file__).parent / 'assets' / 'cifar10_test_sample.png'
_KEY = 'fsr_hub'
_TILE = 32


class SampleError(RuntimeError):
    """The sample file is missing or malformed, or the source CIFAR-10 folder is."""


def write_sample(path: Union[str, os.PathLike], images: np.ndarray, labels: Sequence[int],
                 indices: Sequence[int], cols: int = 20, source: str = '') -> None:
    """Write uint8 images (N, 32, 32, 3) as a PNG mosaic with labels and test indices in a text chunk."""
    n = len(images)
    if images.shape[1:] != (_TILE, _TILE, 3) or images.dtype != np.uint8:
        raise SampleError(f'images must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}')
    rows = -(-n // cols)
    mosaic = np.zeros((rows * cols, _TILE, _TILE, 3), np.uint8)
    mosaic[:n] = images
    mosaic = mosaic.reshape(rows, cols, _TILE, _TILE, 3).transpose(0, 2, 1, 3, 4).reshape(rows * _TILE, cols * _TILE, 3)
    meta = dict(n=n, cols=cols, labels=[int(v) for v in labels], indices=[int(v) for v in indices], source=source)
    info = PngImagePlugin.PngInfo()
    info.add_text(_KEY, json.dumps(meta, separators=(',', ':')))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mosaic).save(path, format='PNG', pnginfo=info, optimize=True)


def read_sample(path: Union[str, os.PathLike] = SAMPLE_PATH) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """Read a sample file: uint8 images (N, 32, 32, 3), int64 labels (N,), and its metadata dict."""
    path = Path(path)
    if not path.is_file():
        raise SampleError(f'CIFAR-10 sample file not found: {path} (rebuild it with tools/make_sample.py).')
    try:
        with Image.open(path) as im:
            meta = json.loads(im.text[_KEY])
            mosaic = np.asarray(im.convert('RGB'))
        n, cols = int(meta['n']), int(meta['cols'])
        labels = np.asarray(meta['labels'], dtype=np.int64)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise SampleError(f'{path} is not a valid fsr_hub sample file ({type(e).__name__}: {e}).') from e
    rows = mosaic.shape[0] // _TILE
    if mosaic.shape[:2] != (rows * _TILE, cols * _TILE) or rows * cols < n or len(labels) != n:
        raise SampleError(f'{path}: mosaic of shape {mosaic.shape} does not hold {n} labelled 32x32 tiles.')
    tiles = mosaic.reshape(rows, _TILE, cols, _TILE, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, _TILE, _TILE, 3)
    return tiles[:n], labels, meta


def load_sample(n: Optional[int] = None,
                path: Union[str, os.PathLike] = SAMPLE_PATH) -> Tuple[torch.Tensor, torch.Tensor]:
    """First ``n`` (default all) sample images as float [0, 1] (N, 3, 32, 32) and their int64 labels."""
    images, labels, _ = read_sample(path)
    if n is not None:
        if not 1 <= n <= len(images):
            raise SampleError(f'n={n} is out of range: the sample at {path} holds {len(images)} images.')
        images, labels = images[:n], labels[:n]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return x, torch.from_numpy(labels)


def build_sample_from_cifar(cifar_dir: Union[str, os.PathLike], per_class: int = 20
                            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``per_class`` test images of every class from a ``cifar-10-batches-py`` folder, round-robin
    ordered; returns (uint8 images (N, 32, 32, 3), labels, original test-set indices)."""
    try:
        images, labels = load_cifar10(cifar_dir, train=False)
    except DatasetError as e:
        raise SampleError(str(e)) from e
    data, y = images.numpy(), labels.numpy()
    per = [np.nonzero(y == c)[0][:per_class] for c in range(10)]
    if any(len(p) < per_class for p in per):
        raise SampleError(f'The CIFAR-10 test set in {cifar_dir} has fewer than {per_class} images of some class.')
    order = np.stack(per, axis=1).reshape(-1)  # round-robin: k-th image of each class in turn
    return data[order], y[order], order
