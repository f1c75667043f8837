"""A timm CNN with FSR through the whole pipeline: tools/train.py --fsr-*, tools/verify.py (model_args from the
train summary), tools/cost_report.py --model, and a release folder (config.json, card, validation, loading).
timm's ``test_resnet`` (374k parameters) stands in for ResNet-50: the same timm ResNet code."""
import argparse
import json
import shutil

import pytest
import torch
from huggingface_hub import ModelCard

from fsr_hub import FSRWrapper
from fsr_hub.cli import add_fsr_arguments, agreed_model_args, fsr_flags, fsr_model_args, positions
from fsr_hub.cost import fsr_cost
from fsr_hub.engine import TrainConfig, train
from fsr_hub.models import create
from fsr_hub.objectives import AdversarialObjective, ObjectiveConfig
from fsr_hub.release import validate_release, write_card
from fsr_hub.step import TrainStep, build_optimizer
from fsr_hub.weights import load_weights
from tools import verify
from tools.cost_report import main as cost_main
from tools.train import main as train_main

from conftest import separable_data, write_cifar_batches
from release_builders import card_body, edit_json, load_tool

ARCH = 'test_resnet'  # feature_info: act1 32, layer1 32, layer2 48, layer3 192, layer4 96 channels
FLAGS = ['--fsr-positions', 'layer3,layer4', '--fsr-hidden', '8', '--fsr-tau', '0.2']
MODEL_ARGS = {'fsr_positions': ['layer3', 'layer4'], 'fsr_hidden': 8, 'fsr_tau': 0.2}
TAG = 'at_fsr_cifar10'


def _fsr_params(channels: int, hidden: int, num_classes: int) -> int:
    net = 9 * (channels * hidden + hidden * hidden + hidden * channels) + 2 * 2 * hidden
    return 2 * net + channels * num_classes + num_classes


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """One short budgeted epoch of AT + FSR on test_resnet + FSR, through the command line (read-only)."""
    root = tmp_path_factory.mktemp('plug')
    data = write_cifar_batches(root / 'data')
    out = root / 'run'
    argv = ['--model', ARCH, *FLAGS, '--data', str(data), '--out', str(out), '--device', 'cpu', '--epochs', '1',
            '--time-budget', '5', '--batch-size', '16', '--holdout', '10', '--eval-batch-size', '10', '--steps', '1',
            '--eval-steps', '1', '--no-progress']
    assert train_main(argv) == 0
    return dict(root=root, data=data, out=out, argv=argv,
                summary=json.loads((out / 'train_summary.json').read_text()))


