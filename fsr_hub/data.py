"""Datasets for adversarial training and evaluation: CIFAR-10 (python batches) and SVHN (torchvision ``.mat``).

Nothing is ever downloaded. Images are returned as uint8 tensors of shape (N, 32, 32, 3) (NHWC) and labels
as int64; :func:`images_to_float` turns them into the models' float [0, 1] NCHW input. :class:`DeviceLoader`
keeps the whole uint8 dataset on the training device and does the paper's augmentation there (zero-pad 4,
random 32x32 crop, horizontal flip for CIFAR; none for SVHN), yielding float [0, 1] batches in NCHW
(channels_last memory if asked).
"""
import importlib.util
import io
import os
import pickle
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    'DatasetError', 'DATASETS', 'INPUT_SIZE', 'load_cifar10', 'load_svhn', 'load_dataset', 'split_holdout',
    'DeviceLoader', 'images_to_float',
]

PathLike = Union[str, os.PathLike]

#: name -> (num_classes, train-time augmentation)
DATASETS = {'cifar10': (10, True), 'svhn': (10, False)}
#: name -> (channels, height, width) of its images as the loaders give them (raw RGB, never resized)
INPUT_SIZE = {'cifar10': (3, 32, 32), 'svhn': (3, 32, 32)}

CIFAR10_DIR = 'cifar-10-batches-py'
CIFAR10_TRAIN = tuple(f'data_batch_{i}' for i in range(1, 6))
CIFAR10_TEST = ('test_batch',)
SVHN_SPLITS = ('train', 'test', 'extra')
#: what a CIFAR-10 error tells the user: the folder's expected content and how to get it
CIFAR10_HOW = (
    f'Pass --data DIR where DIR/{CIFAR10_DIR}/ holds the CIFAR-10 python batches data_batch_1 .. data_batch_5 and '
    f'test_batch: the layout that torchvision.datasets.CIFAR10(DIR, download=True) leaves, or the archive '
    f'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz unpacked into DIR (this package downloads nothing).')


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or corrupt; the message says where the files must be."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    # The CIFAR-10 python batches ARE pickles (a dict of bytes keys, a numpy uint8 array and a list of
    # ints), so reading them needs an unpickler; this one resolves only the numpy array classes those
    # files reference and refuses any other global, so a tampered file cannot run code.
    _ALLOWED = {
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy', 'ndarray'), ('numpy', 'dtype'),
        ('_codecs', 'encode'),  # how protocol-2 pickles written by Python 3 store bytes (latin-1 text -> bytes)
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'refusing to load global {module}.{name}')


def _cifar_dir(root: PathLike) -> Path:
    root = Path(root)
    if root.name == CIFAR10_DIR:
        return root
    return root / CIFAR10_DIR


def _read_cifar_batch(path: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise DatasetError(f'CIFAR-10 batch file {path} not found. {CIFAR10_HOW}')
    try:
        with open(path, 'rb') as f:
            entry = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding='bytes').load()
        data, labels = entry[b'data'], entry[b'labels']
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise DatasetError(f'CIFAR-10 batch file {path} is corrupt ({type(e).__name__}: {e}).') from e
    images = torch.as_tensor(data)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if images.dtype != torch.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32 \
            or labels.shape != (images.shape[0],):
        raise DatasetError(
            f'CIFAR-10 batch file {path} is corrupt: data {tuple(images.shape)} {images.dtype}, '
            f'labels {tuple(labels.shape)} (expected (N, 3072) uint8 and N labels).')
    if labels.numel() and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f'CIFAR-10 batch file {path} is corrupt: labels outside 0..9.')
    return images.view(-1, 3, 32, 32).permute(0, 2, 3, 1).contiguous(), labels


def load_cifar10(root: PathLike, train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (or that folder itself): uint8 (N, 32, 32, 3), int64 (N,)."""
    folder = _cifar_dir(root)
    if not folder.is_dir():
        raise DatasetError(f'CIFAR-10 not found: {folder} does not exist. {CIFAR10_HOW}')
    parts = [_read_cifar_batch(folder / name) for name in (CIFAR10_TRAIN if train else CIFAR10_TEST)]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    return images, labels


def load_svhn(root: PathLike, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """SVHN from torchvision's ``root/{split}_32x32.mat``: uint8 (N, 32, 32, 3), int64 (N,), label 10 -> 0."""
    if split not in SVHN_SPLITS:
        raise DatasetError(f'Unknown SVHN split {split!r}; expected one of {SVHN_SPLITS}.')
    if importlib.util.find_spec('scipy') is None:
        raise DatasetError('Reading SVHN .mat files needs scipy, which is not installed (pip install scipy).')
    import scipy.io

    path = Path(root) / f'{split}_32x32.mat'
    if not path.is_file():
        raise DatasetError(
            f'SVHN {split} split not found: {path} does not exist. Pass --data DIR where DIR/{split}_32x32.mat is '
            f'the torchvision/official SVHN file (nothing is downloaded).')
    try:
        mat = scipy.io.loadmat(str(path))
        x, y = mat['X'], mat['y']
    except (ValueError, KeyError, OSError, TypeError, NotImplementedError) as e:
        raise DatasetError(f'SVHN file {path} is corrupt ({type(e).__name__}: {e}).') from e
    images = torch.as_tensor(x)
    labels = torch.as_tensor(y.astype('int64')).reshape(-1)
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[:3]) != (32, 32, 3) \
            or labels.shape != (images.shape[3],):
        raise DatasetError(
            f'SVHN file {path} is corrupt: X {tuple(images.shape)} {images.dtype}, y {tuple(y.shape)} '
            f'(expected X (32, 32, 3, N) uint8 and N labels).')
    if labels.numel() and (labels.min() < 0 or labels.max() > 10):
        raise DatasetError(f'SVHN file {path} is corrupt: labels outside 0..10.')
    labels = labels % 10  # SVHN stores digit 0 as label 10 (torchvision does the same mapping)
    return images.permute(3, 0, 1, 2).contiguous(), labels


