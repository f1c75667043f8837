"""Real, non-random weights on the CPU: pyautoattack's naturally trained CIFAR-10 ResNet-18 (fsr_hub.sources) in
the verification suite: clean accuracy on the shipped sample is high, white-box attacks drive it to ~0 %, and it
serves as the source of the transfer attacks (verify --transfer-from cifar_resnet18:pyautoattack)."""
import json

import pytest
import torch

from fsr_hub.evaluate import evaluate
from fsr_hub.models import create
from fsr_hub.sample import load_sample
from fsr_hub.sources import PYAUTOATTACK_SPEC, load_model_spec, natural_resnet18, pyautoattack_checkpoint
from fsr_hub.weights import WeightsError, save_weights, sha256_file
from tools import verify

try:
    CHECKPOINT = pyautoattack_checkpoint()
except WeightsError:
    CHECKPOINT = None
pytestmark = pytest.mark.skipif(CHECKPOINT is None, reason='pyautoattack/examples/model_test.pt is not installed')


def test_natural_resnet18_in_the_verify_suite():
    model, info = load_model_spec(PYAUTOATTACK_SPEC)
    assert info == {'architecture': 'cifar_resnet18', 'weights': 'pyautoattack', 'sha256': sha256_file(CHECKPOINT),
                    'description': info['description']} and not model.training
    x, y = load_sample(20)
    # PGD-20 on the first 2 images only: 20 ResNet-18 gradients of 2 images are most of this test's time
    ev = evaluate(model, x, y, attacks=('clean', 'fgsm', 'pgd20'), subsets={'pgd20': 2}, batch_size=20,
                  masking_checks=False, progress=False)
    r = ev['results']
    assert r['clean']['accuracy'] >= 90  # measured: 100 % of these 20 (94.5 % of all 200)
    assert r['fgsm']['accuracy'] <= 40  # measured: 15 %; a natural model has no robustness
    assert r['pgd20']['accuracy'] == 0.0 and r['pgd20']['subset'] == 'first 2'
    # the Ensemble covers the first images every suite attack ran on: here PGD-20's 2
    assert not ev['not_run'] and r['ensemble']['n'] == 2 and r['ensemble']['subset'] == 'first 2'
    assert r['ensemble']['accuracy'] == 0.0


def test_named_weights_are_checked():
    with pytest.raises(ValueError, match="'pyautoattack' weights are a 10-class cifar_resnet18, not a 10-class fsr_"):
        load_model_spec('fsr_resnet18:pyautoattack')
    with pytest.raises(ValueError, match='not a 100-class cifar_resnet18'):
        load_model_spec(PYAUTOATTACK_SPEC, num_classes=100)
    with pytest.raises(ValueError, match='--source must be MODEL:WEIGHTS'):
        load_model_spec('cifar_resnet18', what='--source')
    a, b = natural_resnet18(), natural_resnet18()
    assert a is not b and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_verify_with_the_natural_source(tmp_path, cifar_root, capsys):
    torch.manual_seed(0)
    weights = tmp_path / 'target.safetensors'
    save_weights(create('cifar_resnet18', num_classes=10), weights)
    out = tmp_path / 'report.json'
    args = ['--model', 'cifar_resnet18', '--weights', str(weights), '--data', str(cifar_root), '--n', '2',
            '--device', 'cpu', '--no-progress', '--no-masking-checks']
    assert verify.main(args + ['--attacks', 'clean,ti_fgsm', '--transfer-from', PYAUTOATTACK_SPEC,
                               '--out', str(out)]) == 0
    report = json.loads(out.read_text())
    ti = report['results']['ti_fgsm']
    assert set(report['results']) == {'clean', 'ti_fgsm'}  # the PGD-20 transfer attack is not added
    assert ti['source'] == f'cifar_resnet18 (pyautoattack, sha256 {sha256_file(CHECKPOINT)[:12]})'
    assert ti['params']['kern_len'] == 15 and ti['n'] == 2 and ti['max_bound_violation'] <= 1e-6
    assert verify.main(args + ['--preset', 'quick', '--blackbox']) == 2
    assert '--blackbox needs --transfer-from' in capsys.readouterr().err
