"""Training engine: learning, exact resume after a kill, atomic checkpoints, outputs written as they appear,
time budgets, natural training, recipe defaults, the step paths, DDP."""
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fsr_hub.benchmark import benchmark_train_step
from fsr_hub.hardware import hardware_name
from fsr_hub.engine import CheckpointError, TrainConfig, load_checkpoint, save_checkpoint, train
from fsr_hub.objectives import AdversarialObjective, ObjectiveConfig
from fsr_hub.schedule import default_eval_every, eval_epochs, lr_milestones
from fsr_hub.schemas import CKPT_FORMAT, TRAIN_SCHEMA
from fsr_hub.step import TrainStep, build_optimizer
from fsr_hub.train_config import with_epochs
from fsr_hub.train_summary import plain_config
from fsr_hub.weights import sha256_file
from tools.train import build_parser
from tools.train import main as train_main

from conftest import separable_data, tiny_fsr_net

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def tiny_config(out, **kw) -> TrainConfig:
    base = dict(out=str(out), epochs=2, batch_size=32, holdout=32, eval_batch_size=32, eval_steps=3, steps=3,
                device='cpu', progress=False, milestones=(1,))
    base.update(kw)
    return TrainConfig(**base)


def test_recipe_defaults():
    c = TrainConfig.for_dataset('cifar10', device='cpu')
    assert (c.eps, c.alpha, c.steps, c.random_start) == (8 / 255, 2 / 255, 10, True)
    assert ((c.lr, c.momentum, c.weight_decay, c.batch_size, c.epochs, c.milestones)
            == (0.1, 0.9, 5e-4, 128, 100, (75, 90)))
    assert c.augment and c.objective == 'at' and c.beta == 6.0 and c.step == 'eager' and c.eval_every == 10
    assert TrainConfig.for_dataset('cifar10', device='cpu', epochs=20).milestones == (15, 18)
    n = TrainConfig.for_dataset('cifar10', device='cpu', objective='natural')
    assert (n.lr, n.momentum, n.weight_decay, n.milestones) == (0.1, 0.9, 5e-4, (50, 75))
    s = TrainConfig.for_dataset('svhn', device='cpu')
    assert s.lr == 0.01 and s.alpha == pytest.approx(1 / 255) and not s.augment
    assert TrainConfig.for_dataset('svhn', device='cpu', lr=0.05).lr == 0.05
    with pytest.raises(ValueError, match='dataset'):
        TrainConfig.for_dataset('mnist')
    with pytest.raises(ValueError, match='cuda-graph'):
        TrainConfig(device='cpu', step='cuda-graph').resolved()
    with pytest.raises(ValueError, match='time_budget'):
        TrainConfig(device='cpu', time_budget=0).resolved()


def test_with_epochs_refills_only_what_resolution_filled():
    # given values equal to the old count's defaults are still given: a budget fixing 8 epochs keeps them
    given = TrainConfig(device='cpu', epochs=30, eval_every=3, milestones=(22, 27))
    assert (given.eval_every, given.milestones) == (default_eval_every(30), lr_milestones(30))
    planned = with_epochs(given, 8)
    assert (planned.epochs, planned.eval_every, planned.milestones) == (8, 3, (22, 27))
    # what resolution filled in (here through for_dataset) follows the new count, also after a second plan
    filled = TrainConfig.for_dataset('cifar10', device='cpu', epochs=30)
    assert (filled.eval_every, filled.milestones) == (3, (22, 27))
    for n in (10, 8):
        filled = with_epochs(filled, n)
        assert (filled.eval_every, filled.milestones) == (default_eval_every(n), lr_milestones(n))
    # a value set in place of a filled-in one is the user's
    assert with_epochs(replace(filled, eval_every=2), 20).eval_every == 2
    assert 'defaulted' not in plain_config(filled)