def load_dataset(name: str, root: PathLike, train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``load_cifar10`` / ``load_svhn`` by name (SVHN train = the 73,257-image 'train' split, as in the paper)."""
    if name == 'cifar10':
        return load_cifar10(root, train)
    if name == 'svhn':
        return load_svhn(root, 'train' if train else 'test')
    raise DatasetError(f'Unknown dataset {name!r}; expected one of {sorted(DATASETS)}.')


def split_holdout(
        images: torch.Tensor, labels: torch.Tensor, n_holdout: int,
) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """Split off the LAST ``n_holdout`` training images: ((train_x, train_y), (held_x, held_y)).

    The held-out slice comes from the training set and is never trained on; it only selects the best
    checkpoint (robust overfitting), so the test set stays untouched. ``n_holdout=0`` disables it.
    """
    if not 0 <= n_holdout < len(labels):
        raise ValueError(f'holdout must be in [0, {len(labels)}), got {n_holdout}.')
    cut = len(labels) - n_holdout
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


class DeviceLoader:
    """Batches of a uint8 NHWC dataset kept on ``device``, augmented there, as float [0, 1] NCHW.

    Shuffling and augmentation draw from a ``torch.Generator`` seeded with ``seed + epoch`` (call
    :meth:`set_epoch`), so an epoch's batches depend only on (seed, epoch): resuming at an epoch replays
    exactly, and every DDP rank draws the same permutation and takes its own strided shard.

    Args:
        images: uint8 (N, H, W, C). labels: int64 (N,).
        batch_size: images per batch on THIS rank.
        shuffle / augment: random order / pad-4 + random crop + horizontal flip.
        drop_last: drop the last incomplete batch.
        rank / world_size: DDP shard (each rank sees N // world_size images when shuffling with drop_last).
        channels_last: return batches in channels_last memory format.
    """

    def __init__(
            self,
            images: torch.Tensor,
            labels: torch.Tensor,
            batch_size: int,
            device: Union[str, torch.device] = 'cpu',
            shuffle: bool = False,
            augment: bool = False,
            drop_last: bool = False,
            seed: int = 0,
            rank: int = 0,
            world_size: int = 1,
            channels_last: bool = False,
            pad: int = 4,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f'DeviceLoader expects uint8 NHWC images, got {images.dtype} {tuple(images.shape)}.')
        if batch_size <= 0:
            raise ValueError(f'batch_size must be positive, got {batch_size}.')
        if not 0 <= rank < world_size:
            raise ValueError(f'rank {rank} outside world size {world_size}.')
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return g

    def _num_local(self) -> int:
        n = len(self.labels)
        # every rank must run the same number of steps: truncate to a multiple of world_size
        return n // self.world_size if self.world_size > 1 else n

    def __len__(self) -> int:
        n = self._num_local()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _indices(self, g: torch.Generator) -> torch.Tensor:
        n = len(self.labels)
        idx = torch.randperm(n, generator=g, device=self.device) if self.shuffle \
            else torch.arange(n, device=self.device)
        if self.world_size > 1:
            idx = idx[: self._num_local() * self.world_size][self.rank::self.world_size]
        return idx

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # one gather does pad + crop + flip for the whole batch: output pixel (i, j) of image b reads padded
        # pixel (oy_b + i, ox_b + j), or (oy_b + i, ox_b + W - 1 - j) when flipped
        b, h, w, _ = x.shape
        p = self.pad
        xp = F.pad(x, (0, 0, p, p, p, p))  # NHWC: pads W and H with zeros
        oy = torch.randint(0, 2 * p + 1, (b, 1), generator=g, device=self.device)
        ox = torch.randint(0, 2 * p + 1, (b, 1), generator=g, device=self.device)
        flip = torch.rand((b, 1), generator=g, device=self.device) < 0.5
        ar_h = torch.arange(h, device=self.device)[None]
        ar_w = torch.arange(w, device=self.device)[None]
        rows = oy + ar_h
        cols = ox + torch.where(flip, w - 1 - ar_w, ar_w)
        bi = torch.arange(b, device=self.device)[:, None, None]
        return xp[bi, rows[:, :, None], cols[:, None, :]]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        g = self._generator()
        idx = self._indices(g)
        for i in range(len(self)):
            sel = idx[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[sel]
            if self.augment:
                x = self._augment(x, g)
            yield images_to_float(x, channels_last=self.channels_last), self.labels[sel]


def images_to_float(
        images: torch.Tensor, device: Optional[Union[str, torch.device]] = None, channels_last: bool = False,
) -> torch.Tensor:
    """uint8 NHWC images -> float [0, 1] NCHW (contiguous, or channels_last memory), optionally moved to ``device``."""
    if images.dtype != torch.uint8:
        raise ValueError(f'images_to_float expects uint8 images, got {images.dtype}.')
    x = images.to(device) if device is not None else images
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # NHWC storage viewed as NCHW is channels_last in memory already
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
