"""The main job (``python -m fsr_hub``): no released weights -> says so + cost report; a release folder, a local
file, or a pinned registry tag served from an offline HF cache -> a table of measured vs card vs paper numbers."""
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from fsr_hub import paper
from fsr_hub.__main__ import main
from fsr_hub.attacks import pgd
from fsr_hub.release import seed_hf_cache
from fsr_hub.sample import load_sample

from test_hub_pull import NAME, REPO_ID, _hub_env
from test_release import SMALL_ARGS, build_release

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tiny_release(tmp_path_factory):
    return build_release(tmp_path_factory.mktemp('main'), attacks=('clean', 'pgd20', 'pgd100'), seed=5)


def _row(out: str, metric: str) -> list:
    line = next(l for l in out.splitlines() if l.startswith(f'| {metric} '))
    return [c.strip() for c in line.split('|')[1:-1]]


def test_no_weights_released_prints_cost(monkeypatch, tmp_path, capsys):
    _hub_env(monkeypatch, tmp_path, offline=True)
    assert main([]) == 0
    out = capsys.readouterr().out
    assert f'No weights have been released for {NAME} yet' in out
    row = next(l for l in out.splitlines() if l.startswith('| fsr_resnet18 |'))
    fsr = timm.create_model('fsr_resnet18')
    assert f'{sum(p.numel() for p in fsr.parameters()):,}' in row


def test_release_folder_pgd20_matches_direct_evaluation(tiny_release, capsys):
    n, bs = 6, 3
    assert main(['--release', str(tiny_release.folder), '--attack', 'pgd20', '--n', str(n),
                 '--batch-size', str(bs), '--device', 'cpu']) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert 'batch' in captured.err  # tqdm progress bar
    header = out.splitlines()[[i for i, l in enumerate(out.splitlines()) if l.startswith('| metric')][0]]
    assert f'measured here ({n} images, cpu)' in header and 'model card (200 images)' in header
    # measured numbers equal an independent evaluation of the same weights on the same images
    model = tiny_release.model.eval()
    x, y = load_sample(n)
    clean = adv = 0
    for i in range(0, n, bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        with torch.no_grad():
            clean += (model(xb).argmax(1) == yb).sum().item()
            xa = pgd(model, xb, yb, eps=8 / 255, alpha=0.8 / 255, steps=20)
            adv += (model(xa).argmax(1) == yb).sum().item()
    ref = paper.paper_reference('fsr_resnet18', 'at_cifar10')
    for metric, key, correct in (('Clean', 'clean', clean), ('PGD-20', 'pgd20', adv)):
        cells = _row(out, metric)
        assert cells[1] == f'{100 * correct / n:.2f}'
        assert cells[2] == f"{tiny_release.results['results'][key]['accuracy']:.2f}"
        assert cells[3] == f'{ref.metrics[key]:.2f} ({ref.sources[key]})'
    assert not any(l.startswith('| FGSM') for l in out.splitlines())


def test_local_weights_without_card(tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model('fsr_resnet18', **SMALL_ARGS)
    from fsr_hub.weights import save_weights
    save_weights(model, tmp_path / 'w.safetensors')
    # the registry architecture has 2 blocks per stage: a 1-block file does not fit -> one-line error
    assert main(['--weights', str(tmp_path / 'w.safetensors'), '--attack', 'clean', '--n', '10']) == 2
    err = capsys.readouterr().err
    assert err.startswith('fsr-hub: error:') and 'does not fit CifarResNet' in err and err.count('\n') == 1
    full = timm.create_model('cifar_resnet18')
    save_weights(full, tmp_path / 'v.safetensors')
    assert main(['--model', 'cifar_resnet18.at_cifar10', '--weights', str(tmp_path / 'v.safetensors'),
                 '--attack', 'fgsm', '--n', '10', '--no-progress']) == 0
    cells = _row(capsys.readouterr().out, 'FGSM')
    ref = paper.paper_reference('cifar_resnet18', 'at_cifar10')
    assert cells[2] == 'no card' and cells[3] == f"{ref.metrics['fgsm']:.2f} (Table 1)"


def test_pinned_release_pulled_from_hf_cache(monkeypatch, tmp_path, capsys):
    """Once a release lands (registry sha256 pin), the default job pulls it through huggingface_hub."""
    rel = build_release(tmp_path / 'rel', model_args={}, attacks=('clean', 'fgsm'), seed=7)
    cache = _hub_env(monkeypatch, tmp_path, offline=True)
    seed_hf_cache(rel.folder, REPO_ID, cache)
    real = timm.models.get_pretrained_cfg

    def pinned(name, *a, **k):
        if name == NAME:  # as if released: the architecture's cfg plus the repo and the pin
            return dataclasses.replace(real('fsr_resnet18'), tag='at_cifar10', hf_hub_id=REPO_ID, sha256=rel.sha256)
        return real(name, *a, **k)
    monkeypatch.setattr(timm.models, 'get_pretrained_cfg', pinned)
    monkeypatch.setattr(timm.models._builder, 'get_pretrained_cfg', pinned, raising=False)
    assert main(['--attack', 'clean', '--n', '20', '--no-progress']) == 0
    out = capsys.readouterr().out
    assert f'{REPO_ID} (sha256 {rel.sha256[:12]})' in out
    assert _row(out, 'Clean')[2] == f"{rel.results['results']['clean']['accuracy']:.2f}"


@pytest.mark.parametrize('argv, message', [
    (['--model', 'resnet50'], "unknown architecture 'resnet50'"),
    (['--n', '0'], 'n=0 is out of range'),
    (['--n', '999'], 'n=999 is out of range'),
    (['--batch-size', '0'], '--batch-size must be positive'),
    (['--release', '/nonexistent/fsr_resnet18.at_cifar10'], 'release folder not found'),
    (['--weights', '/nonexistent.safetensors'], 'Weight file not found: /nonexistent.safetensors'),
    (['--device', 'nodevice'], '--device nodevice'),
])
def test_bad_arguments_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('fsr-hub: error:') and message in err and err.count('\n') == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-CUDA message')
def test_cuda_unavailable(capsys):
    assert main(['--device', 'cuda']) == 2
    assert 'CUDA is not available' in capsys.readouterr().err


def test_python_m_fsr_hub_runs_offline(tmp_path):
    """The README's first command, in a fresh process, offline."""
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'), HF_ENDPOINT='http://127.0.0.1:9')
    proc = subprocess.run([sys.executable, '-m', 'fsr_hub'], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'No weights have been released for fsr_resnet18.at_cifar10 yet' in proc.stdout
    assert re.search(r'\| fsr_resnet18 \| [\d,]+ \| [\d,]+ \|', proc.stdout)
