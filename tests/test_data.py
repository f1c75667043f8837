"""Dataset readers (CIFAR-10 pickles, SVHN .mat) and the on-device loader."""
import pickle

import numpy as np
import pytest
import torch

from fsr_hub.data import (
    DatasetError, DeviceLoader, images_to_float, load_cifar10, load_dataset, load_svhn, split_holdout,
)

from conftest import write_cifar_batches


def test_cifar10_layout_and_values(cifar_root):
    x, y = load_cifar10(cifar_root, train=True)
    assert x.shape == (60, 32, 32, 3) and x.dtype == torch.uint8 and y.dtype == torch.int64
    with open(cifar_root / 'cifar-10-batches-py' / 'data_batch_1', 'rb') as f:
        raw = pickle.load(f, encoding='bytes')
    row = raw[b'data'][3]
    # CIFAR rows are RRR...GGG...BBB, each channel row-major
    assert x[3, 5, 7, 2].item() == row[2 * 1024 + 5 * 32 + 7]
    assert y[3].item() == raw[b'labels'][3]
    xt, yt = load_cifar10(cifar_root / 'cifar-10-batches-py', train=False)
    assert xt.shape == (20, 32, 32, 3) and len(yt) == 20


def test_cifar10_missing_and_corrupt(tmp_path):
    with pytest.raises(DatasetError, match='cifar-10-batches-py') as e:
        load_cifar10(tmp_path, train=True)
    assert 'CIFAR10(DIR, download=True)' in str(e.value) and 'data_batch_1' in str(e.value)
    root = write_cifar_batches(tmp_path)
    (root / 'cifar-10-batches-py' / 'test_batch').write_bytes(b'not a pickle at all')
    with pytest.raises(DatasetError, match='corrupt'):
        load_cifar10(root, train=False)
    (root / 'cifar-10-batches-py' / 'data_batch_3').unlink()
    with pytest.raises(DatasetError, match='data_batch_3'):
        load_cifar10(root, train=True)


def test_cifar10_refuses_code_in_pickle(tmp_path):
    root = write_cifar_batches(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ('pwned',))

    with open(root / 'cifar-10-batches-py' / 'test_batch', 'wb') as f:
        pickle.dump({b'data': Evil(), b'labels': []}, f)
    with pytest.raises(DatasetError, match='refusing'):
        load_cifar10(root, train=False)


def test_svhn_mat(tmp_path):
    scipy_io = pytest.importorskip('scipy.io')
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (32, 32, 3, 7), dtype=np.uint8)
    ylab = np.array([[10], [1], [2], [3], [4], [5], [9]], dtype=np.uint8)
    scipy_io.savemat(tmp_path / 'test_32x32.mat', {'X': X, 'y': ylab})
    x, y = load_svhn(tmp_path, 'test')
    assert x.shape == (7, 32, 32, 3) and x.dtype == torch.uint8
    assert y.tolist() == [0, 1, 2, 3, 4, 5, 9]
    assert x[2, 4, 6, 1].item() == X[4, 6, 1, 2]
    with pytest.raises(DatasetError, match='train_32x32.mat'):
        load_dataset('svhn', tmp_path, train=True)
    scipy_io.savemat(tmp_path / 'train_32x32.mat', {'X': X[:, :, :, :3], 'y': ylab})
    with pytest.raises(DatasetError, match='corrupt'):
        load_svhn(tmp_path, 'train')
    with pytest.raises(DatasetError, match='Unknown dataset'):
        load_dataset('mnist', tmp_path, train=True)


def test_split_holdout_takes_the_end():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 32, 32, 3)
    y = torch.arange(10)
    (tx, ty), (hx, hy) = split_holdout(x, y, 3)
    assert ty.tolist() == list(range(7)) and hy.tolist() == [7, 8, 9]
    (tx, ty), (hx, hy) = split_holdout(x, y, 0)
    assert len(ty) == 10 and len(hy) == 0
    with pytest.raises(ValueError):
        split_holdout(x, y, 10)


def _indexed(n):
    # image i is constant i / 255 with a marked pixel, so every batch tells which images it holds
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).repeat(1, 32, 32, 3)
    return x, torch.arange(n)


def test_loader_shuffle_drop_last_and_epochs():
    x, y = _indexed(50)
    loader = DeviceLoader(x, y, 8, shuffle=True, drop_last=True, seed=1)
    assert len(loader) == 6
    loader.set_epoch(0)
    e0 = torch.cat([b for _, b in loader])
    e0_again = torch.cat([b for _, b in loader])
    loader.set_epoch(1)
    e1 = torch.cat([b for _, b in loader])
    assert len(e0) == 48 and len(set(e0.tolist())) == 48
    assert torch.equal(e0, e0_again) and not torch.equal(e0, e1)
    xb, yb = next(iter(DeviceLoader(x, y, 8)))
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32
    assert torch.allclose(xb[:, 0, 0, 0], yb.float() / 255)
    assert len(DeviceLoader(x, y, 8, drop_last=False)) == 7


def test_loader_ddp_shards_are_disjoint():
    x, y = _indexed(50)
    shards = [torch.cat([b for _, b in DeviceLoader(x, y, 5, shuffle=True, drop_last=True, seed=3, rank=r,
                                                     world_size=2)]) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 25
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_augmentation_is_pad_crop_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 32, 32, 3), generator=g, dtype=torch.uint8)
    y = torch.arange(16)
    loader = DeviceLoader(x, y, 16, augment=True, channels_last=True, seed=5)
    xb, yb = next(iter(loader))
    assert xb.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2).float() / 255, (4, 4, 4, 4))
    flips = 0
    for i in range(16):
        src = padded[yb[i]]
        cands = [(src[:, a:a + 32, b:b + 32], f) for a in range(9) for b in range(9) for f in (0, 1)]
        hits = [f for c, f in cands if torch.equal(c.flip(-1) if f else c, xb[i])]
        assert hits, f'image {i} is not a pad-4 crop (optionally flipped) of its source'
        flips += hits[0]
    assert 0 < flips < 16  # both flipped and unflipped images occur
    plain, _ = next(iter(DeviceLoader(x, y, 16, augment=False)))
    assert not torch.equal(plain, xb)


def test_images_to_float_is_the_loaders_conversion():
    x = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    f = images_to_float(x, channels_last=True)
    assert f.shape == (5, 3, 32, 32) and f.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(f, x.permute(0, 3, 1, 2).float() / 255) and images_to_float(x).is_contiguous()
    xb, _ = next(iter(DeviceLoader(x, torch.arange(5), 5, channels_last=True)))
    assert torch.equal(xb, f)
    with pytest.raises(ValueError, match='uint8'):
        images_to_float(f)
