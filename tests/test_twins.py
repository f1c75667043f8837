"""FSR minus its vanilla twin on the same images: the paired gap and interval, and how cards and the README show
it. CPU only, no network; weights are random, per-example outcomes hand-made."""
import json
import math

import pytest
import torch

from fsr_hub.autoattack import pack_flags
from fsr_hub.card_tables import released_table
from fsr_hub.release import ReleaseError, attach_twin, readme_table, validate_release, write_card
from fsr_hub.twins import check_twin_section, example_flags, paired_gap, twin_name, twin_section

from release_builders import build_release, card_body, edit_json, load_tool


def _report(flags, seed=0, eps=8 / 255, n_total=10):
    """A minimal verify report whose metrics have exactly the given per-image outcomes."""
    results, packed = {}, {}
    for metric, f in flags.items():
        t = torch.tensor(f, dtype=torch.bool)
        results[metric] = {'accuracy': round(100 * t.float().mean().item(), 2), 'n': len(f)}
        packed[metric] = pack_flags(t)
    return {'data': {'dataset': 'cifar10', 'split': 'test', 'n': n_total, 'seed': seed}, 'eps': eps,
            'results': results, 'per_example': packed, 'model': {'sha256': 'a' * 64}}


def test_twin_names_both_ways():
    assert twin_name('fsr_resnet18.fgsmrs_cifar10') == 'cifar_resnet18.fgsmrs_cifar10'
    assert twin_name('cifar_vgg16.at_cifar10') == 'fsr_vgg16.at_cifar10'
    assert twin_name('resnet50.at_cifar10') is None and twin_name('fsr_resnet18') is None


def test_paired_gap_by_hand():
    fsr = _report({'pgd20': [1, 1, 0, 0, 1]}, n_total=5)
    van = _report({'pgd20': [1, 0, 0, 1, 0]}, n_total=5)
    g = paired_gap(fsr, van, 'pgd20')
    # d = [0, 1, 0, -1, 1]: mean 0.2, unbiased variance (0.04 + 0.64 + 0.04 + 1.44 + 0.64) / 4 = 0.7
    assert g['fsr'] == 60.0 and g['vanilla'] == 40.0 and g['gap'] == 20.0
    assert g['ci95'] == round(100 * 1.96 * math.sqrt(0.7 / 5), 2) and g['n'] == 5 and g['subset'] == 'all 5'
    # identical outcomes: no gap and a zero-width interval
    assert paired_gap(fsr, fsr, 'pgd20')['gap'] == 0.0 and paired_gap(fsr, fsr, 'pgd20')['ci95'] == 0.0


def test_gap_uses_the_common_first_images_only():
    fsr = _report({'clean': [1, 1, 1, 1, 0, 0]})
    van = _report({'clean': [0, 1, 1, 1]})
    g = paired_gap(fsr, van, 'clean')
    assert g['n'] == 4 and g['subset'] == 'first 4' and g['fsr'] == 100.0 and g['vanilla'] == 75.0


def test_ensemble_is_rebuilt_from_its_attacks():
    r = _report({'clean': [1, 1, 1, 0], 'pgd20': [1, 0, 1, 0, 1, 1]})
    r['results']['ensemble'] = {'accuracy': 50.0, 'n': 4, 'attacks': ['clean', 'pgd20']}
    assert example_flags(r, 'ensemble').tolist() == [True, False, True, False]
    r['results']['ensemble']['attacks'] = ['clean', 'cw']  # cw has no outcomes: no ensemble to compare
    assert example_flags(r, 'ensemble') is None


def test_other_images_or_eps_are_refused():
    a = _report({'clean': [1, 0]})
    with pytest.raises(ValueError, match='seed'):
        paired_gap(a, _report({'clean': [1, 0]}, seed=1), 'clean')
    with pytest.raises(ValueError, match='eps'):
        paired_gap(a, _report({'clean': [1, 0]}, eps=4 / 255), 'clean')
    assert paired_gap(a, _report({'pgd20': [1, 0]}), 'clean') is None  # not measured on one side


def test_section_sides_and_staleness():
    fsr = _report({'clean': [1, 1, 0, 1], 'pgd20': [1, 0, 0, 1]})
    van = _report({'clean': [1, 0, 0, 1], 'pgd20': [0, 0, 0, 1]})
    van['model']['sha256'] = 'b' * 64
    s1 = twin_section(('cifar_resnet18.x_cifar10', van), ('fsr_resnet18.x_cifar10', fsr))
    assert s1 == twin_section(('fsr_resnet18.x_cifar10', fsr), ('cifar_resnet18.x_cifar10', van))
    assert s1['fsr']['sha256'] == 'a' * 64 and [r['gap'] for r in s1['rows']] == [25.0, 25.0]
    with pytest.raises(ValueError, match='not twins'):
        twin_section(('fsr_resnet18.x_cifar10', fsr), ('cifar_vgg16.x_cifar10', van))
    check_twin_section(s1, 'fsr_resnet18.x_cifar10', fsr)
    with pytest.raises(ValueError, match='not these weights'):
        check_twin_section(s1, 'fsr_resnet18.x_cifar10', {**fsr, 'model': {'sha256': 'c' * 64}})
    stale = _report({'clean': [1, 1, 0, 1], 'pgd20': [1, 1, 0, 1]})
    with pytest.raises(ValueError, match='pgd20'):
        check_twin_section(s1, 'fsr_resnet18.x_cifar10', stale)