def test_at_reduces_adversarial_loss(tmp_path):
    data = separable_data(192)
    res = train(tiny_config(tmp_path, epochs=4, milestones=(10,), lr=0.05), model=tiny_fsr_net(), data=data)
    losses = [h['train_loss'] for h in res.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert res.history[-1]['holdout_pgd_acc'] > 20.0  # 10 classes: chance is 10%


@pytest.mark.parametrize('objective', ['trades', 'mart'])
def test_trades_mart_run(tmp_path, objective):
    res = train(tiny_config(tmp_path, epochs=1, objective=objective), model=tiny_fsr_net(), data=separable_data(96))
    h = res.history[0]
    assert h['train_nat_acc'] is not None and torch.isfinite(torch.tensor(h['train_loss']))


def test_budgeted_run_resumed_after_kill_equals_epochs_run(tmp_path):
    # the reference plans under a time budget that fits the 2-epoch cap; the same config with epochs=2 (no budget),
    # killed in the middle of epoch 2 and resumed, must give bit-identical weights, history and best weights
    data = separable_data(128)
    ref = train(tiny_config(tmp_path / 'ref', time_budget=10.0), model=tiny_fsr_net(), data=data)
    budget = ref.summary['budget']
    assert budget['epochs'] == 2 and budget['fits'] and budget['max_epochs'] == 2
    assert budget['measured']['seconds_per_epoch'] > 0 and budget['measured']['evaluation_seconds'] > 0
    assert '--epochs 2' in budget['reproduce'] and budget['stopped_after_epoch'] is None

    def kill(epoch, step):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt  # killed in the middle of epoch 2

    cfg = tiny_config(tmp_path / 'run')
    with pytest.raises(KeyboardInterrupt):
        train(cfg, model=tiny_fsr_net(), data=data, step_callback=kill, command='train first')
    out = tmp_path / 'run'
    assert load_checkpoint(out / 'last.pt')['epoch'] == 1
    # what a copy taken now finds: the summary of epoch 1 and the best weights it names
    partial = json.loads((out / 'train_summary.json').read_text())
    assert partial['schema'] == TRAIN_SCHEMA and not partial['complete'] and len(partial['history']) == 1
    assert partial['weights']['final'] is None and not (out / 'final.safetensors').exists()
    assert partial['weights']['best']['sha256'] == sha256_file(out / 'best.safetensors')
    with safe_open(str(out / 'best.safetensors'), 'pt') as f:
        assert f.metadata()['epoch'] == '1'
    res = train(replace(cfg, resume=True), model=tiny_fsr_net(), data=data, command='train second --resume')
    ref_sd, res_sd = ref.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(ref_sd[k], res_sd[k]) for k in ref_sd)
    drop = ('epoch_seconds', 'images_per_second', 'holdout_seconds')
    strip = lambda hs: [{k: v for k, v in h.items() if k not in drop} for h in hs]  # noqa: E731
    assert strip(res.history) == strip(ref.history)
    ref_best, res_best = (load_file(str(d / 'best.safetensors')) for d in (tmp_path / 'ref', out))
    assert res.summary['best'] == ref.summary['best'] and all(torch.equal(ref_best[k], res_best[k]) for k in ref_best)
    assert res.summary['complete'] and res.summary['budget'] is None
    # the summary counts every epoch, including those run before the kill, and the earlier process's time
    assert len(res.summary['epoch_seconds']) == len(ref.summary['epoch_seconds']) == len(ref.history)
    assert res.summary['wall_clock_seconds'] >= sum(res.summary['epoch_seconds'])
    # and each process: the epochs it ran, its time, device and command
    cpu = hardware_name(torch.device('cpu'))
    (one,) = ref.summary['processes']
    assert one['epochs'] == [1, 2] and one['device'] == cpu
    assert one['seconds'] == pytest.approx(ref.summary['wall_clock_seconds'], abs=0.01)
    first, second = res.summary['processes']
    assert (first['epochs'], first['command'], second['epochs'], second['command']) == (
        [1, 1], 'train first', [2, 2], 'train second --resume')
    assert first['device'] == second['device'] == cpu
    assert first['seconds'] + second['seconds'] == pytest.approx(res.summary['wall_clock_seconds'], abs=0.01)


def test_a_checkpoint_without_process_records_resumes_with_one_for_its_epochs(tmp_path):
    # last.pt as written before checkpoints kept the processes (the first lease of fsr_resnet18.at_cifar10)
    data, cfg = separable_data(128), tiny_config(tmp_path, epochs=3)

    def kill(epoch, step):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, model=tiny_fsr_net(), data=data, step_callback=kill, command='train first')
    ckpt = load_checkpoint(tmp_path / 'last.pt')
    del ckpt['processes']
    save_checkpoint(ckpt, tmp_path / 'last.pt')
    res = train(replace(cfg, resume=True), model=tiny_fsr_net(), data=data, command='train again')
    first, second = res.summary['processes']
    assert first == {'epochs': [1, 2], 'seconds': round(ckpt['wall_clock_seconds'], 3),
                     'device': hardware_name(torch.device('cpu')), 'command': 'train first'}
    assert second['epochs'] == [3, 3] and second['command'] == 'train again'


