"""The verify report: schema, accuracies, Ensemble, masking checks, and the command line."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import fsr_hub  # noqa: F401
from fsr_hub.autoattack import (
    AA_VERSIONS, AAState, autoattack_config, build_autoattack, departures, pack_flags, rebatch,
    run_autoattack_resumable, unpack_flags,
)
from fsr_hub.attack_registry import PGD20, PGD100, SPECS
from fsr_hub.evaluate import (
    PENDING, SCHEMA, STAGE_ORDER, build_report, evaluate, model_info, parse_attacks, preset,
)
from fsr_hub.evaluate.checks import EPS_SWEEP_255, STEPS_SWEEP, masking_parts
from fsr_hub.evaluate.config import EvalConfig
from fsr_hub.evaluate.measure import Clock, DeadlineReached, run_batched
from fsr_hub.hardware import strict_float32
from fsr_hub.weights import save_weights
from tools import verify

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
                      'rand_within_1pt', 'blackbox_ge_whitebox'}
    assert c['rand_within_1pt'] is None and isinstance(c['transfer_ge_whitebox'], bool)
    assert c['blackbox_ge_whitebox'] is None and m['blackbox_vs_whitebox'] == {}  # no black-box attack ran
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
    assert {'transfer', 'ti_fgsm', 'di_fgsm', 'nattack'} <= set(parse_attacks('all'))


def test_verify_cli(tmp_path, cifar_root, capsys):
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


def test_verify_cli_records_a_cast_of_the_trained_file(tmp_path, cifar_root, capsys):
    model = timm.create_model('cifar_resnet18', num_classes=10)
    trained, released = tmp_path / 'best.safetensors', tmp_path / 'model.safetensors'
    summary = {'schema': 'fsr-hub/train/v1', 'command': 'python tools/train.py', 'epoch_seconds': [1.0],
               'weights': {'best': {'file': 'best.safetensors', 'sha256': save_weights(model, trained)}}}
    save_weights(model, released, dtype=torch.float16)
    path = tmp_path / 'train_summary.json'
    path.write_text(json.dumps(summary))
    args = ['--model', 'cifar_resnet18', '--data', str(cifar_root), '--n', '2', '--attacks', 'clean',
            '--no-masking-checks', '--device', 'cpu', '--no-progress', '--train-summary', str(path)]
    out = tmp_path / 'report.json'
    assert verify.main(args + ['--weights', str(released), '--cast-from', str(trained), '--out', str(out)]) == 0
    training = json.loads(out.read_text())['training']
    assert training['weights'] == 'best'
    assert training['cast'] == {'from': 'best', 'from_sha256': summary['weights']['best']['sha256'], 'dtype': 'float16'}
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # other weights, cast: not the trainer's file any more
    save_weights(model, released, dtype=torch.float16)
    capsys.readouterr()
    assert verify.main(args + ['--weights', str(released), '--cast-from', str(trained)]) == 2
    assert 'fc.bias is not' in capsys.readouterr().err
    assert verify.main(args + ['--weights', str(trained), '--cast-from', str(trained)]) == 0  # float32 of float32
    assert verify.main(['--cast-from', str(trained)] + args[:-2] + ['--weights', str(released)]) == 2
    assert 'give both' in capsys.readouterr().err


def test_evaluation_refuses_reduced_precision():
    x, y = torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    with pytest.raises(RuntimeError, match='float32'):
        evaluate(tiny_fsr_net().to(torch.bfloat16), x, y, attacks=('clean',), masking_checks=False, progress=False)
    with torch.autocast('cpu', dtype=torch.bfloat16), pytest.raises(RuntimeError, match='without autocast'):
        evaluate(tiny_fsr_net(), x, y, attacks=('clean',), masking_checks=False, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Presets, deadlines, partial reports, resume, strict float32


def test_verify_help_shows_presets_and_deadline(capsys):
    with pytest.raises(SystemExit) as e:
        verify.main(['--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert '--preset' in out and '--deadline-minutes' in out and '--resume' in out


def test_presets_run_cheapest_first():
    attacks, subsets, masking = preset('quick')
    assert set(attacks) == {'clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'autoattack'} and not masking
    assert subsets == {'autoattack': 1000}
    attacks, subsets, masking = preset('full', transfer=True)
    assert 'transfer' in attacks and 'autoattack_rand' in attacks and masking
    assert subsets == {'autoattack_rand': 1000}
    order = [s for s in STAGE_ORDER if s in attacks or s == 'masking_checks']
    assert order.index('pgd100') > order.index('cw') > order.index('pgd20') > order.index('fgsm')
    assert order[-2:] == ['autoattack_rand', 'autoattack']
    attacks, subsets, masking = preset('cpu')
    assert masking and 'autoattack' in attacks and subsets['pgd100'] == subsets['autoattack'] == 1000
    assert all(subsets[a] >= 2000 for a in ('fgsm', 'pgd20', 'cw')) and 'clean' not in subsets


def test_evaluate_checks_pixel_values():
    x, y = _data(4)
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        evaluate(tiny_fsr_net(), x * 255, y, attacks=('clean',), masking_checks=False, progress=False)


def test_resume_keeps_finished_stages_and_a_deadline_lists_the_rest():
    model, (x, y) = tiny_fsr_net(), _data(4)
    first = evaluate(model, x, y, attacks=('clean', 'fgsm'), batch_size=4, masking_checks=False, progress=False)
    assert first['complete'] and not first['not_run'] and set(first['per_example']) == {'clean', 'fgsm'}
    previous = json.loads(json.dumps(first))  # what a report on disk holds
    updates = []
    ev = evaluate(model, x, y, attacks=('clean', 'fgsm', 'pgd20', 'pgd100'), batch_size=4, masking_checks=True,
                  masking_n=2, progress=False, previous=previous, deadline_minutes=1e-9, on_update=updates.append)
    assert ev['resumed'] == ['clean', 'fgsm'] and not ev['complete']
    assert ev['results']['clean'] == first['results']['clean'] and set(ev['results']) == {'clean', 'fgsm'}
    assert set(ev['not_run']) == {'pgd20', 'pgd100', 'masking_checks', 'ensemble'}
    assert all(ev['not_run'][s].startswith('deadline:') for s in ('pgd20', 'pgd100', 'masking_checks'))
    # never an Ensemble over fewer attacks than were asked for
    assert ev['not_run']['ensemble'] == 'needs pgd20, pgd100'
    assert updates and updates[-1]['not_run'] == ev['not_run']
    # without a deadline the same call finishes what is missing and recomputes the ensemble over all of it
    ev = evaluate(model, x, y, attacks=('clean', 'fgsm', 'pgd20', 'pgd100'), batch_size=4, masking_n=2,
                  progress=False, previous=previous)
    assert ev['complete'] and ev['results']['ensemble']['attacks'] == ['clean', 'fgsm', 'pgd20', 'pgd100']
    assert ev['masking_checks']['n'] == 2 and ev['results']['pgd20']['subset'] == 'all 4'


def _linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()


def test_masking_parts_count_the_steps_sweep_they_must_run():
    # resumed without PGD-100's trajectory, the steps sweep runs its own PGD-100: the estimates have to include it
    sweeps = len(EPS_SWEEP_255) * SPECS[PGD20].cost + SPECS[PGD100].cost  # PGD-20 per eps, the unbounded PGD-100
    model, (x, y) = _linear(), _data(4)
    config = EvalConfig(attacks=(), eps=8 / 255, batch_size=4, device=torch.device('cpu'), seed=0, num_classes=10,
                        transfer_source=None, masking_checks=True, masking_n=4, progress=False, subsets={},
                        deadline_minutes=None, overrides={})
    recorded = {k: [torch.ones(4, dtype=torch.bool)] for k in STEPS_SWEEP}
    for traj, steps_recorded in (({k: [] for k in STEPS_SWEEP}, False), (recorded, True)):
        parts = masking_parts(model, x, y, 4, config, traj, Clock(None))
        assert sum(units for _, units, _ in parts) == sweeps + (0 if steps_recorded else SPECS[PGD100].cost)
    assert dict((name, m()) for name, _, m in parts)['steps_sweep'] == {'accuracy': [100.0] * 6, 'n': 4}


def test_masking_checks_stopped_and_resumed_equal_one_run():
    model, (x, y) = _linear(), _data(4)
    kw = dict(attacks=('clean', 'pgd20'), batch_size=2, masking_n=4, progress=False)
    whole = evaluate(model, x, y, **kw)['masking_checks']
    snapshots = []

    def stop_after_the_eps_sweep(snapshot):
        snapshots.append(json.loads(json.dumps(snapshot)))  # what a report on disk holds
        parts = snapshot['progress'].get('masking_checks', {}).get('parts', {})
        if len(parts) == 4 and snapshot['not_run']['masking_checks'].startswith('running'):
            raise KeyboardInterrupt  # once: the interrupted run's own last update says "interrupted"

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, x, y, on_update=stop_after_the_eps_sweep, **kw)
    saved = snapshots[-1]  # the interrupted run's last update: the parts measured so far are kept
    assert saved['not_run']['masking_checks'] == 'interrupted while running'
    assert list(saved['progress']['masking_checks']['parts']) == ['eps_8', 'eps_16', 'eps_32', 'eps_64']
    # a deadline that fits no further part keeps the progress and says so (speed: from the "measured" PGD-20)
    speed = 60 / (4 * 90)  # s per gradient evaluation per image: the unbounded attack's 100 units do not fit 60 s
    slow = json.loads(json.dumps(saved))
    slow['results']['pgd20']['seconds'] = SPECS[PGD20].cost * 4 * speed
    del slow['results']['clean']['seconds']
    late = evaluate(model, x, y, previous=slow, deadline_minutes=1, **kw)
    assert late['not_run']['masking_checks'].startswith(
        f'deadline: about {SPECS[PGD100].cost * 4 * speed:.0f} s needed for its next part, unbounded (all 2 left: '
        f'about {SPECS[PGD100].cost * 2 * 4 * speed:.0f} s)')
    assert late['not_run']['masking_checks'].endswith('partial: 4 of 6 parts (progress saved: continue with --resume)')
    assert late['progress']['masking_checks'] == saved['progress']['masking_checks']
    # AutoAttack starts when its first batch fits; the reason says that the estimate is for that batch
    aa = evaluate(model, x, y, **{**kw, 'attacks': ('clean', 'pgd20', 'autoattack')}, masking_checks=False,
                  previous=slow, deadline_minutes=1)
    assert ' s needed for its first batch of 2 images (all 4: about ' in aa['not_run']['autoattack']
    # the speed another machine measured does not plan this one's deadline (a CPU's would stall a GPU)
    elsewhere = evaluate(model, x, y, previous={**slow, 'hardware': {'device': 'NVIDIA H200'}}, deadline_minutes=1,
                         **kw)
    assert 'masking_checks' not in elsewhere['not_run'] and elsewhere['masking_checks']['n'] == 4
    rest = evaluate(model, x, y, previous=late, **kw)
    assert rest['complete'] and 'masking_checks' not in rest['progress'] and rest['resumed'] == ['clean', 'pgd20']
    drop = lambda m: {k: v for k, v in m.items() if k != 'seconds'}  # noqa: E731
    assert drop(rest['masking_checks']) == drop(whole)
    # progress on other images is not continued
    other = evaluate(model, x, y, previous=late, **{**kw, 'masking_n': 2})
    assert other['masking_checks']['n'] == 2 and other['masking_checks']['steps_sweep']['n'] == 2


def test_a_sweep_does_not_start_after_the_deadline():
    x, y = _data(4)
    model = tiny_fsr_net().eval()
    with pytest.raises(DeadlineReached, match='in late sweep after 0 of 2 batches'):
        run_batched(lambda xb, yb: xb, model, x, y, 8 / 255, 2, torch.device('cpu'), 'late sweep', False,
                    clock=Clock(deadline_s=0.0))


def test_strict_float32_turns_tf32_off_and_restores_it():
    b = torch.backends
    new_api = hasattr(b.cuda.matmul, 'fp32_precision')
    if new_api:
        saved = (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)
        b.cuda.matmul.fp32_precision = b.cudnn.conv.fp32_precision = 'tf32'
    try:
        with strict_float32() as info:
            assert info['tf32'] is False and info['dtype'] == 'float32'
            if new_api:
                assert b.cuda.matmul.fp32_precision == 'ieee' and b.cudnn.conv.fp32_precision == 'ieee'
        if new_api:
            assert b.cuda.matmul.fp32_precision == 'tf32' and b.cudnn.conv.fp32_precision == 'tf32'
    finally:
        if new_api:
            b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision = saved
    ev = evaluate(tiny_fsr_net(), *_data(2), attacks=('clean',), masking_checks=False, progress=False)
    report = build_report({'architecture': 'tiny'}, {'n': 2}, ev, 8 / 255, 2, 'cpu', 'cmd')
    assert report['hardware']['tf32'] is False and report['hardware']['dtype'] == 'float32'


def test_autoattack_stopped_and_resumed_equals_one_run_and_may_change_batch_size():
    # a linear model with input-dependent predictions: at eps 0.5/255 APGD-CE breaks some points, APGD-T more
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    x = _data(12, seed=3)[0]
    y = model(x).argmax(1).detach()
    eps = 0.5 / 255
    small = {'apgd': {'n_iter': 5}, 'apgd_targeted': {'n_iter': 5, 'n_target_classes': 2},
             'fab': {'n_iter': 5, 'n_target_classes': 2}, 'square': {'n_queries': 20}}
    whole = run_autoattack_resumable(model, x, y, eps, batch_size=4, overrides=small)
    assert whole.complete and whole.state.done == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    assert 0 < whole.state.robust_after['square'] < whole.state.robust_after['apgd-ce'] < 12
    calls, saved = [], []

    def stop_after_four_batches(estimate):
        calls.append(estimate)
        return len(calls) > 4

    part = run_autoattack_resumable(model, x, y, eps, batch_size=4, overrides=small,
                                    should_stop=stop_after_four_batches, on_batch=lambda st: saved.append(st.to_dict()))
    assert not part.complete and part.state.done == ['apgd-ce'] and part.state.current == 'apgd-t'
    assert calls[0] > 0 and calls[-1] > 0  # the first batch from a timed gradient evaluation, later ones measured
    state = json.loads(json.dumps(saved[-1]))  # what a report on disk holds
    resumed_calls = []
    rest = run_autoattack_resumable(model, x, y, eps, batch_size=4, overrides=small, state=state,
                                    should_stop=lambda est: resumed_calls.append(est) or False)
    assert resumed_calls[0] > 0  # the first resumed batch is estimated from the saved run's speed
    elsewhere_calls = []  # unless the state was saved on another machine: then from a gradient evaluation timed here
    run_autoattack_resumable(model, x, y, eps, batch_size=4, overrides=small, state=state, saved_speed=False,
                             should_stop=lambda est: elsewhere_calls.append(est) or True)
    assert len(elsewhere_calls) == 1 and elsewhere_calls[0] > 0
    assert rest.complete and torch.equal(rest.robust, whole.robust)
    assert rest.state.robust_after == whole.state.robust_after
    assert unpack_flags(pack_flags(whole.robust), 12).equal(whole.robust)
    with pytest.raises(ValueError, match='another run'):
        run_autoattack_resumable(model, x, y, eps, batch_size=4, overrides=small, state=state, seed=1)
    # another batch size: the points the stopped sub-attack has not attacked yet go on in the new batches
    current = unpack_flags(state['current_points'], 12).nonzero().flatten()
    attacked = state['batches_done'] * 4
    small_batches = run_autoattack_resumable(model, x, y, eps, batch_size=3, overrides=small, state=state)
    assert state == json.loads(json.dumps(saved[-1]))  # the caller's saved state is left as it was
    assert small_batches.complete and small_batches.state.done == whole.state.done
    assert small_batches.state.rebatched == [{'sub': 'apgd-t', 'after_batches': state['batches_done'], 'from': 4,
                                              'to': 3, 'attacked': attacked, 'left': len(current) - attacked}]
    assert small_batches.state.robust_after['apgd-ce'] == whole.state.robust_after['apgd-ce']
    assert not (small_batches.robust & ~unpack_flags(state['robust'], 12)).any()  # broken points stay broken
    stopped = AAState.from_dict(state)
    rebatch(stopped, 3)
    assert 'apgd-t batch 1 of ' + str(-(-(len(current) - attacked) // 3)) in stopped.describe()
    between = AAState.from_dict({**state, 'current': None, 'batches_done': 0, 'done': state['attacks'][:2]})
    assert between.describe().startswith(f"2 of {len(state['attacks'])} sub-attacks done "
                                         f"({', '.join(state['attacks'][:2])}), stopped before {state['attacks'][2]}; ")
    # progress of other sub-attack parameters, or saved without them, is refused too
    with pytest.raises(ValueError, match='sub-attack parameters'):
        run_autoattack_resumable(model, x, y, eps, batch_size=4, overrides={**small, 'square': {'n_queries': 30}},
                                 state=state)
    with pytest.raises(ValueError, match='sub-attack parameters not recorded'):
        run_autoattack_resumable(model, x, y, eps, batch_size=4, overrides=small, state={**state, 'sub_attacks': None})
    # the recorded configuration says how it departs from the original AutoAttack
    assert departures(whole.config, 'standard', eps) and 'square' in ' '.join(departures(whole.config, 'standard', eps))


@pytest.mark.parametrize('version', AA_VERSIONS)
def test_unmodified_autoattack_is_the_original(version):
    eps = 8 / 255
    config = autoattack_config(build_autoattack(torch.nn.Identity(), eps, version))
    assert departures(config, version, eps) == []
    assert departures(config, version, 4 / 255) == [f'eps {eps!r} (original: {4 / 255!r})']
    assert departures({'version': version}, version, eps) == ['sub-attacks and their parameters not recorded']


def test_a_resumed_autoattack_result_is_kept_only_if_it_was_the_original():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    x, y = _data(4, seed=1)
    cfg = autoattack_config(build_autoattack(model, 8 / 255))
    entry = {'accuracy': 0.0, 'n': 4, 'subset': 'all 4', 'params': cfg}
    previous = {'results': {'autoattack': entry}, 'per_example': {'autoattack': pack_flags(torch.zeros(4, dtype=bool))}}
    ev = evaluate(model, x, y, attacks=('autoattack',), batch_size=4, masking_checks=False, progress=False,
                  previous=previous, deadline_minutes=1e-9)
    assert ev['resumed'] == ['autoattack'] and ev['results']['autoattack'] == entry
    modified = json.loads(json.dumps(previous))
    modified['results']['autoattack']['params']['sub_attacks']['square']['n_queries'] = 100
    ev = evaluate(model, x, y, attacks=('autoattack',), batch_size=4, masking_checks=False, progress=False,
                  previous=modified, deadline_minutes=1e-9)
    assert ev['resumed'] == [] and 'autoattack' in ev['not_run']


def test_killed_verify_run_leaves_a_valid_partial_report(tmp_path, cifar_root):
    # a real verify process, killed (SIGKILL: no handler runs) while PGD-100 is under way
    model = timm.create_model('cifar_resnet18', num_classes=10)
    weights = tmp_path / 'r18.safetensors'
    save_weights(model, weights)
    out = tmp_path / 'partial.json'
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / 'tools' / 'verify.py'), '--model', 'cifar_resnet18', '--weights', str(weights),
         '--data', str(cifar_root), '--n', '2', '--batch-size', '1', '--attacks', 'clean,fgsm,pgd100',
         '--no-masking-checks', '--out', str(out), '--device', 'cpu', '--no-progress'], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and proc.poll() is None:
            if out.is_file() and 'fgsm' in json.loads(out.read_text())['results']:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    report = json.loads(out.read_text())
    assert report['schema'] == SCHEMA and report['complete'] is False
    assert set(report['results']) == {'clean', 'fgsm'}
    assert report['not_run'] == {'pgd100': PENDING, 'ensemble': 'needs pgd100'}
    assert report['hardware']['tf32'] is False and report['preset'] == 'custom'


def test_ensemble_covers_the_first_images_every_attack_ran_on():
    model, (x, y) = tiny_fsr_net(), _data(6)
    ev = evaluate(model, x, y, attacks=('clean', 'fgsm', 'pgd20'), subsets={'fgsm': 4, 'pgd20': 3}, batch_size=6,
                  masking_checks=False, progress=False)
    r = ev['results']
    flags = {a: unpack_flags(ev['per_example'][a], r[a]['n']) for a in ('clean', 'fgsm', 'pgd20')}
    assert r['ensemble']['n'] == 3 and r['ensemble']['subset'] == 'first 3'
    expected = flags['clean'][:3] & flags['fgsm'][:3] & flags['pgd20']
    assert r['ensemble']['accuracy'] == round(100.0 * expected.float().mean().item(), 2)


def test_a_resumed_report_lists_its_runs_with_their_hardware(tmp_path, cifar_root):
    weights = tmp_path / 'w.safetensors'
    save_weights(timm.create_model('cifar_resnet18', num_classes=10), weights)
    out = tmp_path / 'report.json'
    args = ['--model', 'cifar_resnet18', '--weights', str(weights), '--data', str(cifar_root), '--n', '2',
            '--no-masking-checks', '--device', 'cpu', '--no-progress', '--out', str(out)]
    assert verify.main(args + ['--attacks', 'clean']) == 0
    assert 'runs' not in json.loads(out.read_text())  # one run: its command and hardware are the report's own
    assert verify.main(args + ['--attacks', 'clean,fgsm', '--resume', str(out)]) == 0
    attached = {'eps_curve': {'model': {'sha256': json.loads(out.read_text())['model']['sha256']}, 'complete': True}}
    report = json.loads(out.read_text())
    out.write_text(json.dumps({**report, 'analysis': attached}))  # a release's results.json: analyses attached
    assert verify.main(args + ['--attacks', 'clean,fgsm', '--resume', str(out)]) == 0
    report = json.loads(out.read_text())
    assert report['analysis'] == attached
    runs = report['runs']
    assert len(runs) == 3 and runs[-1] == {'command': report['command'], 'hardware': report['hardware']}
    assert '--resume' not in runs[0]['command'] and report['resumed'] == ['clean', 'fgsm']
    assert all(r['hardware']['device'] and r['hardware']['memory_format'] == 'contiguous' for r in runs)


def test_channels_last_evaluation_runs_in_that_format_and_agrees():
    model = tiny_fsr_net()
    x, y = _data(8)
    seen = []
    model.stem[0].register_forward_pre_hook(
        lambda m, inp: seen.append(m.weight.is_contiguous(memory_format=torch.channels_last)))
    kw = dict(attacks=('clean', 'pgd20'), batch_size=8, masking_checks=False, progress=False)
    plain = evaluate(model, x, y, **kw)
    assert seen and not any(seen)
    seen.clear()
    cl = evaluate(model, x, y, channels_last=True, **kw)
    assert seen and all(seen)  # every forward of the attack ran on channels_last weights
    assert plain['precision']['memory_format'] == 'contiguous' and cl['precision']['memory_format'] == 'channels_last'
    assert cl['per_example'] == plain['per_example']  # float32 either way: the same examples survive
    assert all(p.is_contiguous() for p in model.parameters())  # the caller's model is handed back contiguous


def test_verify_cli_channels_last_is_recorded(tmp_path, cifar_root):
    torch.manual_seed(0)
    weights = tmp_path / 'r18.safetensors'
    save_weights(timm.create_model('cifar_resnet18', num_classes=10), weights)
    out = tmp_path / 'report.json'
    assert verify.main(['--model', 'cifar_resnet18', '--weights', str(weights), '--data', str(cifar_root), '--n', '4',
                        '--batch-size', '4', '--attacks', 'clean', '--no-masking-checks', '--out', str(out),
                        '--device', 'cpu', '--no-progress', '--channels-last']) == 0
    report = json.loads(out.read_text())
    assert report['hardware']['memory_format'] == 'channels_last' and '--channels-last' in report['command']


def test_autoattack_progress_on_other_images_starts_again():
    # a 1,000-image run's progress, continued by a run on all images (the GPU's full verification), is not refused
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    x = _data(6, seed=3)[0]
    y = model(x).argmax(1).detach()
    saved = []
    part = run_autoattack_resumable(model, x[:4], y[:4], 8 / 255, batch_size=2, on_batch=lambda st: saved.append(
        st.to_dict()), should_stop=lambda est: len(saved) > 0)
    assert not part.complete and saved[-1]['n'] == 4
    kw = dict(attacks=('clean', 'autoattack'), batch_size=2, masking_checks=False, progress=False)
    ev = evaluate(model, x, y, previous={'progress': {'autoattack': saved[-1]}}, **kw)
    assert ev['complete'] and ev['results']['autoattack']['n'] == 6 and 'autoattack' not in ev['progress']
    # the same images under a deadline: the stop names the batch estimate it refused, and the progress stays
    late = evaluate(model, x[:4], y[:4], previous={'progress': {'autoattack': saved[-1]}}, deadline_minutes=1e-9, **kw)
    assert re.match(r'deadline: about \d+ s needed for its next batch, 0 s left of 0\.00 min; partial: ',
                    late['not_run']['autoattack']), late['not_run']['autoattack']
    assert late['progress']['autoattack']['batches_done'] == saved[-1]['batches_done']