def _give_outcomes(folder, flags):
    def edit(r):
        for metric, f in flags.items():
            r['results'][metric]['accuracy'] = round(100 * sum(f) / len(f), 2)
            r['results'][metric]['n'] = len(f)
        r['per_example'] = {m: pack_flags(torch.tensor(f, dtype=torch.bool)) for m, f in flags.items()}
    edit_json(folder / 'results.json', edit)
    write_card(folder)


def test_attach_renders_both_cards_and_the_readme(tmp_path, capsys):
    small = {'layers': [1, 1, 1, 1]}
    fsr = build_release(tmp_path, 'fsr_resnet18', seed=0)
    van = build_release(tmp_path, 'cifar_resnet18', model_args=small, seed=1)
    n = 200
    _give_outcomes(fsr.folder, {'clean': [1] * 150 + [0] * 50, 'fgsm': [1] * 80 + [0] * 120,
                                'pgd20': [1] * 70 + [0] * 130})
    _give_outcomes(van.folder, {'clean': [1] * 160 + [0] * 40, 'fgsm': [1] * 70 + [0] * 130,
                                'pgd20': [1] * 60 + [0] * 140})
    tool = load_tool('make_card')
    with pytest.raises(SystemExit):
        tool.main(['--readme', 'README.md', '--twin', str(fsr.folder)])  # --twin needs --folder
    assert '--twin goes with --folder' in capsys.readouterr().err
    assert tool.main(['--folder', str(van.folder), '--twin', str(fsr.folder)]) == 0
    section = json.loads((van.folder / 'results.json').read_text())['twin']
    assert [r['metric'] for r in section['rows']] == ['clean', 'fgsm', 'pgd20']
    assert [r['gap'] for r in section['rows']] == [-5.0, 5.0, 5.0] and all(r['n'] == n for r in section['rows'])
    expected = 'FSR - vanilla (fsr_resnet18.at_cifar10 - cifar_resnet18.at_cifar10): Clean -5.00 ± '
    assert expected in capsys.readouterr().out
    for info in (fsr, van):
        body = card_body(info.folder)
        assert '## FSR versus its vanilla twin' in body and '| PGD-20 | 35.00 | 30.00 | +5.00 |' in body
        assert json.loads((info.folder / 'results.json').read_text())['twin'] == section
        validate_release(info.folder)
    names = {i.folder.name: json.loads((i.folder / 'robustbench.json').read_text())['name'] for i in (fsr, van)}
    assert names[van.folder.name].endswith('the same training without FSR)')
    assert names[fsr.folder.name] == 'Feature Separation and Recalibration for Adversarial Robustness'
    table = readme_table(tmp_path / 'model_cards', [fsr.folder.name, van.folder.name])
    assert f'| `{fsr.folder.name}` - `{van.folder.name}` | 100 epochs each | -5.00 ± ' in table
    assert table.count('FSR minus its vanilla twin') == 1
    # new outcomes for one model make its stored comparison stale: the card refuses to render
    changed = {'clean': [1] * 150 + [0] * 50, 'fgsm': [1] * 80 + [0] * 120, 'pgd20': [1] * 71 + [0] * 129}
    with pytest.raises(ReleaseError, match='attach it again'):
        _give_outcomes(fsr.folder, changed)
    with pytest.raises(ReleaseError, match='not twins'):
        attach_twin(fsr.folder, fsr.folder)
    assert tool.main(['--folder', str(van.folder), '--twin', str(van.folder)]) == 2
    assert 'not twins' in capsys.readouterr().err


def test_the_readme_gives_the_papers_gap_once_with_every_metric_it_reports(tmp_path):
    fsr = build_release(tmp_path, 'fsr_resnet18', seed=0)
    van = build_release(tmp_path, 'cifar_resnet18', model_args={'layers': [1, 1, 1, 1]}, seed=1)
    _give_outcomes(fsr.folder, {'clean': [1] * 150 + [0] * 50, 'pgd20': [1] * 70 + [0] * 130})
    _give_outcomes(van.folder, {'clean': [1] * 160 + [0] * 40, 'pgd20': [1] * 60 + [0] * 140})
    attach_twin(fsr.folder, van.folder)
    releases = {}
    for tag in ('at_cifar10', 'other_cifar10'):   # two pairs with the same paper setting
        for info in (fsr, van):
            results = json.loads((info.folder / 'results.json').read_text())
            for side in ('fsr', 'vanilla'):
                results['twin'][side]['name'] = results['twin'][side]['name'].replace('at_cifar10', tag)
            releases[info.folder.name.replace('at_cifar10', tag)] = (results, {})
    table = released_table(releases)
    pair_rows = [line for line in table.splitlines() if line.startswith('| `fsr_resnet18.')
                 and ' - `cifar_resnet18.' in line]
    paper_rows = [line for line in table.splitlines() if line.startswith('| paper: FSR - vanilla (AT, ResNet-18, ')]
    assert len(pair_rows) == 2 and len(paper_rows) == 1
    assert table.splitlines()[-1] == paper_rows[0]   # after both pairs, not between them
    # measured here: clean and PGD-20 only; the paper's row still shows each metric it reports for both
    cells = [c.strip() for c in paper_rows[0].strip('|').split('|')][2:]
    assert cells == ['-3.56', '+1.86', '+4.25', '+4.65', '+2.06', '+2.83', '+2.30']
