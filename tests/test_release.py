"""Release folders: config.json, cards rendered through huggingface_hub's ModelCard, validation failures,
make_card / push_to_hub command lines, the RobustBench record and the README's table of releases (plots and
per-class tables: test_card_content.py). CPU only, no network; weights are random."""
import json
import re
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard

from fsr_hub import paper, release
from fsr_hub.models import create
from fsr_hub.card import PER_CLASS_PNG
from fsr_hub.release import ReleaseError, assemble_release, validate_release, write_card
from fsr_hub.catalog import DEFAULT_ORG
from fsr_hub.weights import read_weights, save_weights, sha256_file

from release_builders import SMALL_ARGS, build_release, card_body, edit_json, load_tool, make_results

REPO_ROOT = Path(__file__).resolve().parents[1]
ALL_ATTACKS = ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'ensemble', 'autoattack')


# ---------------------------------------------------------------------------------------------------------------
# Card generation


def test_release_folder_layout(rel):
    assert sorted(p.name for p in rel.folder.iterdir()) == sorted(list(release.REQUIRED_FILES) + [PER_CLASS_PNG])
    assert rel.folder.name == 'fsr_resnet18.at_cifar10'
    assert {t.dtype for t in read_weights(rel.folder / 'model.safetensors').values() if t.is_floating_point()} \
        == {torch.float16}


def test_card_metadata_through_huggingface_hub(rel):
    card = ModelCard.load(rel.folder / 'README.md')
    assert card.data.library_name == 'timm' and card.data.license == 'mit'
    assert 'adversarial-robustness' in card.data.tags and card.data.datasets == ['cifar10']
    assert card.data.model_name == 'fsr_resnet18.at_cifar10'
    results = json.loads((rel.folder / 'results.json').read_text())['results']
    evals = card.data.eval_results
    assert {e.metric_config: e.metric_value for e in evals} == {k: v['accuracy'] for k, v in results.items()}
    assert {e.metric_type for e in evals} == {'accuracy'} and {e.dataset_type for e in evals} == {'cifar10'}
    # the report's 200 images are the first 200 of the test set: every entry says so
    assert next(e for e in evals if e.metric_config == 'pgd20').metric_name == \
        'robust accuracy, PGD-20, Linf 8/255, first 200 test images (n = 200)'
    assert {e.dataset_split for e in evals} == {'test[:200]'}


def test_model_index_never_labels_a_subset_as_the_whole_split(rel):
    def on_10000_images(d):
        d['data'].update(n=10000, subset='all')
        d['results']['clean'].update(n=10000, subset='all 10000')
        d['results']['pgd20'].update(n=2000, subset='first 2000')  # fgsm: no n of its own, the report's
    edit_json(rel.folder / 'results.json', on_10000_images)
    write_card(rel.folder)
    validate_release(rel.folder)
    evals = {e.metric_config: e for e in ModelCard.load(rel.folder / 'README.md').data.eval_results}
    assert evals['clean'].dataset_split == evals['fgsm'].dataset_split == 'test'
    assert evals['clean'].metric_name == 'clean accuracy'
    assert evals['pgd20'].dataset_split == 'test[:2000]'
    assert evals['pgd20'].metric_name == 'robust accuracy, PGD-20, Linf 8/255, first 2000 test images (n = 2000)'
    results = json.loads((rel.folder / 'results.json').read_text())['results']
    for key, e in evals.items():
        whole = results[key].get('n', 10000) == 10000
        assert (e.dataset_split == 'test') == whole and (('n = ' in e.metric_name) != whole), key
    row = next(line for line in card_body(rel.folder).splitlines() if line.startswith('| PGD-20 |'))
    acc = results['pgd20']['accuracy']
    half = round(196 * (acc / 100 * (1 - acc / 100) / 2000) ** 0.5, 2)
    assert row.startswith(f'| PGD-20 | {acc:.2f} | {half:.2f} | first 2,000 |'), row


