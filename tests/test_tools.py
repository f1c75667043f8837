"""The benchmark command line runs end to end on the CPU and prints the FSR / vanilla ratios."""
from tools.benchmark import main as benchmark_main


def test_benchmark_cli_prints_side_by_side_ratio(capsys):
    assert benchmark_main(['--device', 'cpu', '--batches', '1', '--warmup', '0', '--batch-size', '2',
                           '--eval-batch-size', '2', '--steps', '1']) == 0
    out = capsys.readouterr().out
    assert 'cifar_resnet18: fvcore 0.5567 GMAC/img' in out and 'fsr_resnet18: fvcore 0.5767 GMAC/img' in out
    assert 'FSR / vanilla: train epoch time x' in out and 'MACs x1.0360' in out
