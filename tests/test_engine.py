"""Training engine: learning, exact resume after a kill, atomic checkpoints, outputs, recipe defaults, DDP."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fsr_hub.engine import (
    CheckpointError, TrainConfig, benchmark_train_step, load_checkpoint, save_checkpoint, train,
)

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
    assert (c.lr, c.momentum, c.weight_decay, c.batch_size, c.epochs, c.milestones) == (0.1, 0.9, 5e-4, 128, 100, (75, 90))
    assert c.augment and c.objective == 'at' and c.beta == 6.0
    s = TrainConfig.for_dataset('svhn', device='cpu')
    assert s.lr == 0.01 and s.alpha == pytest.approx(1 / 255) and not s.augment
    assert TrainConfig.for_dataset('svhn', device='cpu', lr=0.05).lr == 0.05
    with pytest.raises(ValueError, match='dataset'):
        TrainConfig.for_dataset('mnist')


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


def test_resume_after_kill_is_exact(tmp_path):
    data = separable_data(128)
    ref = train(tiny_config(tmp_path / 'ref'), model=tiny_fsr_net(), data=data)

    def kill(epoch, step):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt  # killed in the middle of epoch 2

    cfg = tiny_config(tmp_path / 'run')
    with pytest.raises(KeyboardInterrupt):
        train(cfg, model=tiny_fsr_net(), data=data, step_callback=kill)
    assert load_checkpoint(tmp_path / 'run' / 'last.pt')['epoch'] == 1
    res = train(replace(cfg, resume=True), model=tiny_fsr_net(), data=data)
    ref_sd, res_sd = ref.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(ref_sd[k], res_sd[k]) for k in ref_sd)
    drop = ('epoch_seconds', 'images_per_second', 'holdout_seconds')
    strip = lambda hs: [{k: v for k, v in h.items() if k not in drop} for h in hs]  # noqa: E731
    assert strip(res.history) == strip(ref.history)
    # the summary counts every epoch, including those run before the kill, and the earlier process's time
    assert len(res.summary['epoch_seconds']) == len(ref.summary['epoch_seconds']) == len(ref.history)
    assert res.summary['wall_clock_seconds'] >= sum(res.summary['epoch_seconds'])


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'last.pt'
    save_checkpoint({'format': 'fsr-hub/ckpt/v1', 'epoch': 1, 'w': torch.ones(3)}, path)

    def crash(obj, f):
        f.write(b'partial garbage')
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'format': 'fsr-hub/ckpt/v1', 'epoch': 2}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state['epoch'] == 1 and torch.equal(state['w'], torch.ones(3))
    (tmp_path / 'bad.pt').write_bytes(b'garbage')
    with pytest.raises(CheckpointError, match='unreadable'):
        load_checkpoint(tmp_path / 'bad.pt')
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'missing.pt')


def test_outputs_and_amp_path(tmp_path):
    # bf16 autocast + channels_last (the GPU defaults) exercised on CPU; fp16 safetensors
    cfg = tiny_config(tmp_path, epochs=2, amp=True, channels_last=True, fp16=True)
    res = train(cfg, model=tiny_fsr_net(), data=separable_data(96), command='python tools/train.py --test')
    summary = json.loads((tmp_path / 'train_summary.json').read_text())
    for key in ('config', 'history', 'wall_clock_seconds', 'hardware', 'epoch_seconds', 'command', 'weights', 'best'):
        assert key in summary
    assert summary['command'] == 'python tools/train.py --test' and len(summary['history']) == 2
    with safe_open(str(tmp_path / 'final.safetensors'), 'pt') as f:
        assert f.metadata()['epoch'] == '2' and 'architecture' in f.metadata()
        assert all(f.get_tensor(k).dtype in (torch.float16, torch.int64) for k in f.keys())
    assert (tmp_path / 'best.safetensors').is_file() == (summary['best'] is not None)
    assert res.history[-1]['best_epoch'] in (1, 2)
    ckpt = torch.load(tmp_path / 'last.pt', weights_only=True)
    assert {'model', 'optimizer', 'scheduler', 'rng', 'epoch', 'history'} <= set(ckpt)


def test_no_holdout_means_no_best(tmp_path):
    res = train(tiny_config(tmp_path, epochs=1, holdout=0), model=tiny_fsr_net(), data=separable_data(64))
    assert res.summary['best'] is None and not (tmp_path / 'best.safetensors').exists()


def test_train_cli_errors(tmp_path):
    sys.path.insert(0, str(REPO / 'tools'))
    try:
        import train as train_tool
    finally:
        sys.path.pop(0)
    assert train_tool.main(['--data', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'o'), '--device', 'cpu']) == 2
    assert train_tool.main(['--objective', 'nope', '--device', 'cpu']) == 2


def test_benchmark_step_on_cpu():
    r = benchmark_train_step(tiny_fsr_net(), batch_size=8, batches=1, warmup=1, steps=2, amp=True)
    assert r['images_per_second'] > 0 and r['seconds_per_epoch'] > 0


DDP_WORKER = '''
import os, sys, torch
sys.path.insert(0, {tests!r}); sys.path.insert(0, {repo!r})
from conftest import tiny_fsr_net, separable_data
from fsr_hub.engine import TrainConfig, train
cfg = TrainConfig(out={out!r}, epochs=1, batch_size=32, holdout=16, eval_batch_size=16, eval_steps=2, steps=2,
                  device='cpu', progress=False, max_train_images=64, fsr_loss={fsr_loss!r})
res = train(cfg, model=tiny_fsr_net(), data=separable_data(80))
rank = int(os.environ['RANK'])
torch.save({{k: v for k, v in res.model.named_parameters()}}, {out!r} + f'/params_rank{{rank}}.pt')
'''


@pytest.mark.parametrize('fsr_loss', [True, False])  # without FSR losses the aux heads are unused parameters
def test_ddp_two_cpu_processes(tmp_path, fsr_loss):
    script = tmp_path / 'worker.py'
    script.write_text(DDP_WORKER.format(tests=str(TESTS), repo=str(REPO), out=str(tmp_path), fsr_loss=fsr_loss))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p0 = torch.load(tmp_path / 'params_rank0.pt', weights_only=True)
    p1 = torch.load(tmp_path / 'params_rank1.pt', weights_only=True)
    init = dict(tiny_fsr_net().named_parameters())
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    assert any(not torch.equal(p0[k], init[k].detach()) for k in p0)  # it did train
    assert (tmp_path / 'last.pt').is_file() and (tmp_path / 'train_summary.json').is_file()
    summary = json.loads((tmp_path / 'train_summary.json').read_text())
    assert summary['hardware']['world_size'] == 2
    assert proc.stdout.count('"epoch": 1') == 1  # only rank 0 prints metrics