def test_card_table_measured_beside_paper_and_not_measured(rel):
    body = card_body(rel.folder)
    results = rel.results['results']
    ref = paper.paper_reference('fsr_resnet18', 'at_cifar10')
    rows = {line.split('|')[1].strip(): line for line in body.splitlines() if line.startswith('| ')}
    for key in ALL_ATTACKS:
        cells = [c.strip() for c in rows[paper.METRIC_NAMES[key]].split('|')[1:-1]]
        assert cells[1] == (f"{results[key]['accuracy']:.2f}" if key in results else 'not measured'), cells
        assert cells[3] == ('first 200' if key in results else '')
        assert cells[4] == f'{ref.metrics[key]:.2f}' and cells[5] == ref.sources[key]
    assert [c.strip() for c in rows['PGD-20'].split('|')[1:-1]][6] == '20 steps, step eps/10, no random start'
    for needle in ("timm.create_model('fsr_resnet18.at_cifar10', pretrained=True)", 'torch.hub.load',
                   f'hf-hub:{DEFAULT_ORG}/fsr_resnet18.at_cifar10', rel.sha256, rel.results['command'],
                   rel.results['training']['command'], 'Gradient-masking checks', 'Limitations', 'F16'):
        assert needle in body, needle
    assert '## Analysis' not in body  # no plots in this folder
    # the masking checks say which images each ran on (the steps sweep may reuse PGD-100's first 1,000)
    for needle in ('on the first 100 test images as eps grows', 'on the first 200 test images as steps grow',
                   'Unbounded attack accuracy on the first 100 test images: 0.00 % (PGD, eps 1.0, 100 steps of 0.01'):
        assert needle in body, needle


def test_results_json_gets_cost_and_paper_reference(rel):
    model = create('fsr_resnet18', **SMALL_ARGS)
    cost = rel.results['cost']
    assert cost['params'] == sum(p.numel() for p in model.parameters())
    assert cost['gflops_paper_convention'] == pytest.approx(2 * cost['gflops_fvcore'], abs=2e-4)
    assert rel.results['paper_reference']['metrics'] == paper.paper_reference('fsr_resnet18', 'at_cifar10').metrics
    body = card_body(rel.folder)
    assert f"| this model | {cost['params']:,} | {cost['params_millions']:.2f} | {cost['gflops_fvcore']:.4f} |" in body


def test_card_follows_results_json(rel):
    """The card is a function of results.json: a changed number is re-rendered, and validation then passes."""
    edit_json(rel.folder / 'results.json', lambda d: d['results']['pgd20'].__setitem__('accuracy', 12.34))
    with pytest.raises(ReleaseError, match='differs from the card rendered'):
        validate_release(rel.folder)
    write_card(rel.folder)
    validate_release(rel.folder)
    assert '| PGD-20 | 12.34 |' in card_body(rel.folder)
    evals = ModelCard.load(rel.folder / 'README.md').data.eval_results
    assert next(e.metric_value for e in evals if e.metric_config == 'pgd20') == 12.34


def test_config_json_is_timm_format_and_loads(rel):
    config = json.loads((rel.folder / 'config.json').read_text())
    assert config['architecture'] == 'fsr_resnet18' and config['num_classes'] == 10
    assert config['num_features'] == 512
    assert config['model_args'] == {**SMALL_ARGS, 'fsr_positions': ['layer4']}
    assert config['pretrained_cfg']['sha256'] == rel.sha256 and config['pretrained_cfg']['tag'] == 'at_cifar10'
    assert config['hub_id'] == f'{DEFAULT_ORG}/fsr_resnet18.at_cifar10'
    model = timm.create_model(f'local-dir:{rel.folder}', pretrained=True)  # timm's own loader of a hub folder
    state = read_weights(rel.folder / 'model.safetensors')
    assert all(torch.equal(v.to(state[k].dtype), state[k]) for k, v in model.state_dict().items())


def test_validate_returns_loaded_model(rel):
    info = validate_release(rel.folder)
    assert info.sha256 == sha256_file(rel.folder / 'model.safetensors')
    assert info.model is not None and not info.model.training
    assert info.model_args == {**SMALL_ARGS, 'fsr_positions': ['layer4']}
    assert info.hub_id == f'{DEFAULT_ORG}/fsr_resnet18.at_cifar10'


def test_missing_attacks_and_extra_attacks(tmp_path):
    info = build_release(tmp_path, attacks=ALL_ATTACKS + ('autoattack_rand',))
    card = ModelCard.load(info.folder / 'README.md')
    assert [e.metric_config for e in card.data.eval_results] == list(ALL_ATTACKS) + ['autoattack_rand']
    assert 'not measured' not in card.text.split('## Evaluation')[1].split('## Gradient')[0]
    assert 'AutoAttack (rand)' in card.text


# ---------------------------------------------------------------------------------------------------------------
# Validation failures: one line, naming the file


def _tamper_weights(folder: Path) -> None:
    state = read_weights(folder / 'model.safetensors')
    state['fc.bias'] = state['fc.bias'] + 1
    save_weights(state, folder / 'model.safetensors')


