"""The benchmark command line: the trainer's step paths side by side, vanilla vs FSR, JSON out, honest warm-up."""
import json

from tools.benchmark import main as benchmark_main

ARGS = ['--device', 'cpu', '--batches', '1', '--batch-size', '2', '--steps', '1', '--no-eval']


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