def test_train_cli_records_model_args_and_the_weights_rebuild(trained, tmp_path, capsys):
    summary, out = trained['summary'], trained['out']
    assert summary['config']['model_args'] == MODEL_ARGS and summary['config']['model'] == ARCH
    assert summary['architecture'] == ARCH and summary['complete'] and summary['budget']['epochs'] == 1
    assert '--fsr-positions layer3,layer4' in summary['command']
    model = create(ARCH, num_classes=10, **summary['config']['model_args'])
    assert isinstance(model, FSRWrapper) and model.fsr['layer3'].tau == 0.2
    load_weights(model, out / 'final.safetensors', summary['weights']['final']['sha256'])  # strict
    # --resume with other FSR flags is refused, naming both
    copy = tmp_path / 'run'
    shutil.copytree(out, copy)
    argv = [a if a != str(out) else str(copy) for a in trained['argv']]
    capsys.readouterr()
    assert train_main(argv + ['--resume', '--fsr-positions', 'layer4']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and "model_args {'fsr_positions': ['layer3', 'layer4']" in err
    assert err.count('\n') == 1


def test_train_config_model_args_are_checked():
    cfg = TrainConfig(device='cpu', model_args={'fsr_positions': ('layer4',)}).resolved()
    assert cfg.model_args == {'fsr_positions': ['layer4']}  # as train_summary.json and last.pt keep them
    with pytest.raises(ValueError, match='must not set num_classes'):
        TrainConfig(device='cpu', model_args={'num_classes': 5}).resolved()
    with pytest.raises(ValueError, match='JSON values'):
        TrainConfig(device='cpu', model_args={'fsr_tau': torch.tensor(0.1)}).resolved()
    assert positions('layer3, -1') == ['layer3', -1] and positions('') == []
    assert agreed_model_args({'fsr_hidden': 8}, None, 's') == {'fsr_hidden': 8}
    assert agreed_model_args({'fsr_hidden': 8}, {'fsr_hidden': 8, 'fsr_tau': 0.2}, 's') == {'fsr_hidden': 8,
                                                                                            'fsr_tau': 0.2}
    with pytest.raises(ValueError, match=r"flags \{'fsr_tau': 0.1\} differ from the model_args of s"):
        agreed_model_args({'fsr_tau': 0.1}, {'fsr_hidden': 8}, 's')


@pytest.mark.parametrize('model_args', [
    {}, {'fsr_positions': []}, {'fsr_positions': [-1, 'layer4']}, {'fsr_tau': 1 / 3, 'fsr_hidden': 8},
    {'fsr_positions': ['layer3'], 'fsr_separation': False, 'fsr_recalibration': True}])
def test_fsr_flags_give_the_model_args_back(model_args):
    parser = argparse.ArgumentParser()
    add_fsr_arguments(parser)
    assert fsr_model_args(parser.parse_args(fsr_flags(model_args))) == model_args
    with pytest.raises(ValueError, match=r"model_args \['drop_rate'\] have no --fsr-\* flag"):
        fsr_flags({'drop_rate': 0.1, **model_args})


def _verify(trained, *extra):
    out = trained['out']
    return verify.main(['--model', ARCH, '--weights', str(out / 'final.safetensors'), '--data', str(trained['data']),
                        '--n', '4', '--batch-size', '4', '--attacks', 'clean', '--no-masking-checks', '--device',
                        'cpu', '--no-progress', *extra])


def test_verify_builds_the_model_from_the_summary_or_the_flags(trained, tmp_path, capsys):
    summary = str(trained['out'] / 'train_summary.json')
    report = tmp_path / 'report.json'
    assert _verify(trained, '--train-summary', summary, '--fsr-hidden', '8', '--out', str(report)) == 0
    doc = json.loads(report.read_text())
    assert doc['model']['model_args'] == MODEL_ARGS and doc['training']['weights'] == 'final'
    assert _verify(trained, *FLAGS, '--out', str(report)) == 0  # the flags alone build the same model
    assert json.loads(report.read_text())['model']['model_args'] == MODEL_ARGS
    capsys.readouterr()
    for extra, message in ((('--train-summary', summary, '--fsr-positions', 'layer4'), 'differ from the model_args'),
                           ((), 'does not fit ResNet'),  # plain test_resnet: the FSR keys are unexpected
                           (('--train-summary', summary, '--model', 'resnet18'), 'summary of a test_resnet run')):
        assert _verify(trained, *extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count('\n') == 1, err


def test_transfer_source_built_from_its_summary(trained, tmp_path):
    out, report = trained['out'], tmp_path / 'report.json'
    assert _verify(trained, *FLAGS, '--out', str(report), '--transfer-from', f'{ARCH}:{out / "final.safetensors"}',
                   '--transfer-train-summary', str(out / 'train_summary.json')) == 0
    transfer = json.loads(report.read_text())['results']['transfer']
    assert transfer['source'].startswith(f'{ARCH} {{"fsr_hidden": 8, "fsr_positions": ["layer3", "layer4"]')
    assert 0 <= transfer['accuracy'] <= 100


def test_release_folder_of_a_timm_cnn_with_fsr(trained, tmp_path, capsys):
    out = trained['out']
    report = tmp_path / 'results.json'
    assert _verify(trained, '--train-summary', str(out / 'train_summary.json'), '--out', str(report)) == 0
    assert load_tool('make_card').main([str(report), '--out', str(tmp_path / 'cards'), '--tag', TAG]) == 0
    folder = tmp_path / 'cards' / f'{ARCH}.{TAG}'
    info = validate_release(folder)
    config = info.config
    assert config['architecture'] == ARCH and config['num_classes'] == 10
    assert config['model_args'] == {'num_classes': 10, 'fsr_positions': ['layer3', 'layer4'], 'fsr_tau': 0.2,
                                    'fsr_hidden': 8, 'fsr_separation': True, 'fsr_recalibration': True}
    pcfg = config['pretrained_cfg']  # the pixels verify fed, not the backbone's ImageNet data config
    assert pcfg['input_size'] == [3, 32, 32] and pcfg['mean'] == [0, 0, 0] and pcfg['std'] == [1, 1, 1]
    assert 'test_input_size' not in pcfg and pcfg['sha256'] == info.sha256
    assert info.results['cost']['params'] == sum(p.numel() for p in info.model.parameters())

    # config.json rebuilds it, and fsr_hub's create loads the folder as a hub repo
    model = create(config['architecture'], **config['model_args'])
    load_weights(model, folder / 'model.safetensors', info.sha256)
    loaded = create(f'local-dir:{folder}', pretrained=True)
    assert isinstance(loaded, FSRWrapper) and loaded.fsr_positions == ('layer3', 'layer4')
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))

    card = ModelCard.load(folder / 'README.md')
    body = card.text
    assert card.data.library_name is None  # timm's own snippet would not build it
    assert "Inputs are raw RGB pixels in [0, 1], 32x32, no normalisation; 10 classes." in body
    assert f"fsr_hub.models.create('hf-hub:fsr-hub/{ARCH}.{TAG}', pretrained=True)" in body
    assert (f"fsr_hub.models.create('{ARCH}', num_classes=10, fsr_positions=['layer3', 'layer4'], fsr_tau=0.2, "
            f"fsr_hidden=8, fsr_separation=True, fsr_recalibration=True)") in body
    assert 'timm.create_model(' not in body and 'torch.hub.load' not in body
    assert 'after `layer3, layer4`, added by `fsr_hub.add_fsr`' in body

    # the device job's verify call rebuilds it from config.json's model_args, given to verify as --fsr-* flags
    flags = fsr_flags({k: v for k, v in config['model_args'].items() if k != 'num_classes'})
    assert _verify(trained, *flags, '--out', str(tmp_path / 'again.json')) == 0
    assert json.loads((tmp_path / 'again.json').read_text())['model']['model_args'] == {
        k: v for k, v in config['model_args'].items() if k != 'num_classes'}

    # a data config of another size and normalisation: the card says so, and validation follows the re-render
    edit_json(folder / 'config.json', lambda d: d['pretrained_cfg'].update(input_size=[3, 64, 64], mean=[0.5] * 3))
    write_card(folder)
    validate_release(folder, load_model=False)
    assert ('Inputs are RGB pixels in [0, 1], 64x64, normalised with mean [0.5, 0.5, 0.5] and std [1.0, 1.0, 1.0];'
            in card_body(folder))