def _card_value(folder: Path) -> None:
    path = folder / 'README.md'
    value = json.loads((folder / 'results.json').read_text())['results']['pgd20']['accuracy']
    path.write_text(path.read_text().replace(f'value: {value}', f'value: {value + 1}', 1))


def _card_body_number(folder: Path) -> None:
    path = folder / 'README.md'
    front, body = path.read_text().split('\n---\n', 1)
    value = json.loads((folder / 'results.json').read_text())['results']['clean']['accuracy']
    path.write_text(front + '\n---\n' + body.replace(f'| {value:.2f} |', f'| {value + 0.5:.2f} |', 1))


def _wrong_arch(folder: Path) -> Path:
    """Same weights, but config/results/folder claim fsr_vgg16."""
    for name in ('config.json', 'results.json'):
        edit_json(folder / name, lambda d: d.get('model', d).__setitem__('architecture', 'fsr_vgg16'))
    edit_json(folder / 'config.json', lambda d: d.update(model_args={}, hub_id='fsr-hub/fsr_vgg16.at_cifar10'))
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


_RERENDER = r'README\.md differs from the card rendered from results\.json and config\.json'
FAILURES = {
    'missing weights': (lambda f: (f / 'model.safetensors').unlink(), r'missing model\.safetensors'),
    'missing card': (lambda f: (f / 'README.md').unlink(), r'missing README\.md'),
    'missing results': (lambda f: (f / 'results.json').unlink(), r'missing results\.json'),
    'missing config': (lambda f: (f / 'config.json').unlink(), r'missing config\.json'),
    'tampered weights': (_tamper_weights, r'model\.safetensors: sha256 \w+ differs from config\.json'),
    'bad config sha': (lambda f: edit_json(f / 'config.json', lambda d: d['pretrained_cfg'].__setitem__(
        'sha256', '0' * 64)), r'differs from config\.json pretrained_cfg\.sha256 0{64}'),
    'bad results sha': (lambda f: edit_json(f / 'results.json', lambda d: d['model'].__setitem__(
        'sha256', '0' * 64)), r'differs from results\.json model\.sha256'),
    'card metric': (_card_value, _RERENDER),
    'card extra metric': (lambda f: edit_json(f / 'results.json', lambda d: d['results'].pop('fgsm')), _RERENDER),
    'card body number': (_card_body_number, _RERENDER),
    'card swapped numbers': (_swap_pgd20_for_clean, _RERENDER),
    'card without yaml': (lambda f: (f / 'README.md').write_text('# no front matter\n'), _RERENDER),
    'card for another org': (lambda f: edit_json(f / 'config.json', lambda d: d.__setitem__(
        'hub_id', 'other/fsr_resnet18.at_cifar10')), _RERENDER),
    'hub_id of another release': (lambda f: edit_json(f / 'config.json', lambda d: d.__setitem__(
        'hub_id', 'fsr-hub/fsr_vgg16.at_cifar10')), r'config\.json: hub_id must be "<org>/fsr_resnet18\.at_cifar10"'),
    'results architecture': (lambda f: edit_json(f / 'results.json', lambda d: d['model'].__setitem__(
        'architecture', 'fsr_vgg16')), r"results\.json: model\.architecture 'fsr_vgg16' differs"),
    'unknown architecture': (lambda f: edit_json(f / 'config.json', lambda d: d.__setitem__(
        'architecture', 'not_a_model')), r"config\.json: architecture 'not_a_model' is neither an fsr_hub model"),
    'wrong architecture': (_wrong_arch, r'model\.safetensors does not fit CifarVGG: \d+ missing keys'),
    'bad model_args': (lambda f: edit_json(f / 'config.json', lambda d: d['model_args'].__setitem__(
        'layers', [2, 2, 2, 2])), r'does not fit CifarResNet'),
    'results not json': (lambda f: (f / 'results.json').write_text('{oops'), r'results\.json is not valid JSON'),
    'wrong schema': (lambda f: edit_json(f / 'results.json', lambda d: d.__setitem__('schema', 'v0')),
                     r"schema is 'v0', expected 'fsr-hub/verify/v1'"),
    'bad accuracy': (lambda f: edit_json(f / 'results.json', lambda d: d['results']['clean'].__setitem__(
        'accuracy', 181.46)), r'results\.clean\.accuracy must be a percentage'),
}


