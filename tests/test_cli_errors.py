"""Bad command-line values get one clear line (exit 2) before any work: no traceback, no epoch trained first."""
import pytest
import torch

from fsr_hub.hardware import resolve_device
from fsr_hub.models import create
from fsr_hub.weights import save_weights
from tools.cost_report import main as cost_main
from tools.train import main as train_main
from tools.verify import main as verify_main

from conftest import write_cifar_batches

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message of a machine without CUDA')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return write_cifar_batches(tmp_path_factory.mktemp('cifar'), n_train=10, n_test=4)


def _one_line_error(capsys, message: str) -> None:
    err = capsys.readouterr().err
    assert message in err and err.strip().count('\n') == 0 and 'Traceback' not in err, err


@pytest.mark.parametrize('name, message', [
    ('cpu', None), ('bogus', "device 'bogus': Expected one of"),
    pytest.param('cuda', "device 'cuda': CUDA is not available on this machine", marks=NO_CUDA)])
def test_resolve_device(name, message):
    if message is None:
        assert resolve_device(name) == torch.device('cpu')
    else:
        with pytest.raises(ValueError, match=message):
            resolve_device(name)


@pytest.mark.parametrize('extra, message', [
    pytest.param(['--device', 'cuda'], 'CUDA is not available on this machine', marks=NO_CUDA),
    (['--fsr-hidden', '-1'], 'FSR hidden (the width of its nets) must be a positive integer, got -1'),
    (['--max-train-images', '0'], 'max_train_images must be positive, got 0'),
    (['--eps', '-1'], 'eps must be >= 0, got -1.0'),
    (['--out', '{file}'], 'is a file, not a folder'),
    (['--attack', 'fgsm-rs', '--objective', 'trades'], '--attack fgsm-rs with --objective trades: TRADES starts'),
    (['--attack', 'n-fgsm', '--steps', '3'], '--attack n-fgsm takes one step; --steps 3 is for --attack pgd'),
    (['--schedule', 'cyclic', '--milestones', '1'], 'milestones are for the piecewise schedule'),
    (['--guard', '--holdout', '0'], 'the overfitting guard attacks held-out images'),
    (['--guard-drop', '0'], 'guard_drop must be a positive number of points, got 0.0'),
])
def test_train_refuses_before_training(data, tmp_path, capsys, extra, message):
    (tmp_path / 'a_file').write_text('x')
    extra = [e.format(file=tmp_path / 'a_file') for e in extra]
    argv = ['--data', str(data), '--out', str(tmp_path / 'run'), '--epochs', '1', '--batch-size', '4',
            '--holdout', '2', '--no-progress', '--device', 'cpu', *extra]
    assert train_main(argv) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('extra, message', [
    (['--iters', '0'], '--batch-size and --iters must be positive'),
    (['--batch-size', '0'], '--batch-size and --iters must be positive'),
    (['--json', '/nonexistent/folder/cost.json'], 'the folder /nonexistent/folder does not exist'),
])
def test_cost_report_refuses_bad_values(capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        cost_main(['--models', 'fsr_resnet18', '--no-latency', *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_verify_refuses_a_bad_eps_and_more_images_than_the_test_set(data, tmp_path, capsys):
    weights = tmp_path / 'w.safetensors'
    save_weights(create('fsr_resnet18'), weights, dtype=torch.float16)
    common = ['--model', 'fsr_resnet18', '--weights', str(weights), '--data', str(data), '--attacks',
              'clean', '--no-masking-checks', '--device', 'cpu', '--no-progress']
    assert verify_main([*common, '--eps', '-1']) == 2
    _one_line_error(capsys, '--eps must lie in (0, 1]')
    assert verify_main([*common, '--n', '5']) == 2
    _one_line_error(capsys, '--n 5: the cifar10 test set has 4 images.')
    assert verify_main([*common, '--n', '4', '--resume', str(tmp_path / 'none.json')]) == 0
    assert 'note: --resume' in capsys.readouterr().err


def test_main_job_refuses_an_empty_tag(capsys):
    from fsr_hub.__main__ import main
    assert main(['--model', 'fsr_resnet18.']) == 2
    _one_line_error(capsys, '--model fsr_resnet18.: nothing after the dot')


def test_analyze_attach_names_an_unreadable_results_file(tmp_path, capsys):
    from release_builders import load_tool
    (tmp_path / 'r.json').write_text('not json')
    assert load_tool('analyze').main(['attach', str(tmp_path / 'r.json'), str(tmp_path / 'a.json')]) == 2
    _one_line_error(capsys, 'r.json: not a readable results.json of tools/verify.py')
