"""The benchmark command line (the trainer's step paths side by side, vanilla vs FSR, JSON out, honest warm-up), the
A/B script and the gradient diagnostics of issue 26."""
import json

import pytest
import torch

import tools.benchmark as benchmark
from fsr_hub.hardware import cpu_bf16_isa
from tools.benchmark import main as benchmark_main

ARGS = ['--device', 'cpu', '--paths', 'eager', '--batches', '1', '--batch-size', '2', '--steps', '1', '--no-eval']


def test_benchmark_cli_side_by_side_and_json(capsys, tmp_path):
    out = tmp_path / 'bench.json'
    assert benchmark_main(ARGS + ['--warmup', '1', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'cifar_resnet18: fvcore 0.5567 GMAC/img' in text and 'fsr_resnet18: fvcore 0.5767 GMAC/img' in text
    assert 'FSR / vanilla: train epoch time eager x' in text and 'MACs x1.0360' in text
    doc = json.loads(out.read_text())
    eager = doc['paths']['eager']
    assert doc['fastest'] == 'eager' and eager['status'] == 'ok' and eager['timed_steps'] == 1
    assert eager['seconds_per_epoch'] > 0 and eager['vanilla']['seconds_per_epoch'] > 0
    assert doc['device'].startswith('cpu') and not doc['includes_setup']


def test_benchmark_cli_warmup_zero_gives_no_ratio(capsys, tmp_path):
    out = tmp_path / 'bench.json'
    assert benchmark_main(ARGS + ['--warmup', '0', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'ratio and fastest path not given' in text and 'train epoch time eager x' not in text
    doc = json.loads(out.read_text())
    assert doc['includes_setup'] and doc['fastest'] is None and doc['paths']['eager']['fsr_over_vanilla'] is None


def test_benchmark_cli_errors(capsys):
    assert benchmark_main(['--device', 'cpu', '--paths', 'cuda-graph']) == 2
    assert 'needs a CUDA device' in capsys.readouterr().err


def test_benchmark_cli_time_cap_skips_what_does_not_fit(capsys, tmp_path):
    out = tmp_path / 'bench.json'
    assert benchmark_main(['--device', 'cpu', '--seconds', '0.5', '--json', str(out)]) == 1  # no path measured
    assert 'skipped (--seconds cap)' in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc['paths']['eager']['status'].startswith('skipped') and doc['fastest'] is None and doc['seconds'] < 5


def test_benchmark_cpu_defaults_time_compile_beside_eager_and_float32(capsys, tmp_path, monkeypatch):
    # the timings are faked (no compilation here): what is checked is which steps are timed, with what precision,
    # and that the speed-ups over float32 eager are printed side by side in one run
    calls = []

    def fake(model, objective, batch_size, batches, warmup, device, amp, channels_last, step, steps, max_seconds):
        calls.append((type(model).__name__, step, amp, channels_last))
        seconds = {'eager': 200.0, 'compile': 100.0}[step] * (1 if amp else 2)
        return {'images_per_second': 50_000 / seconds, 'seconds_per_epoch': seconds, 'warmup_steps': 2,
                'warmup_seconds': 1.0, 'timed_steps': 1, 'includes_setup': False}

    monkeypatch.setattr(benchmark, 'benchmark_train_step', fake)
    monkeypatch.setattr(benchmark, 'fast_precision', lambda device: True)  # as on a CPU with bf16 instructions
    out = tmp_path / 'bench.json'
    assert benchmark_main(['--device', 'cpu', '--steps', '1', '--no-eval', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'bf16 autocast True | channels_last True' in text and 'paths eager, compile' in text
    assert 'speed-up over float32 eager (400 s/epoch' in text and 'eager x2.00' in text and 'compile x4.00' in text
    steps = [(s, a, c) for _, s, a, c in calls]
    assert steps[:3] == [('eager', True, True), ('compile', True, True), ('eager', False, False)]  # FSR rows first
    doc = json.loads(out.read_text())
    assert doc['speedup_over_fp32_eager'] == {'eager': 2.0, 'compile': 4.0} and doc['fastest'] == 'compile'
    assert doc['cpu_bf16_isa'] == cpu_bf16_isa() and doc['paths']['fp32-eager']['seconds_per_epoch'] == 400.0


def test_ab_script_builds_valid_trainer_commands_and_a_table(tmp_path):
    import argparse

    import tools.ab_fast_train as ab
    from tools.train import build_parser
    args = argparse.Namespace(data='D', out=str(tmp_path), epochs=2, max_train_images=2048, holdout=200, eval_steps=10,
                              batch_size=64, seed=0)
    parsed = {name: build_parser().parse_args(ab.command(name, args)[2:]) for name in ab.VARIANTS}
    assert all(p.epochs == 2 and p.max_train_images == 2048 and p.batch_size == 64 and p.eval_amp and not p.guard
               for p in parsed.values())
    assert all(p.attack == 'fgsm-rs' for name, p in parsed.items() if name != 'n-fgsm')
    assert parsed['base'].milestones == (7, 9) and parsed['base'].amp is None and parsed['base'].seed == 0
    assert parsed['cyclic'].schedule == 'cyclic' and parsed['cyclic'].milestones is None
    assert parsed['fp32'].amp is False and parsed['seed1'].seed == 1 and parsed['n-fgsm'].attack == 'n-fgsm'
    assert parsed['vanilla'].model == 'cifar_resnet18' and parsed['no-fsr-loss'].fsr_loss is False
    (tmp_path / 'base').mkdir()
    (tmp_path / 'base' / 'train_summary.json').write_text(json.dumps({'history': [
        {'epoch': 1, 'lr': 0.1, 'train_adv_acc': 20.5, 'holdout_clean_acc': 25.0, 'holdout_pgd_acc': 18.5,
         'epoch_seconds': 100.4, 'holdout_seconds': 30.2}]}))
    text = ab.table(tmp_path, ['base', 'fp32'])
    assert '| base | 1 | 0.1 | 20.5 | 25.0 | 18.5 | 100 | 30 |' in text and '| fp32 | - |' in text


def test_grad_check_reports_on_a_tiny_fsr_net():
    import tools.grad_check as gc
    from conftest import tiny_fsr_net
    model = tiny_fsr_net()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    report = gc.precision_report(model, x, y)
    assert {'backbone', 'fc', 'fsr separation', 'fsr recalibration', 'fsr aux heads'} <= set(report)
    assert all(-1.0 <= r['cos'] <= 1.0 + 1e-6 and r['norm_ratio'] > 0 for r in report.values())
    assert report['fc']['cos'] > 0.9  # bf16 rounding, not another gradient
    split = gc.split_report(model, x, y)
    assert split['norm_ratio'] > 0 and -1.0 <= split['cos'] <= 1.0 + 1e-6
    same = gc._grads(model, x, y, amp=False)
    assert gc._compare(same, same, gc.GROUPS['backbone'])['cos'] == pytest.approx(1.0)


def test_eval_formats_benchmark_times_both_formats_side_by_side(capsys, tmp_path):
    from fsr_hub.benchmark import compare_eval_formats
    from tools.benchmark_eval import main as eval_formats_main
    from conftest import tiny_fsr_net
    model = tiny_fsr_net()
    r = compare_eval_formats(model, batch_size=4, rounds=2, repeats=1)
    for fmt in ('contiguous', 'channels_last'):
        assert r[fmt]['gradient'] > 0 and r[fmt]['forward'] > 0
    assert r['speedup']['gradient'] == pytest.approx(r['contiguous']['gradient'] / r['channels_last']['gradient'])
    assert r['max_logit_difference'] < 1e-4 and all(p.is_contiguous() for p in model.parameters())
    with pytest.raises(ValueError, match='positive'):
        compare_eval_formats(model, rounds=0)
    out = tmp_path / 'f.json'
    assert eval_formats_main(['--model', 'cifar_resnet18', '--device', 'cpu', '--batch-size', '2', '--rounds', '1',
                              '--repeats', '1', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'channels_last speed-up x' in text and 'forward' in text and 'gradient' in text
    assert json.loads(out.read_text())['speedup']['forward'] > 0
    assert eval_formats_main(['--device', 'cpu', '--rounds', '0']) == 2
    assert 'error:' in capsys.readouterr().err