@pytest.mark.parametrize('case', sorted(FAILURES))
def test_validation_failures(rel, case):
    break_it, pattern = FAILURES[case]
    moved = break_it(rel.folder)
    with pytest.raises(ReleaseError) as e:
        validate_release(moved if isinstance(moved, Path) else rel.folder)
    msg = str(e.value)
    assert '\n' not in msg, msg
    assert re.search(pattern, msg), msg


def test_pin_decides(rel):
    """The released pin (fsr_hub.catalog.RELEASED by default) must equal the weights' sha256."""
    assert validate_release(rel.folder, pin=rel.sha256, load_model=False).sha256 == rel.sha256
    with pytest.raises(ReleaseError, match=r'differs from the pin f{64} of fsr_resnet18\.at_cifar10'):
        validate_release(rel.folder, pin='f' * 64, load_model=False)


def test_not_a_folder(tmp_path):
    with pytest.raises(ReleaseError, match='release folder not found'):
        validate_release(tmp_path / 'nope')


def test_folder_name_must_be_release_name(rel):
    moved = rel.folder.rename(rel.folder.with_name('my_release'))
    with pytest.raises(ReleaseError, match='folder name must be the release name fsr_resnet18.at_cifar10'):
        validate_release(moved)
    assert validate_release(moved, name='fsr_resnet18.at_cifar10', load_model=False).name == 'fsr_resnet18.at_cifar10'
    with pytest.raises(ReleaseError, match='holds the release fsr_resnet18.at_cifar10, not fsr_vgg16.at_cifar10'):
        validate_release(moved, name='fsr_vgg16.at_cifar10')


def test_assemble_refuses_report_of_other_weights(tmp_path):
    torch.manual_seed(0)
    model = create('fsr_resnet18', **SMALL_ARGS)
    w = tmp_path / 'w.safetensors'
    sha = save_weights(model, w, dtype=torch.float32)
    save_weights(model, w, dtype=torch.float16)  # released file != verified file
    with pytest.raises(ReleaseError, match='does not describe this file'):
        assemble_release(tmp_path / 'out', w, make_results(sha, str(w)), model_args=SMALL_ARGS)


# ---------------------------------------------------------------------------------------------------------------
# Command lines and upload