def test_time_budget_fixes_the_epochs_and_ends_in_time(tmp_path):
    budget_s = 4.0
    # for_dataset fills in the milestones of 1000 epochs: the plan replaces them with those of the planned count
    kw = {k: v for k, v in vars(tiny_config(tmp_path)).items() if k not in ('dataset', 'milestones')}
    # the overfitting guard is off: on 16 held-out images of a tiny model it may stop the run, which is not this test
    cfg = TrainConfig.for_dataset('cifar10', **{**kw, 'epochs': 1000, 'time_budget': budget_s / 60, 'guard': False})
    assert cfg.milestones == (750, 900)
    t = time.monotonic()
    res = train(cfg, model=tiny_fsr_net(), data=separable_data(96), clock_start=t)
    elapsed = time.monotonic() - t
    plan, config = res.summary['budget'], res.summary['config']
    n = plan['epochs']
    assert 1 <= n < 1000 and config['epochs'] == n
    assert config['milestones'] == list(lr_milestones(n)) and config['eval_every'] == default_eval_every(n)
    assert res.summary['evaluation']['epochs'] == list(eval_epochs(n, default_eval_every(n)))
    ran = len(res.history)
    assert ran == n or plan['stopped_after_epoch'] == ran  # the guard may stop a run that slows down
    if plan['fits']:  # within the budget, give or take the one epoch the guard cannot foresee on a loaded machine
        assert elapsed <= budget_s + max(h['epoch_seconds'] for h in res.history) + 1.0, (elapsed, plan)
    else:  # a machine too slow for even one epoch in the budget trains one, and the plan says so
        assert n == ran == 1


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'last.pt'
    save_checkpoint({'format': CKPT_FORMAT, 'epoch': 1, 'w': torch.ones(3)}, path)

    def crash(obj, f):
        f.write(b'partial garbage')
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'format': CKPT_FORMAT, 'epoch': 2}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state['epoch'] == 1 and torch.equal(state['w'], torch.ones(3))
    (tmp_path / 'bad.pt').write_bytes(b'garbage')
    with pytest.raises(CheckpointError, match='unreadable'):
        load_checkpoint(tmp_path / 'bad.pt')
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'missing.pt')
    # a pickle with an object in it is refused in one line, without torch's advice to load it unsafely
    torch.save({'format': CKPT_FORMAT, 'when': datetime.date(2026, 12, 4)}, tmp_path / 'object.pt')
    reason = r'unreadable by torch\.load\(weights_only=True\): UnpicklingError: WeightsUnpickler error: Unsupported'
    with pytest.raises(CheckpointError, match=reason) as info:
        load_checkpoint(tmp_path / 'object.pt')
    assert '\n' not in str(info.value) and 'datetime.date' in str(info.value) and 'False' not in str(info.value)


def test_outputs_and_amp_path(tmp_path):
    # bf16 autocast + channels_last (the GPU defaults) exercised on CPU; fp16 safetensors
    cfg = tiny_config(tmp_path, epochs=2, amp=True, channels_last=True, fp16=True)
    res = train(cfg, model=tiny_fsr_net(), data=separable_data(96), command='python tools/train.py --test')
    summary = json.loads((tmp_path / 'train_summary.json').read_text())
    for key in ('config', 'history', 'wall_clock_seconds', 'hardware', 'epoch_seconds', 'command', 'weights', 'best',
                'schedule', 'evaluation', 'budget'):
        assert key in summary
    assert summary['command'] == 'python tools/train.py --test' and len(summary['history']) == 2
    assert summary['complete'] and summary['hardware']['step'] == 'eager' and summary['budget'] is None
    assert summary['weights']['final']['sha256'] == sha256_file(tmp_path / 'final.safetensors')
    with safe_open(str(tmp_path / 'final.safetensors'), 'pt') as f:
        assert f.metadata()['epoch'] == '2' and 'architecture' in f.metadata()
        assert all(f.get_tensor(k).dtype in (torch.float16, torch.int64) for k in f.keys())
    assert (tmp_path / 'best.safetensors').is_file() == (summary['best'] is not None)
    assert res.history[-1]['best_epoch'] in (1, 2)
    ckpt = torch.load(tmp_path / 'last.pt', weights_only=True)
    assert {'model', 'optimizer', 'rng', 'epoch', 'history', 'best', 'best_sha256', 'budget'} <= set(ckpt)
    assert not list(tmp_path.glob('*.tmp')) and not list(tmp_path.glob('*.probe'))


def test_no_holdout_means_no_best(tmp_path):
    res = train(tiny_config(tmp_path, epochs=1, holdout=0), model=tiny_fsr_net(), data=separable_data(64))
    assert res.summary['best'] is None and not (tmp_path / 'best.safetensors').exists()
    assert res.summary['evaluation']['epochs'] == []


