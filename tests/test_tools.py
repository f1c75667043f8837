"""The benchmark command line: the trainer's step paths side by side, vanilla vs FSR, JSON out, honest warm-up."""
import json

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