class RecordingApi:
    """Stands in for huggingface_hub.HfApi (push_release takes the api as a parameter)."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def create_repo(self, repo_id, **kw):
        assert not self.fail, 'a dry run must not touch the hub'
        self.calls.append(('create_repo', repo_id, kw))

    def upload_folder(self, **kw):
        assert not self.fail, 'a dry run must not touch the hub'
        self.calls.append(('upload_folder', kw))


def test_push_dry_run_prints_plan_and_uploads_nothing(rel, capsys):
    write_card(rel.folder, org='myorg')  # config.json hub_id and the card name the repo it is uploaded to
    assert json.loads((rel.folder / 'config.json').read_text())['hub_id'] == 'myorg/fsr_resnet18.at_cifar10'
    assert 'hf-hub:myorg/fsr_resnet18.at_cifar10' in card_body(rel.folder)
    assert load_tool('push_to_hub').main([str(rel.folder), '--org', 'myorg', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'myorg/fsr_resnet18.at_cifar10' in out and 'dry-run' in out
    for p in rel.folder.iterdir():
        line = next(l for l in out.splitlines() if l.strip().startswith(p.name + ' '))
        assert f'{p.stat().st_size} bytes' in line and sha256_file(p) in line
    api = RecordingApi(fail=True)
    assert release.push_release(rel.folder, dry_run=True, api=api, print_fn=lambda s: None) == \
        'myorg/fsr_resnet18.at_cifar10' and api.calls == []


def test_push_calls_the_api(rel):
    write_card(rel.folder, org='myorg')
    api = RecordingApi()
    assert release.push_release(rel.folder, org='myorg', private=True, api=api, print_fn=lambda s: None) \
        == 'myorg/fsr_resnet18.at_cifar10'
    assert api.calls[0] == ('create_repo', 'myorg/fsr_resnet18.at_cifar10',
                            {'private': True, 'exist_ok': True, 'repo_type': 'model'})
    up = api.calls[1][1]
    assert up['repo_id'] == 'myorg/fsr_resnet18.at_cifar10' and Path(up['folder_path']) == rel.folder
    assert sorted(up['allow_patterns']) == sorted(list(release.REQUIRED_FILES) + [PER_CLASS_PNG])


def test_push_refuses_a_card_rendered_for_another_org(rel, capsys):
    # the card's load instructions name fsr-hub/...: uploading it to myorg/... would point users elsewhere
    assert load_tool('push_to_hub').main([str(rel.folder), '--org', 'myorg', '--dry-run']) == 2
    err = capsys.readouterr().err
    assert f'rendered for the hub organisation {DEFAULT_ORG}, not myorg' in err and err.count('\n') == 1
    assert load_tool('push_to_hub').main([str(rel.folder), '--dry-run']) == 0  # its own org is fine
    assert f'{DEFAULT_ORG}/fsr_resnet18.at_cifar10' in capsys.readouterr().out


def test_push_invalid_folder_is_one_line(rel, capsys):
    (rel.folder / 'results.json').unlink()
    assert load_tool('push_to_hub').main([str(rel.folder), '--dry-run']) == 2
    err = capsys.readouterr().err
    assert err.startswith('push_to_hub: error:') and 'missing results.json' in err and err.count('\n') == 1


def test_make_card_cli(tmp_path, capsys):
    torch.manual_seed(1)
    model = create('fsr_resnet18', **SMALL_ARGS)
    w = tmp_path / 'w.safetensors'
    sha = save_weights(model, w, dtype=torch.float16)
    report = tmp_path / 'results.json'
    report.write_text(json.dumps(make_results(sha, str(w), attacks=('clean', 'pgd20'), seed=1)))
    tool = load_tool('make_card')
    out = tmp_path / 'cards'
    assert tool.main([str(report), '--out', str(out), '--model-args', json.dumps(SMALL_ARGS), '--org', 'o2']) == 0
    folder = out / 'fsr_resnet18.at_cifar10'
    assert validate_release(folder, load_model=False).hub_id == 'o2/fsr_resnet18.at_cifar10'
    # re-render after removing the derived keys: they are recomputed identically, the org stays
    card = (folder / 'README.md').read_text()
    edit_json(folder / 'results.json', lambda d: (d.pop('cost'), d.pop('paper_reference')))
    assert tool.main(['--folder', str(folder)]) == 0
    assert (folder / 'README.md').read_text() == card
    # without the model args the weights do not fit: clear one-line error
    assert tool.main([str(report), '--out', str(tmp_path / 'cards2')]) == 2
    err = capsys.readouterr().err
    assert 'does not fit CifarResNet' in err and err.strip().count('\n') == 0
    assert tool.main(['--readme', str(tmp_path / 'missing.md')]) == 2
    assert capsys.readouterr().err == f'make_card: error: {tmp_path / "missing.md"} not found: give the README whose ' \
                                      'table of released weights to rewrite.\n'


# ---------------------------------------------------------------------------------------------------------------
# RobustBench record, AutoAttack configuration, fast recipes, the README's table


def test_robustbench_record_beside_the_card(rel):
    record = json.loads((rel.folder / 'robustbench.json').read_text())
    assert set(record) == {'link', 'name', 'authors', 'additional_data', 'number_forward_passes', 'dataset', 'venue',
                           'architecture', 'eps', 'clean_acc', 'reported', 'autoattack_acc', 'footnote'}
    assert record['link'] == f'https://huggingface.co/{DEFAULT_ORG}/fsr_resnet18.at_cifar10'
    assert record['eps'] == '8/255'
    # the report's 200 images are not the whole test set: RobustBench's fields stay empty, the footnote says why
    clean = rel.results['results']['clean']['accuracy']
    assert record['clean_acc'] == ''
    assert f'Clean accuracy {clean:.2f} % on the first 200 test images' in record['footnote']
    assert record['autoattack_acc'] == '' and 'AutoAttack (standard): not measured yet.' in record['footnote']
    edit_json(rel.folder / 'robustbench.json', lambda d: d.update(clean_acc='99.99'))
    with pytest.raises(ReleaseError, match='robustbench.json differs'):
        validate_release(rel.folder)


def test_autoattack_is_standard_only_when_it_ran_the_original(tmp_path):
    info = build_release(tmp_path, attacks=ALL_ATTACKS)
    def on_all_images(d):
        d['data'].update(n=10000, subset='all')
    edit_json(info.folder / 'results.json', on_all_images)
    write_card(info.folder)
    record = json.loads((info.folder / 'robustbench.json').read_text())
    assert record['autoattack_acc'] == f"{info.results['results']['autoattack']['accuracy']:.2f}"
    evals = {e.metric_config: e for e in ModelCard.load(info.folder / 'README.md').data.eval_results}
    assert evals['autoattack'].metric_name == 'robust accuracy, AutoAttack (standard), Linf 8/255'
    assert 'standard version (apgd-ce, apgd-t, fab-t, square)' in card_body(info.folder)
    # fewer Square queries: not the original; the release check refuses it, and the card would not call it standard
    edit_json(info.folder / 'results.json',
              lambda d: d['results']['autoattack']['params']['sub_attacks']['square'].update(n_queries=100))
    with pytest.raises(ReleaseError, match='not the original AutoAttack standard version.*square'):
        write_card(info.folder)
    results = json.loads((info.folder / 'results.json').read_text())
    config = json.loads((info.folder / 'config.json').read_text())
    from fsr_hub.card import render_card, robustbench_record
    assert 'NOT the original standard version' in render_card(results, config)
    assert robustbench_record(results, config)['autoattack_acc'] == ''
    edit_json(info.folder / 'results.json', lambda d: d['results']['autoattack'].pop('params'))
    with pytest.raises(ReleaseError, match='not recorded'):
        validate_release(info.folder)


def test_a_fast_recipe_is_compared_with_the_paper_as_another_recipe():
    ref = paper.paper_reference('fsr_resnet18', 'fgsmrs_cifar10')
    assert ref.metrics == paper.paper_reference('fsr_resnet18', 'at_cifar10').metrics
    assert ref.other_recipe and '100 epochs of PGD-10' in ref.other_recipe and 'FGSM-RS' in ref.other_recipe
    assert paper.paper_reference('fsr_resnet18', 'at_cifar10').other_recipe is None
    assert 'cyclic lr' in paper.paper_reference('cifar_resnet18', 'fgsmrscyc_cifar10').other_recipe


@pytest.mark.parametrize('config, text', [
    ({'attack': 'fgsm-rs', 'steps': 1, 'eps': 8 / 255, 'schedule': 'cyclic'}, 'FGSM-RS, cyclic lr, 12 epochs'),
    ({'steps': 1, 'eps': 8 / 255, 'random_start': True}, 'FGSM-RS, piecewise lr, 12 epochs'),
    ({'attack': 'pgd', 'steps': 10, 'eps': 8 / 255, 'objective': 'trades'}, 'PGD-10, TRADES, piecewise lr, 12 epochs'),
    ({'attack': 'fgsm-rs', 'steps': 1, 'eps': 8 / 255, 'objective': 'adml', 'schedule': 'adml'},
     'FGSM-RS, ADML fine-tuning, adml lr, 12 epochs'),
    ({'objective': 'natural'}, None),
])
def test_the_readme_table_names_attack_objective_schedule_and_epochs(config, text):
    from fsr_hub.card_recipe import short_recipe
    assert short_recipe(config, 12) == text


def test_the_readme_table_is_rendered_from_the_release_folders():
    text = (REPO_ROOT / 'README.md').read_text()
    begin, end = release.README_MARKERS
    block = text[text.index(begin) + len(begin):text.index(end)].strip()
    assert block == release.readme_table(), 'python tools/make_card.py --readme README.md re-renders it'


def test_card_says_how_a_budgeted_run_is_reproduced(rel):
    from fsr_hub.evaluate import training_section
    from fsr_hub.schemas import TRAIN_SCHEMA

    assert 'Time budget' not in card_body(rel.folder)  # a run without a budget: no such line
    replan = {'after_epoch': 1, 'from_epochs': 10, 'epochs': 8, 'fits': True, 'epoch_seconds': 736.172}
    reproduce = 're-planned after epoch 1 (from 10 to 8 epochs): --epochs 8 alone does not reproduce this run'
    summary = {'schema': TRAIN_SCHEMA, 'weights': {'best': {'sha256': 'b' * 64}},
               'budget': {'minutes': 115.0, 'epochs': 8, 'measured': {'seconds_per_step': 1.5},
                          'replans': [replan], 'lr_plan': '30@0,10@11,8@382', 'reproduce': reproduce}}
    budget = training_section(summary, 'b' * 64)['budget']
    assert budget == {'minutes': 115.0, 'epochs': 8, 'replans': [replan], 'lr_plan': '30@0,10@11,8@382',
                      'reproduce': reproduce}
    edit_json(rel.folder / 'results.json', lambda d: d['training'].__setitem__('budget', budget))
    write_card(rel.folder)
    assert ('Time budget: 115 min, the epochs planned by the trainer from its measured speed (after epoch 1 the '
            f'machine had slowed to 736 s per epoch). Reproducing the run: {reproduce}.') in card_body(rel.folder)
    validate_release(rel.folder)
