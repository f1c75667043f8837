"""The paper's reference data (against the paper's text when it is there) and the shipped CIFAR-10 sample with
its tool. CPU only, no network."""
from pathlib import Path

import pytest
import torch

from fsr_hub import paper
from fsr_hub.sample import SAMPLE_PATH, SampleError, load_sample, read_sample, write_sample

from release_builders import load_tool

PAPER_TXT = Path(__file__).resolve().parents[2] / 'shared' / 'papers' / 'fsr_cvpr2023.txt'  # beside the checkout


def test_paper_reference_values():
    ref = paper.paper_reference('fsr_resnet18', 'at_cifar10')
    assert list(ref.metrics) == list(paper.METRICS) + list(paper.BLACKBOX_METRICS)
    assert ref.metrics['nattack'] == 52.65 and ref.sources['ti_fgsm'].startswith('Table 3')
    assert ref.sources['pgd20'] == 'Table 1' and ref.sources['autoattack'].startswith('Table 3')
    assert paper.paper_reference('fsr_vgg16', 'trades_svhn').sources['clean'] == 'Table 2'
    assert 'autoattack' not in paper.paper_reference('fsr_vgg16', 'at_cifar10').metrics
    assert paper.paper_reference('fsr_wrn34_10', 'at_cifar10') is None
    assert paper.paper_reference('fsr_resnet18', 'at_imagenet') is None


@pytest.mark.skipif(not PAPER_TXT.is_file(), reason='paper text not available')
def test_paper_numbers_match_paper_text():
    text = PAPER_TXT.read_text()
    rows = {  # (arch, tag) -> the row label in the paper's tables
        ('resnet18', 'at'): 'AT + FSR', ('resnet18', 'trades'): 'TRADES + FSR', ('resnet18', 'mart'): 'MART + FSR'}
    for (backbone, method), label in rows.items():
        ref = paper.paper_reference(f'fsr_{backbone}', f'{method}_cifar10')
        white = '\t'.join(f'{ref.metrics[k]:.2f}' for k in ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'ensemble'))
        assert f'{label}\t{white}' in text, label
        table3 = '\t'.join(f'{ref.metrics[k]:.2f}' for k in paper.BLACKBOX_METRICS + ('autoattack',))
        assert f'{label}\t{table3}\n' in text, label
    for backbone in ('resnet18', 'vgg16'):
        for kind in ('vanilla', 'fsr'):
            c = paper.PAPER_COST[backbone][kind]
            assert f"{c['params_m']:.2f}" in text and f"{c['gflops']:.4f}" in text


def test_sample_loads_balanced():
    assert SAMPLE_PATH.stat().st_size < 500_000
    x, y = load_sample()
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.1
    assert torch.bincount(y, minlength=10).tolist() == [20] * 10
    x10, y10 = load_sample(10)
    assert sorted(y10.tolist()) == list(range(10)) and torch.equal(x10, x[:10])
    _, _, meta = read_sample()
    assert len(set(meta['indices'])) == 200 and all(0 <= i < 10000 for i in meta['indices'])
    with pytest.raises(SampleError, match='n=201 is out of range'):
        load_sample(201)


def test_make_sample_tool_round_trip(tmp_path):
    """tools/make_sample.py on a synthetic cifar-10-batches-py folder: lossless, labelled, round-robin."""
    import pickle

    import numpy as np
    from conftest import write_cifar_batches

    root = write_cifar_batches(tmp_path, n_train=5, n_test=300, seed=1)
    out = tmp_path / 'sample.png'
    tool = load_tool('make_sample')
    assert tool.main([str(root / 'cifar-10-batches-py'), '--per-class', '2', '--out', str(out)]) == 0
    with open(root / 'cifar-10-batches-py' / 'test_batch', 'rb') as f:
        batch = pickle.load(f, encoding='bytes')
    src = np.asarray(batch[b'data']).reshape(-1, 3, 32, 32)
    labels = np.asarray(batch[b'labels'])
    images, y, meta = read_sample(out)
    idx = np.asarray(meta['indices'])
    assert np.array_equal(images.transpose(0, 3, 1, 2), src[idx]) and np.array_equal(y, labels[idx])
    assert y.tolist() == list(range(10)) * 2
    assert all(idx[c] == np.nonzero(labels == c)[0][0] for c in range(10))  # the *first* image of each class
    assert tool.main([str(tmp_path / 'nowhere')]) == 2


def test_sample_file_errors(tmp_path):
    with pytest.raises(SampleError, match='sample file not found'):
        load_sample(path=tmp_path / 'missing.png')
    (tmp_path / 'bad.png').write_bytes(b'not a png')
    with pytest.raises(SampleError, match='bad.png is not a valid fsr_hub sample file'):
        load_sample(path=tmp_path / 'bad.png')
    import numpy as np
    with pytest.raises(SampleError, match='images must be uint8'):
        write_sample(tmp_path / 'x.png', np.zeros((2, 32, 32, 3), np.float32), [0, 1], [0, 1])


