"""Release folders: config.json, generated cards, validation failures, make_card / push_to_hub command lines,
the paper's reference data and the shipped CIFAR-10 sample. CPU only, no network; weights are random."""
import dataclasses
import importlib.util
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import pytest
import timm
import torch
import yaml

import fsr_hub
from fsr_hub import paper, release
from fsr_hub.release import ReleaseError, assemble_release, parse_card, validate_release
from fsr_hub.sample import SAMPLE_PATH, SampleError, load_sample, read_sample, write_sample
from fsr_hub.weights import read_weights, save_weights, sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_TXT = REPO_ROOT.parent / 'shared' / 'papers' / 'fsr_cvpr2023.txt'  # shared/ sits beside the checkout
SMALL_ARGS = {'layers': [1, 1, 1, 1]}  # a 4-block ResNet: same code paths, half the cost
ALL_ATTACKS = ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'ensemble', 'autoattack')


# ---------------------------------------------------------------------------------------------------------------
# Fixture builders (also imported by test_hub_pull.py and test_main.py)


def make_results(sha256: str, weights: str, architecture: str = 'fsr_resnet18', tag: Optional[str] = 'at_cifar10',
                 attacks: Sequence[str] = ('clean', 'fgsm', 'pgd20'), seed: int = 0) -> Dict[str, Any]:
    """A verify report (schema fsr-hub/verify/v1) with random accuracies for ``attacks``."""
    rng = random.Random(seed)
    acc = lambda: round(rng.uniform(1, 99), 2)  # noqa: E731
    eps = 8 / 255
    params = {'fgsm': {'eps': eps, 'steps': 1},
              'pgd20': {'eps': eps, 'alpha': eps / 10, 'steps': 20, 'random_start': False},
              'pgd100': {'eps': eps, 'alpha': eps / 10, 'steps': 100, 'random_start': False},
              'cw': {'eps': eps, 'alpha': eps / 10, 'steps': 30, 'kappa': 50}}
    results = {}
    for a in attacks:
        entry = {'accuracy': acc(), 'per_class': [acc() for _ in range(10)], 'seconds': round(rng.uniform(1, 9), 1)}
        if a in params:
            entry['params'] = params[a]
        if a == 'ensemble':
            entry['attacks'] = [x for x in ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw') if x in attacks]
        if a == 'autoattack':
            entry['implementation'] = 'pyautoattack 0.2.0, standard version'
        results[a] = entry
    return {
        'schema': 'fsr-hub/verify/v1',
        'model': {'architecture': architecture, 'tag': tag, 'weights': weights, 'sha256': sha256, 'num_params': 1},
        'data': {'dataset': 'cifar10', 'split': 'test', 'n': 200, 'subset': 'first n', 'seed': 0},
        'eps': eps, 'batch_size': 100,
        'hardware': {'device': 'cpu', 'torch': torch.__version__, 'dtype': 'float32'},
        'results': results,
        'masking_checks': {
            'eps_sweep': {'eps_255': [8, 16, 32, 64], 'accuracy': [acc(), acc(), acc(), 0.0]},
            'unbounded_accuracy': 0.0,
            'steps_sweep': {'steps': [10, 20, 50], 'accuracy': [acc(), acc(), acc()]},
            'checks': {'falls_to_zero_at_64': True, 'unbounded_zero': True, 'more_steps_never_raise': True,
                       'transfer_ge_whitebox': None, 'rand_within_1pt': None},
            'passed': True,
        },
        'timing': {'total_seconds': round(rng.uniform(10, 99), 1)},
        'command': f'python tools/verify.py {weights} --n 200 --attacks {" ".join(attacks)}',
        'training': {'config': {'lr': 0.1, 'epochs': 100, 'method': 'at', 'lambda_sep': 1.0},
                     'command': 'python tools/train.py --method at --epochs 100', 'epochs': 100,
                     'wall_clock_seconds': round(rng.uniform(1000, 9999), 1), 'hardware': {'device': 'NVIDIA H100'}},
    }


def build_release(root: Path, architecture: str = 'fsr_resnet18', model_args: Optional[dict] = None,
                  attacks: Sequence[str] = ('clean', 'fgsm', 'pgd20'), seed: int = 0, org: Optional[str] = None):
    """A random-weight fp16 release folder under ``root / 'model_cards'``; returns its ReleaseInfo."""
    model_args = SMALL_ARGS if model_args is None else model_args
    torch.manual_seed(seed)
    model = timm.create_model(architecture, **model_args)
    weights = root / 'ckpt' / 'model_fp16.safetensors'
    sha = save_weights(model, weights, dtype=torch.float16)
    results = make_results(sha, str(weights), architecture, attacks=attacks, seed=seed)
    return assemble_release(root / 'model_cards', weights, results, model_args=model_args, org=org)


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (the tools are thin command lines over fsr_hub)."""
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', REPO_ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def _rel_template(tmp_path_factory):
    return build_release(tmp_path_factory.mktemp('template'))


@pytest.fixture
def rel(_rel_template, tmp_path):
    """A fresh copy of one random-weight release folder (tests may break it)."""
    folder = tmp_path / 'model_cards' / _rel_template.folder.name
    shutil.copytree(_rel_template.folder, folder)
    return dataclasses.replace(_rel_template, folder=folder)


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))


# ---------------------------------------------------------------------------------------------------------------
# Card generation


def test_release_folder_layout(rel):
    assert sorted(p.name for p in rel.folder.iterdir()) == sorted(release.REQUIRED_FILES)
    assert rel.folder.name == 'fsr_resnet18.at_cifar10'
    # fp16 weights as released
    assert {t.dtype for t in read_weights(rel.folder / 'model.safetensors').values() if t.is_floating_point()} \
        == {torch.float16}


def test_card_front_matter_is_hub_yaml_and_equals_results(rel):
    text = (rel.folder / 'README.md').read_text()
    assert text.startswith('---\n')
    front = yaml.safe_load(text.split('---\n')[1])
    assert front['library_name'] == 'timm'
    assert front['license'] == 'mit'
    assert 'adversarial-robustness' in front['tags'] and front['datasets'] == ['cifar10']
    results = json.loads((rel.folder / 'results.json').read_text())['results']
    metrics = front['model-index'][0]['results'][0]['metrics']
    assert {m['config']: m['value'] for m in metrics} == {k: v['accuracy'] for k, v in results.items()}
    assert all(m['type'] == 'accuracy' for m in metrics)
    assert front['model-index'][0]['name'] == 'fsr_resnet18.at_cifar10'


def test_card_table_measured_beside_paper_and_not_measured(rel):
    _, body = parse_card((rel.folder / 'README.md').read_text())
    results = rel.results['results']
    ref = paper.paper_reference('fsr_resnet18', 'at_cifar10')
    rows = {line.split('|')[1].strip(): line for line in body.splitlines() if line.startswith('| ')}
    for key in ALL_ATTACKS:
        row = rows[paper.METRIC_NAMES[key]]
        cells = [c.strip() for c in row.split('|')[1:-1]]
        expected = f"{results[key]['accuracy']:.2f}" if key in results else 'not measured'
        assert cells[1] == expected, row
        assert cells[2] == f'{ref.metrics[key]:.2f}' and cells[3] == ref.sources[key]
    for needle in ("timm.create_model('fsr_resnet18.at_cifar10', pretrained=True)", 'torch.hub.load',
                   f'hf-hub:{fsr_hub.DEFAULT_ORG}/fsr_resnet18.at_cifar10', rel.sha256, rel.results['command'],
                   rel.results['training']['command'], 'Gradient-masking checks', 'Limitations', 'F16'):
        assert needle in body, needle


def test_results_json_gets_cost_and_paper_reference(rel):
    model = timm.create_model('fsr_resnet18', **SMALL_ARGS)
    cost = rel.results['cost']
    assert cost['params'] == sum(p.numel() for p in model.parameters())
    assert cost['gflops_paper_convention'] == pytest.approx(2 * cost['gflops_fvcore'], abs=2e-4)
    assert rel.results['paper_reference']['metrics'] == paper.paper_reference('fsr_resnet18', 'at_cifar10').metrics
    body = (rel.folder / 'README.md').read_text()
    assert f"{cost['params']:,}" in body and f"{cost['gflops_fvcore']:.4f}" in body


def test_every_card_number_is_in_results_json(rel):
    """The validator's number scan passes on a generated card (and really scans: see the failure test)."""
    _, body = parse_card((rel.folder / 'README.md').read_text())
    numbers = re.findall(r'(?<![\w.:/-])\d+\.\d+(?![\w.])', body)
    assert len(numbers) > 20
    release.check_card((rel.folder / 'README.md').read_text(), rel.results, 'README.md')


def test_config_json_is_timm_format_and_loads(rel):
    config = json.loads((rel.folder / 'config.json').read_text())
    assert config['architecture'] == 'fsr_resnet18' and config['num_classes'] == 10
    assert config['num_features'] == 512
    assert config['model_args'] == {**SMALL_ARGS, 'fsr_positions': ['layer4']}
    assert config['pretrained_cfg']['sha256'] == rel.sha256 and config['pretrained_cfg']['tag'] == 'at_cifar10'
    # timm's own loader of a hub-layout folder
    model = timm.create_model(f'local-dir:{rel.folder}', pretrained=True)
    state = read_weights(rel.folder / 'model.safetensors')
    assert all(torch.equal(v.to(state[k].dtype), state[k]) for k, v in model.state_dict().items())


def test_validate_returns_loaded_model(rel):
    info = validate_release(rel.folder)
    assert info.sha256 == sha256_file(rel.folder / 'model.safetensors')
    assert info.model is not None and not info.model.training
    assert info.model_args == {**SMALL_ARGS, 'fsr_positions': ['layer4']}


def test_missing_attacks_and_extra_attacks(tmp_path):
    info = build_release(tmp_path, attacks=ALL_ATTACKS + ('autoattack_rand',))
    front, body = parse_card((info.folder / 'README.md').read_text())
    keys = [m['config'] for m in front['model-index'][0]['results'][0]['metrics']]
    assert keys == list(ALL_ATTACKS) + ['autoattack_rand']
    assert 'not measured' not in body.split('## Evaluation')[1].split('## Gradient')[0]
    assert 'AutoAttack (rand)' in body


# ---------------------------------------------------------------------------------------------------------------
# Validation failures: one line, naming the file


def _tamper_weights(folder: Path) -> None:
    state = read_weights(folder / 'model.safetensors')
    state['fc.bias'] = state['fc.bias'] + 1
    save_weights(state, folder / 'model.safetensors')


def _card_value(folder: Path) -> None:
    path = folder / 'README.md'
    text = path.read_text()
    value = json.loads((folder / 'results.json').read_text())['results']['pgd20']['accuracy']
    path.write_text(text.replace(f'value: {value}', f'value: {value + 1}', 1))


def _card_body_number(folder: Path) -> None:
    path = folder / 'README.md'
    front, body = path.read_text().split('\n---\n', 1)
    value = json.loads((folder / 'results.json').read_text())['results']['clean']['accuracy']
    path.write_text(front + '\n---\n' + body.replace(f'| {value:.2f} |', f'| {value + 0.5:.2f} |', 1))


def _registry_pin(monkeypatch):
    real = timm.models.get_pretrained_cfg

    def fake(name, *a, **k):
        if name == 'fsr_resnet18.at_cifar10':  # as if released with another file
            return dataclasses.replace(real('fsr_resnet18'), tag='at_cifar10', sha256='f' * 64)
        return real(name, *a, **k)
    monkeypatch.setattr(timm.models, 'get_pretrained_cfg', fake)


def _wrong_arch(folder: Path) -> Path:
    """Same weights, but config/results/folder claim fsr_vgg16."""
    for name in ('config.json', 'results.json'):
        _edit_json(folder / name, lambda d: d.get('model', d).__setitem__('architecture', 'fsr_vgg16'))
    _edit_json(folder / 'config.json', lambda d: d.__setitem__('model_args', {}))
    return folder.rename(folder.with_name('fsr_vgg16.at_cifar10'))


def _swap_pgd20_for_clean(folder: Path) -> None:
    """Show the clean accuracy in the PGD-20 row: a number that IS in results.json, in the wrong place."""
    results = json.loads((folder / 'results.json').read_text())['results']
    card = folder / 'README.md'
    text = card.read_text()
    row = next(l for l in text.splitlines() if l.startswith('| PGD-20 |'))
    new = row.replace(f"{results['pgd20']['accuracy']:.2f}", f"{results['clean']['accuracy']:.2f}", 1)
    assert new != row
    card.write_text(text.replace(row, new))


FAILURES = {
    'missing weights': (lambda f, mp: (f / 'model.safetensors').unlink(), r'missing model\.safetensors'),
    'missing card': (lambda f, mp: (f / 'README.md').unlink(), r'missing README\.md'),
    'missing results': (lambda f, mp: (f / 'results.json').unlink(), r'missing results\.json'),
    'missing config': (lambda f, mp: (f / 'config.json').unlink(), r'missing config\.json'),
    'tampered weights': (lambda f, mp: _tamper_weights(f), r'model\.safetensors: sha256 \w+ differs from config\.json'),
    'bad config sha': (lambda f, mp: _edit_json(f / 'config.json', lambda d: d['pretrained_cfg'].__setitem__(
        'sha256', '0' * 64)), r'differs from config\.json pretrained_cfg\.sha256 0{64}'),
    'bad results sha': (lambda f, mp: _edit_json(f / 'results.json', lambda d: d['model'].__setitem__(
        'sha256', '0' * 64)), r'differs from results\.json model\.sha256'),
    'registry pin': (lambda f, mp: _registry_pin(mp), r'differs from the registry pin f{64}'),
    'card metric': (lambda f, mp: _card_value(f), r'README\.md: model-index pgd20 = [\d.]+ but results\.json says'),
    'card extra metric': (lambda f, mp: _edit_json(f / 'results.json', lambda d: d['results'].pop('fgsm')),
                          r'card model-index has fgsm = [\d.]+ but results\.json has no fgsm'),
    'card body number': (lambda f, mp: _card_body_number(f), r'README\.md: number [\d.]+ \(body line \d+\) is not in'),
    'card swapped numbers': (lambda f, mp: _swap_pgd20_for_clean(f), r'README\.md differs from the card rendered'),
    'card without yaml': (lambda f, mp: (f / 'README.md').write_text('# no front matter\n'), r'no YAML front matter'),
    'results architecture': (lambda f, mp: _edit_json(f / 'results.json', lambda d: d['model'].__setitem__(
        'architecture', 'fsr_vgg16')), r"results\.json: model\.architecture 'fsr_vgg16' differs"),
    'unknown architecture': (lambda f, mp: _edit_json(f / 'config.json', lambda d: d.__setitem__(
        'architecture', 'resnet50')), r"config\.json: architecture 'resnet50' is not an fsr_hub model"),
    'wrong architecture': (lambda f, mp: _wrong_arch(f), r'model\.safetensors does not fit CifarVGG: \d+ missing keys'),
    'bad model_args': (lambda f, mp: _edit_json(f / 'config.json', lambda d: d['model_args'].__setitem__(
        'layers', [2, 2, 2, 2])), r'does not fit CifarResNet'),
    'results not json': (lambda f, mp: (f / 'results.json').write_text('{oops'), r'results\.json is not valid JSON'),
    'wrong schema': (lambda f, mp: _edit_json(f / 'results.json', lambda d: d.__setitem__('schema', 'v0')),
                     r"schema is 'v0', expected 'fsr-hub/verify/v1'"),
    'bad accuracy': (lambda f, mp: _edit_json(f / 'results.json', lambda d: d['results']['clean'].__setitem__(
        'accuracy', 0.8146 * 100 + 100)), r'results\.clean\.accuracy must be a percentage'),
}


@pytest.mark.parametrize('case', sorted(FAILURES))
def test_validation_failures(rel, monkeypatch, case):
    break_it, pattern = FAILURES[case]
    moved = break_it(rel.folder, monkeypatch)
    folder = moved if isinstance(moved, Path) else rel.folder
    with pytest.raises(ReleaseError) as e:
        validate_release(folder)
    msg = str(e.value)
    assert '\n' not in msg, msg
    assert re.search(pattern, msg), msg


def test_not_a_folder(tmp_path):
    with pytest.raises(ReleaseError, match='release folder not found'):
        validate_release(tmp_path / 'nope')


def test_folder_name_must_be_release_name(rel):
    moved = rel.folder.rename(rel.folder.with_name('my_release'))
    with pytest.raises(ReleaseError, match='folder name must be the release name fsr_resnet18.at_cifar10'):
        validate_release(moved)


def test_assemble_refuses_report_of_other_weights(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('fsr_resnet18', **SMALL_ARGS)
    w = tmp_path / 'w.safetensors'
    sha = save_weights(model, w, dtype=torch.float32)
    save_weights(model, w, dtype=torch.float16)  # released file != verified file
    with pytest.raises(ReleaseError, match='does not describe this file'):
        assemble_release(tmp_path / 'out', w, make_results(sha, str(w)), model_args=SMALL_ARGS)


# ---------------------------------------------------------------------------------------------------------------
# Command lines


def test_push_dry_run_prints_plan_and_uploads_nothing(rel, monkeypatch, capsys):
    import huggingface_hub

    class NoApi:
        def __init__(self, *a, **k):
            raise AssertionError('dry run must not touch the hub')
    monkeypatch.setattr(huggingface_hub, 'HfApi', NoApi)
    release.write_card(rel.folder, org='myorg')  # the card names the repo it is uploaded to
    assert load_tool('push_to_hub').main([str(rel.folder), '--org', 'myorg', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'myorg/fsr_resnet18.at_cifar10' in out and 'dry-run' in out
    for p in rel.folder.iterdir():
        line = next(l for l in out.splitlines() if l.strip().startswith(p.name + ' '))
        assert f'{p.stat().st_size} bytes' in line and sha256_file(p) in line


def test_push_calls_public_api(rel, monkeypatch, capsys):
    import huggingface_hub
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(('init', token))

        def create_repo(self, repo_id, **kw):
            calls.append(('create_repo', repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(('upload_folder', kw))
    monkeypatch.setattr(huggingface_hub, 'HfApi', FakeApi)
    release.write_card(rel.folder, org='myorg')
    assert load_tool('push_to_hub').main([str(rel.folder), '--org', 'myorg', '--private']) == 0
    assert calls[1] == ('create_repo', 'myorg/fsr_resnet18.at_cifar10',
                        {'private': True, 'exist_ok': True, 'repo_type': 'model'})
    up = calls[2][1]
    assert up['repo_id'] == 'myorg/fsr_resnet18.at_cifar10' and Path(up['folder_path']) == rel.folder
    assert sorted(up['allow_patterns']) == sorted(release.REQUIRED_FILES)


def test_push_refuses_a_card_rendered_for_another_org(rel, capsys):
    # the card's load instructions name fsr-hub/...: uploading it to myorg/... would point users elsewhere
    assert load_tool('push_to_hub').main([str(rel.folder), '--org', 'myorg', '--dry-run']) == 2
    err = capsys.readouterr().err
    assert f'rendered for the hub organisation {fsr_hub.DEFAULT_ORG}, not myorg' in err and err.count('\n') == 1
    assert load_tool('push_to_hub').main([str(rel.folder), '--dry-run']) == 0  # its own org is fine
    assert f'{fsr_hub.DEFAULT_ORG}/fsr_resnet18.at_cifar10' in capsys.readouterr().out


def test_push_invalid_folder_is_one_line(rel, capsys):
    (rel.folder / 'results.json').unlink()
    assert load_tool('push_to_hub').main([str(rel.folder), '--dry-run']) == 2
    err = capsys.readouterr().err
    assert err.startswith('push_to_hub: error:') and 'missing results.json' in err and err.count('\n') == 1


def test_make_card_cli(tmp_path, capsys):
    torch.manual_seed(1)
    model = timm.create_model('fsr_resnet18', **SMALL_ARGS)
    w = tmp_path / 'w.safetensors'
    sha = save_weights(model, w, dtype=torch.float16)
    report = tmp_path / 'results.json'
    report.write_text(json.dumps(make_results(sha, str(w), attacks=('clean', 'pgd20'), seed=1)))
    tool = load_tool('make_card')
    out = tmp_path / 'cards'
    assert tool.main([str(report), '--out', str(out), '--model-args', json.dumps(SMALL_ARGS)]) == 0
    folder = out / 'fsr_resnet18.at_cifar10'
    validate_release(folder)
    # re-render after removing the derived keys: they are recomputed identically
    card = (folder / 'README.md').read_text()
    _edit_json(folder / 'results.json', lambda d: (d.pop('cost'), d.pop('paper_reference')))
    assert tool.main(['--folder', str(folder)]) == 0
    assert (folder / 'README.md').read_text() == card
    # without the model args the weights do not fit: clear one-line error
    assert tool.main([str(report), '--out', str(tmp_path / 'cards2')]) == 2
    err = capsys.readouterr().err
    assert 'does not fit CifarResNet' in err and err.strip().count('\n') == 0


# ---------------------------------------------------------------------------------------------------------------
# Paper data and the shipped sample


def test_paper_reference_values():
    ref = paper.paper_reference('fsr_resnet18', 'at_cifar10')
    assert list(ref.metrics) == list(paper.METRICS)
    assert ref.sources['pgd20'] == 'Table 1' and ref.sources['autoattack'].startswith('Table 3')
    assert paper.paper_reference('fsr_vgg16', 'trades_svhn').sources['clean'] == 'Table 2'
    assert 'autoattack' not in paper.paper_reference('fsr_vgg16', 'at_cifar10').metrics
    assert paper.paper_reference('fsr_wrn34_10', 'at_cifar10') is None
    assert paper.paper_reference('fsr_resnet18', 'at_imagenet') is None


@pytest.mark.skipif(not PAPER_TXT.is_file(), reason='paper text not available')
def test_paper_numbers_match_paper_text():
    text = PAPER_TXT.read_text()
    rows = {  # (arch, tag) -> the row label in the paper's tables
        ('resnet18', 'at'): 'AT + FSR', ('resnet18', 'trades'): 'TRADES + FSR', ('resnet18', 'mart'): 'MART + FSR'}
    for (backbone, method), label in rows.items():
        ref = paper.paper_reference(f'fsr_{backbone}', f'{method}_cifar10')
        white = '\t'.join(f'{ref.metrics[k]:.2f}' for k in ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'ensemble'))
        assert f'{label}\t{white}' in text, label
        assert re.search(rf"{re.escape(label)}\t[\d.]+\t[\d.]+\t[\d.]+\t{ref.metrics['autoattack']:.2f}", text)
    for backbone in ('resnet18', 'vgg16'):
        for kind in ('vanilla', 'fsr'):
            c = paper.PAPER_COST[backbone][kind]
            assert f"{c['params_m']:.2f}" in text and f"{c['gflops']:.4f}" in text


def test_sample_loads_balanced():
    assert SAMPLE_PATH.stat().st_size < 500_000
    x, y = load_sample()
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.1
    assert torch.bincount(y, minlength=10).tolist() == [20] * 10
    x10, y10 = load_sample(10)
    assert sorted(y10.tolist()) == list(range(10)) and torch.equal(x10, x[:10])
    _, _, meta = read_sample()
    assert len(set(meta['indices'])) == 200 and all(0 <= i < 10000 for i in meta['indices'])
    with pytest.raises(SampleError, match='n=201 is out of range'):
        load_sample(201)


def test_make_sample_tool_round_trip(tmp_path):
    """tools/make_sample.py on a synthetic cifar-10-batches-py folder: lossless, labelled, round-robin."""
    import pickle

    import numpy as np
    from conftest import write_cifar_batches

    root = write_cifar_batches(tmp_path, n_train=5, n_test=300, seed=1)
    out = tmp_path / 'sample.png'
    tool = load_tool('make_sample')
    assert tool.main([str(root / 'cifar-10-batches-py'), '--per-class', '2', '--out', str(out)]) == 0
    with open(root / 'cifar-10-batches-py' / 'test_batch', 'rb') as f:
        batch = pickle.load(f, encoding='bytes')
    src = np.asarray(batch[b'data']).reshape(-1, 3, 32, 32)
    labels = np.asarray(batch[b'labels'])
    images, y, meta = read_sample(out)
    idx = np.asarray(meta['indices'])
    assert np.array_equal(images.transpose(0, 3, 1, 2), src[idx]) and np.array_equal(y, labels[idx])
    assert y.tolist() == list(range(10)) * 2
    assert all(idx[c] == np.nonzero(labels == c)[0][0] for c in range(10))  # the *first* image of each class
    assert tool.main([str(tmp_path / 'nowhere')]) == 2


def test_sample_file_errors(tmp_path):
    with pytest.raises(SampleError, match='sample file not found'):
        load_sample(path=tmp_path / 'missing.png')
    (tmp_path / 'bad.png').write_bytes(b'not a png')
    with pytest.raises(SampleError, match='bad.png is not a valid fsr_hub sample file'):
        load_sample(path=tmp_path / 'bad.png')
    import numpy as np
    with pytest.raises(SampleError, match='images must be uint8'):
        write_sample(tmp_path / 'x.png', np.zeros((2, 32, 32, 3), np.float32), [0, 1], [0, 1])