def test_cost_report_before_and_after_fsr_for_any_model(tmp_path, capsys):
    out = tmp_path / 'cost.json'
    assert cost_main(['--model', ARCH, '--fsr-positions', 'layer4', '--fsr-hidden', '8', '--input-size', '3,64,64',
                      '--batch-size', '1', '--iters', '1', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    assert f'| {ARCH} + FSR after layer4 |' in text and 'Counted on one image of 3x64x64' in text
    row = json.loads(out.read_text())[0]
    assert row['params_fsr'] - row['params'] == _fsr_params(96, 8, 10)
    assert row['model_args'] == {'num_classes': 10, 'fsr_positions': ['layer4'], 'fsr_hidden': 8}
    assert row['gflops_fvcore_fsr'] > row['gflops_fvcore'] and row['input_size'] == [3, 64, 64]
    assert row['latency']['ms_vanilla'] > 0 and row['latency']['ms_fsr'] > 0
    small = fsr_cost(ARCH, row['model_args'])  # FLOPs of a conv net scale with the pixels: 4x fewer at 32x32
    assert small['params_fsr'] == row['params_fsr']
    assert row['gflops_fvcore_fsr'] == pytest.approx(4 * small['gflops_fvcore_fsr'], rel=0.02)
    # an fsr_hub architecture: before is its vanilla twin
    own = fsr_cost('fsr_resnet18', {'layers': [1, 1, 1, 1]})
    assert own['params'] == sum(p.numel() for p in create('cifar_resnet18', layers=[1, 1, 1, 1]).parameters())
    assert cost_main(['--model', ARCH, '--no-latency']) == 2
    assert 'has no FSR module: give fsr_positions' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cost_main(['--fsr-positions', 'layer4'])  # the Table 7 rows take no FSR flags


@pytest.mark.cuda
def test_cuda_graph_step_of_a_timm_cnn_with_fsr_agrees_with_eager(tmp_path):
    def steps(mode):
        torch.manual_seed(0)
        model = create(ARCH, num_classes=10, **MODEL_ARGS).cuda()
        obj = AdversarialObjective(model, ObjectiveConfig(steps=2, random_start=True))
        step = TrainStep(obj, build_optimizer(model, 0.05, 0.9, 5e-4, mode, torch.device('cuda')), mode=mode)
        g = torch.Generator().manual_seed(1)
        torch.manual_seed(7)  # random start and Gumbel noise from the global generator, in both paths
        losses = [step(torch.rand(16, 3, 32, 32, generator=g).cuda(),
                       torch.randint(0, 10, (16,), generator=g).cuda())[0].item() for _ in range(6)]
        return losses, step

    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        (ref, _), (fast, step) = steps('eager'), steps('cuda-graph')
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert step.fallback is None and fast == pytest.approx(ref, rel=1e-3)
    res = train(TrainConfig(model=ARCH, model_args=MODEL_ARGS, out=str(tmp_path), epochs=1, batch_size=32,
                            holdout=32, eval_batch_size=32, eval_steps=2, steps=2, device='cuda', progress=False),
                data=separable_data(160))
    assert res.summary['hardware']['step'] == 'cuda-graph' and res.summary['hardware']['step_fallback'] is None
    load_weights(create(ARCH, num_classes=10, **MODEL_ARGS), tmp_path / 'final.safetensors')
