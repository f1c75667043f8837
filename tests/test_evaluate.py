"""The verify report: schema, accuracies, Ensemble, masking checks, and the command line."""
import json
import sys
from pathlib import Path

import pytest
import timm
import torch

import fsr_hub  # noqa: F401
from fsr_hub.evaluate import SCHEMA, build_report, evaluate, model_info, parse_attacks
from fsr_hub.weights import save_weights

from conftest import tiny_fsr_net

REPO = Path(__file__).resolve().parents[1]


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _check_result(entry):
    assert 0 <= entry['accuracy'] <= 100 and round(entry['accuracy'], 2) == entry['accuracy']
    assert len(entry['per_class']) == 10


def test_report_schema_and_consistency(tmp_path):
    model = tiny_fsr_net().train()  # the evaluator must switch it to eval mode
    x, y = _data(8)
    ev = evaluate(model, x, y, attacks=('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'transfer'), batch_size=8,
                  transfer_model=tiny_fsr_net(fsr_positions=()), transfer_source='tiny vanilla', masking_n=8,
                  progress=False)
    assert not model.training
    w = tmp_path / 'm.safetensors'
    save_weights(model, w)
    report = build_report(model_info(model, 'tiny', None, str(w)),
                          {'dataset': 'cifar10', 'split': 'test', 'n': 8, 'subset': 'first n', 'seed': 0},
                          ev, 8 / 255, 8, 'cpu', 'python tools/verify.py ...')
    report = json.loads(json.dumps(report, allow_nan=False))
    assert report['schema'] == SCHEMA
    for key in ('model', 'data', 'eps', 'batch_size', 'hardware', 'results', 'masking_checks', 'timing', 'command'):
        assert key in report
    assert len(report['model']['sha256']) == 64 and report['model']['num_params'] > 0
    assert set(report['hardware']) >= {'device', 'torch', 'dtype'}
    r = report['results']
    assert set(r) == {'clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'transfer', 'ensemble'}
    for name, entry in r.items():
        _check_result(entry)
        if name != 'ensemble':
            assert entry['seconds'] >= 0 and entry['max_bound_violation'] <= 1e-6
    assert r['pgd20']['params'] == {'eps': 8 / 255, 'alpha': 8 / 2550, 'steps': 20, 'random_start': False}
    assert r['cw']['params']['steps'] == 30 and r['cw']['params']['kappa'] == 50
    assert r['fgsm']['params']['steps'] == 1 and r['transfer']['source'] == 'tiny vanilla'
    assert r['ensemble']['attacks'] == ['clean', 'fgsm', 'pgd20', 'pgd100', 'cw']
    assert r['ensemble']['accuracy'] <= min(r[a]['accuracy'] for a in r['ensemble']['attacks'])
    m = report['masking_checks']
    assert m['eps_sweep']['eps_255'] == [8, 16, 32, 64] and len(m['eps_sweep']['accuracy']) == 4
    assert m['steps_sweep']['steps'][-1] == 100
    # the steps sweep comes from the PGD-100 run: its 20- and 100-step points are pgd20 / pgd100
    acc = dict(zip(m['steps_sweep']['steps'], m['steps_sweep']['accuracy']))
    assert acc[20] == r['pgd20']['accuracy'] and acc[100] == r['pgd100']['accuracy']
    c = m['checks']
    assert set(c) == {'falls_to_zero_at_64', 'unbounded_zero', 'more_steps_never_raise', 'transfer_ge_whitebox',
                      'rand_within_1pt'}
    assert c['rand_within_1pt'] is None and isinstance(c['transfer_ge_whitebox'], bool)
    assert m['passed'] == all(v for v in c.values() if v is not None)


def test_masking_checks_flag_a_masked_model():
    # a model that ignores its input has no gradient: accuracy never falls, which the checks must report
    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(10))

        def forward(self, x):
            return self.bias.expand(x.shape[0], 10) + 0 * x.sum(dim=(1, 2, 3))[:, None]

    x, y = _data(8)
    y[:] = 0
    ev = evaluate(Constant(), x, y, attacks=('clean', 'pgd20'), batch_size=8, masking_n=4, progress=False)
    assert 'fgsm' not in ev['results'] and 'ensemble' in ev['results']
    m = ev['masking_checks']
    assert m['eps_sweep']['accuracy'][-1] == 100.0 and m['unbounded_accuracy'] == 100.0
    assert m['checks']['falls_to_zero_at_64'] is False and m['checks']['unbounded_zero'] is False
    assert m['passed'] is False and m['checks']['transfer_ge_whitebox'] is None


def test_without_masking_checks_they_are_null():
    x, y = _data(4)
    ev = evaluate(tiny_fsr_net(), x, y, attacks=('clean',), masking_checks=False, progress=False)
    assert ev['masking_checks']['checks']['unbounded_zero'] is None and ev['masking_checks']['passed'] is None
    assert 'ensemble' not in ev['results']


def test_bad_arguments():
    x, y = _data(4)
    with pytest.raises(ValueError, match='transfer'):
        evaluate(tiny_fsr_net(), x, y, attacks=('transfer',), progress=False)
    with pytest.raises(ValueError, match='Unknown attack'):
        parse_attacks('clean,pgd7')
    assert parse_attacks('all')[-1] == 'transfer'


def test_verify_cli(tmp_path, cifar_root, capsys):
    sys.path.insert(0, str(REPO / 'tools'))
    try:
        import verify
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    model = timm.create_model('cifar_resnet18', num_classes=10)
    weights = tmp_path / 'r18.safetensors'
    save_weights(model, weights, dtype=torch.float16)
    out = tmp_path / 'report.json'
    rc = verify.main(['--model', 'cifar_resnet18', '--weights', str(weights), '--data', str(cifar_root), '--n', '4',
                      '--batch-size', '4', '--attacks', 'clean,fgsm', '--no-masking-checks', '--out', str(out),
                      '--device', 'cpu', '--no-progress'])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report['data'] == {'dataset': 'cifar10', 'split': 'test', 'n': 4, 'subset': 'first n', 'seed': 0}
    assert report['model']['architecture'] == 'cifar_resnet18' and report['model']['tag'] is None
    assert set(report['results']) == {'clean', 'fgsm', 'ensemble'} and '--n 4' in report['command']
    assert verify.main(['--model', 'cifar_resnet18', '--weights', str(tmp_path / 'no.safetensors'),
                        '--data', str(cifar_root)]) == 2
    assert verify.main(['--model', 'cifar_resnet18', '--weights', str(weights), '--data', str(tmp_path / 'none')]) == 2
    assert 'error:' in capsys.readouterr().err


def test_verify_cli_records_the_training_run(tmp_path, cifar_root, capsys):
    sys.path.insert(0, str(REPO / 'tools'))
    try:
        import verify
    finally:
        sys.path.pop(0)
    model = timm.create_model('cifar_resnet18', num_classes=10)
    weights = tmp_path / 'final.safetensors'
    sha = save_weights(model, weights, dtype=torch.float16)
    summary = {'schema': 'fsr-hub/train/v1', 'command': 'python tools/train.py --epochs 2', 'config': {'lr': 0.1},
               'epoch_seconds': [3.5, 3.25], 'wall_clock_seconds': 7.0, 'hardware': {'device': 'NVIDIA H100'},
               'weights': {'final': {'file': 'final.safetensors', 'sha256': sha},
                           'best': {'file': 'best.safetensors', 'sha256': '0' * 64}}}
    path = tmp_path / 'train_summary.json'
    path.write_text(json.dumps(summary))
    args = ['--model', 'cifar_resnet18', '--weights', str(weights), '--data', str(cifar_root), '--n', '2',
            '--attacks', 'clean', '--no-masking-checks', '--device', 'cpu', '--no-progress',
            '--train-summary', str(path)]
    out = tmp_path / 'report.json'
    assert verify.main(args + ['--out', str(out)]) == 0
    training = json.loads(out.read_text())['training']
    assert training['weights'] == 'final' and training['epochs'] == 2 and training['hardware'] == 'NVIDIA H100'
    assert training['command'] == summary['command'] and training['config'] == {'lr': 0.1}
    summary['weights']['final']['sha256'] = '1' * 64  # a summary of another run is refused before evaluating
    path.write_text(json.dumps(summary))
    capsys.readouterr()
    assert verify.main(args) == 2
    assert 'belongs to another run' in capsys.readouterr().err


def test_evaluation_refuses_reduced_precision():
    x, y = torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    with pytest.raises(RuntimeError, match='float32'):
        evaluate(tiny_fsr_net().to(torch.bfloat16), x, y, attacks=('clean',), masking_checks=False, progress=False)
    with torch.autocast('cpu', dtype=torch.bfloat16), pytest.raises(RuntimeError, match='without autocast'):
        evaluate(tiny_fsr_net(), x, y, attacks=('clean',), masking_checks=False, progress=False)