def test_natural_training(tmp_path):
    res = train(tiny_config(tmp_path, objective='natural', epochs=4, lr=0.05, milestones=(10,)), model=tiny_fsr_net(),
                data=separable_data(192))
    h = res.history
    assert all(e['train_adv_acc'] is None and e['holdout_pgd_acc'] is None for e in h)
    assert h[-1]['train_loss'] < 0.8 * h[0]['train_loss'] and h[-1]['holdout_clean_acc'] > 20.0, h  # chance: 10%
    assert res.summary['best']['selected_by'].startswith('clean accuracy')
    assert 'He et al. 2016' in res.summary['schedule']['rule']


def test_train_cli_help_and_errors(tmp_path, capsys):
    text = build_parser().format_help()
    assert '--time-budget' in text and '--step' in text and 'natural' in text
    assert '(default: None)' not in text
    for line in text.split('\n  --')[1:]:  # each option's help names its default once
        assert line.count('default') <= 1, line
    assert train_main(['--data', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'o'), '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: CIFAR-10 not found') and 'download=True' in err and 'shared' not in err
    with pytest.raises(SystemExit) as e:
        train_main(['--objective', 'nope', '--device', 'cpu'])
    assert e.value.code == 2
    assert train_main(['--step', 'cuda-graph', '--device', 'cpu']) == 2
    assert 'cuda-graph' in capsys.readouterr().err


def test_eager_and_compiled_steps_agree_on_cpu():
    # the compile path runs the same step body through torch.compile; the aot_eager backend traces forward and
    # backward like inductor does but needs no C++ compiler, so this stays cheap (inductor itself: tests/test_cuda.py)
    def losses(mode):
        model = tiny_fsr_net()
        obj = AdversarialObjective(model, ObjectiveConfig(steps=2))
        step = TrainStep(obj, build_optimizer(model, 0.05, 0.9, 5e-4, mode, torch.device('cpu')), mode=mode,
                         compile_backend='aot_eager')
        g = torch.Generator().manual_seed(1)
        torch.manual_seed(5)  # random start and Gumbel noise
        out = [step(torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
        return torch.stack(out), model

    (eager, m_eager), (compiled, m_compiled) = losses('eager'), losses('compile')
    assert eager[0, 0] != eager[1, 0]  # two different batches
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for p, q in zip(m_eager.parameters(), m_compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_benchmark_step_on_cpu():
    r = benchmark_train_step(tiny_fsr_net(), batch_size=8, batches=1, steps=2, amp=True)
    assert r['images_per_second'] > 0 and r['seconds_per_epoch'] > 0
    assert r['warmup_steps'] == 2 and not r['includes_setup'] and r['timed_steps'] == 1


DDP_WORKER = '''
import os, sys, torch
sys.path.insert(0, {tests!r}); sys.path.insert(0, {repo!r})
from conftest import tiny_fsr_net, separable_data
from fsr_hub.engine import TrainConfig, train
rank = int(os.environ['RANK'])
for fsr_loss in (True, False):  # without FSR losses the aux heads are unused parameters DDP must be told about
    out = os.path.join({out!r}, f'fsr_loss_{{fsr_loss}}')
    cfg = TrainConfig(out=out, epochs=1, batch_size=32, holdout=16, eval_batch_size=16, eval_steps=2, steps=2,
                      device='cpu', progress=False, max_train_images=64, fsr_loss=fsr_loss)
    res = train(cfg, model=tiny_fsr_net(), data=separable_data(80))
    torch.save({{k: v for k, v in res.model.named_parameters()}}, os.path.join(out, f'params_rank{{rank}}.pt'))
'''


@pytest.mark.slow  # a torchrun launch of two processes: ~10 s on 2 cores
def test_ddp_two_cpu_processes(tmp_path):
    # one torchrun launch trains twice (with and without the FSR losses): the start-up is paid once
    script = tmp_path / 'worker.py'
    script.write_text(DDP_WORKER.format(tests=str(TESTS), repo=str(REPO), out=str(tmp_path)))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    init = dict(tiny_fsr_net().named_parameters())
    for fsr_loss in (True, False):
        out = tmp_path / f'fsr_loss_{fsr_loss}'
        p0 = torch.load(out / 'params_rank0.pt', weights_only=True)
        p1 = torch.load(out / 'params_rank1.pt', weights_only=True)
        assert all(torch.equal(p0[k], p1[k]) for k in p0)
        assert any(not torch.equal(p0[k], init[k].detach()) for k in p0)  # it did train
        aux = [k for k in p0 if '.aux.' in k]
        assert aux and all(torch.equal(p0[k], init[k].detach()) != fsr_loss for k in aux if k.endswith('weight'))
        assert (out / 'last.pt').is_file()
        summary = json.loads((out / 'train_summary.json').read_text())
        assert summary['hardware']['world_size'] == 2 and summary['complete']
    assert proc.stdout.count('"epoch": 1') == 2  # only rank 0 prints metrics, once per run
