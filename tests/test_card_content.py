"""Release cards' content beyond the metrics table: the analysis plots (shown only with their PNG and their
numbers, for the weights they describe) and per-class accuracy, before and after fine-tuning. CPU only, no
network; weights are random."""
import json
import re
from pathlib import Path
from typing import Tuple

import pytest

from fsr_hub import release
from fsr_hub.card import PER_CLASS_PNG, PLOTS
from fsr_hub.release import ReleaseError, validate_release, write_card

from release_builders import build_release, card_body, edit_json, load_tool, make_results, tiny_png


# ---------------------------------------------------------------------------------------------------------------
# Plots (issue 18 item 7): shown only when the PNG is there, its numbers are in results.json, and the
# analysis applies to the model


def _analysis(sha256: str) -> dict:
    """Sections in the format tools/analyze.py writes (fsr_hub.analysis), trimmed to what the card reads."""
    meta = {'model': {'architecture': 'fsr_resnet18', 'sha256': sha256}, 'complete': True, 'seconds': 12.5,
            'data': {'dataset': 'cifar10', 'split': 'test', 'n': 1000}, 'hardware': {'device': 'NVIDIA H100'}}
    labels = {'robust': 'f+', 'non_robust': 'f-'}
    return {
        'eps_curve': {**meta, 'attack': {'attack': 'pgd20', 'steps': 20}, 'n': 1000, 'eps_255': [0, 4, 8, 16],
                      'accuracy': [81.5, 62.25, 50.0, 12.75]},
        'feature_swap': {**meta, 'attacks': ['clean', 'pgd20'], 'n': 1000, 'labels': labels,
                         'accuracy': {'robust': {'clean': 80.5, 'pgd20': 49.25},
                                      'non_robust': {'clean': 20.5, 'pgd20': 3.75}}},
        'knn': {**meta, 'gamma': 0.07, 'ks': [5, 20], 'labels': labels,
                'accuracy': {'robust': {'5': 45.5, '20': 46.25}, 'non_robust': {'5': 11.5, '20': 10.25}}},
        'gradcam': {**meta, 'n': 4, 'columns': ['x', 'f_nat']},
        'ib_split': {**meta, 'n': 1000, 'batch_size': 100, 'stage': 'layer4',
                     'table': {'header': ['', 'value'], 'rows': [['IB-robust units (%)', 3.125]]}},
        'ib_attack': {**meta, 'n': 100, 'threat_model': 'L2',
                      'table': {'header': ['', 'success rate (%)', 'mean L2'], 'rows': [['NRF', 100.0, 0.41237]]}},
    }


def _add_plots(folder: Path, keys, sha256: str, pngs=None) -> None:
    edit_json(folder / 'results.json', lambda d: d.__setitem__('analysis', {k: _analysis(sha256)[k] for k in keys}))
    for key in (keys if pngs is None else pngs):
        tiny_png(folder / PLOTS[key][0])
    write_card(folder)


def test_card_embeds_plots_with_their_numbers(rel):
    _add_plots(rel.folder, list(PLOTS), rel.sha256)
    info = validate_release(rel.folder)
    body = card_body(rel.folder)
    for key, (file, _, title) in PLOTS.items():
        assert f'### {title}\n\n![{title}]({file})' in body, key
    assert '| eps | 0/255 | 4/255 | 8/255 | 16/255 |' in body
    assert '| accuracy (%) | 81.50 | 62.25 | 50.00 | 12.75 |' in body
    assert '|  | Clean | PGD-20 |' in body and '| f+ | 80.50 | 49.25 |' in body and '| f- | 20.50 | 3.75 |' in body
    assert '|  | 5-NN | 20-NN |' in body and '| f+ | 45.50 | 46.25 |' in body
    assert '- gamma: 0.07' in body and '- columns: x, f_nat' in body and '- attack: attack pgd20, steps 20' in body
    assert '| IB-robust units (%) | 3.125 |' in body and '| NRF | 100 | 0.4124 |' in body
    assert body.count('- measured on: cifar10 test (n = 1000), NVIDIA H100, 12.5 s') == len(PLOTS)
    assert [p['path'] for p in release.upload_plan(info.folder)] == sorted(
        list(release.REQUIRED_FILES) + [f for f, _, _ in PLOTS.values()] + [PER_CLASS_PNG])


def test_plot_needs_both_png_and_numbers(rel):
    _add_plots(rel.folder, ['eps_curve'], rel.sha256, pngs=['knn'])  # curve numbers without PNG, a PNG without numbers
    body = card_body(rel.folder)
    assert '## Analysis' not in body and not any(f in body for f, _, _ in PLOTS.values()) and '62.25' not in body
    validate_release(rel.folder)
    tiny_png(rel.folder / 'eps_curve.png')  # the PNG arrives: the card must be re-rendered to show it
    with pytest.raises(ReleaseError, match='differs from the card rendered'):
        validate_release(rel.folder)
    write_card(rel.folder)
    assert '![Robust accuracy vs eps](eps_curve.png)' in card_body(rel.folder)


def test_vanilla_card_shows_no_fsr_plots(tmp_path):
    info = build_release(tmp_path, architecture='cifar_resnet18', model_args={'layers': [1, 1, 1, 1]})
    _add_plots(info.folder, list(PLOTS), info.sha256)
    body = card_body(info.folder)
    assert 'without FSR (vanilla twin)' in body and '![Robust accuracy vs eps](eps_curve.png)' in body
    assert not any(f in body for f, fsr_only, _ in PLOTS.values() if fsr_only)
    assert '| f+ |' not in body and '- gamma:' not in body


def test_analysis_of_other_weights_is_refused(rel):
    _add_plots(rel.folder, [], rel.sha256)
    edit_json(rel.folder / 'results.json', lambda d: d.__setitem__('analysis', {'feature_swap': _analysis('0' * 64)[
        'feature_swap']}))
    with pytest.raises(ReleaseError, match=r'analysis\.feature_swap was measured on other weights \(sha256 0{64}\)'):
        write_card(rel.folder)


def test_card_shows_only_complete_analyses_that_name_the_weights(rel):
    sections = _analysis(rel.sha256)
    sections['knn']['complete'] = False  # stopped by its deadline
    del sections['feature_swap']['model']  # says nothing about the weights it was measured on
    edit_json(rel.folder / 'results.json', lambda d: d.__setitem__('analysis', sections))
    for key in PLOTS:
        tiny_png(rel.folder / PLOTS[key][0])
    write_card(rel.folder)
    body = card_body(rel.folder)
    assert '![Robust accuracy vs eps](eps_curve.png)' in body and 'gradcam.png' in body
    assert 'knn.png' not in body and 'feature_swap.png' not in body and '45.50' not in body


# ---------------------------------------------------------------------------------------------------------------
# Per-class accuracy (issue 30 item 3): the card's table and per_class.png, before / after for a fine-tuned model

CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


def _row(body: str, name: str) -> list:
    line = next(l for l in body.splitlines() if l.startswith(f'| {name} |'))
    return [c.strip() for c in line.strip('|').split('|')]


def test_card_shows_clean_and_pgd20_per_class_with_its_figure(rel):
    from PIL import Image

    results = json.loads((rel.folder / 'results.json').read_text())['results']
    body = card_body(rel.folder)
    assert '## Per-class accuracy' in body and '![Per-class accuracy](per_class.png)' in body
    assert '| class | Clean (first 200) | PGD-20 (first 200) |' in body
    for i, name in enumerate(CLASSES):
        assert _row(body, name) == [name, f"{results['clean']['per_class'][i]:.2f}",
                                    f"{results['pgd20']['per_class'][i]:.2f}"]
    assert Image.open(rel.folder / PER_CLASS_PNG).size[0] == 800
    validate_release(rel.folder)
    (rel.folder / PER_CLASS_PNG).unlink()  # as for the analysis plots: no figure, no section
    with pytest.raises(ReleaseError, match='differs from the card rendered'):
        validate_release(rel.folder)
    write_card(rel.folder)
    assert (rel.folder / PER_CLASS_PNG).is_file() and '## Per-class accuracy' in card_body(rel.folder)


def _fine_tuned(folder: Path, start_sha: str, **init) -> None:
    record = {'source': 'start.safetensors', 'kind': 'file', 'file': 'start.safetensors', 'sha256': start_sha,
              'pinned': False, 'release': None, 'release_folder': None, **init}
    edit_json(folder / 'results.json', lambda d: d['training'].__setitem__('init_from', record))


def test_card_shows_per_class_before_and_after_fine_tuning(rel, tmp_path, capsys):
    from decimal import Decimal

    start = make_results('a' * 64, 'start.safetensors', seed=7)
    before = tmp_path / 'before.json'
    before.write_text(json.dumps(start))
    with pytest.raises(ReleaseError, match='records no training.init_from'):
        write_card(rel.folder, before=before)
    _fine_tuned(rel.folder, 'b' * 64)
    with pytest.raises(ReleaseError, match='describes weights with sha256 a{64}, but this model was fine-tuned '
                                           'from b{64}'):
        write_card(rel.folder, before=before)
    _fine_tuned(rel.folder, 'a' * 64)
    assert load_tool('make_card').main(['--folder', str(rel.folder), '--before', str(before)]) == 0
    after = json.loads((rel.folder / 'results.json').read_text())
    assert after['per_class_before']['model']['sha256'] == 'a' * 64
    body = card_body(rel.folder)
    assert ('| class | Clean before (first 200) | Clean after (first 200) | Clean change (points) | '
            'PGD-20 before (first 200) | PGD-20 after (first 200) | PGD-20 change (points) |') in body
    old, new = start['results']['pgd20']['per_class'][3], after['results']['pgd20']['per_class'][3]
    change = Decimal(str(new)) - Decimal(str(old))
    assert _row(body, 'cat')[4:] == [f'{old:.2f}', f'{new:.2f}', f"{'+' if change >= 0 else ''}{change:.2f}"]
    assert "Fine-tuned from `start.safetensors` (sha256 `aaaaaaaaaaaa`)." in body
    assert '"Before" is `fsr_resnet18.at_cifar10` (sha256 `aaaaaaaaaaaa`)' in body
    validate_release(rel.folder)
    edit_json(rel.folder / 'results.json', lambda d: d['training']['init_from'].__setitem__('sha256', 'c' * 64))
    with pytest.raises(ReleaseError, match='per_class_before .* is not the report of the weights'):
        validate_release(rel.folder)


def test_start_release_folder_gives_the_before_numbers(rel, _rel_template):
    _fine_tuned(rel.folder, _rel_template.sha256, release_folder=str(_rel_template.folder))
    write_card(rel.folder)  # no --before: the start release's results.json, which describes those weights
    before = json.loads((rel.folder / 'results.json').read_text())['per_class_before']
    assert before['model']['sha256'] == _rel_template.sha256
    assert 'Clean before (first 200)' in card_body(rel.folder)


# ---------------------------------------------------------------------------------------------------------------
# Where the evaluation ran: every run of a resumed report with its own hardware


def test_card_names_the_hardware_of_each_run(rel):
    cpu = {'device': 'cpu (AMD EPYC, 2 cores)', 'torch': '2.14.1', 'dtype': 'float32'}
    gpu = {'device': 'cuda (NVIDIA H200)', 'torch': '2.11.0', 'dtype': 'float32', 'memory_format': 'channels_last'}

    def history(report: dict, keys: dict) -> None:
        report.pop('runs', None)
        report.pop('commands', None)
        report.update(keys)

    def body_with(**keys) -> str:
        edit_json(rel.folder / 'results.json', lambda d: history(d, keys))
        write_card(rel.folder)
        validate_release(rel.folder)
        return card_body(rel.folder)

    # a report written before runs were recorded: only its last run's hardware is known
    body = body_with(commands=['verify a', 'verify b --resume r', 'verify c --resume r'], hardware=cpu)
    assert '- Evaluation: runs 1-2: hardware not recorded; run 3: cpu (AMD EPYC, 2 cores), torch 2.14.1, float32;' \
        in body and 'verify a\nverify b --resume r\nverify c --resume r\n' in body
    runs = [{'command': 'verify a', 'hardware': cpu}, {'command': 'verify b --resume r', 'hardware': cpu},
            {'command': 'verify c --resume r', 'hardware': gpu}]
    body = body_with(runs=runs, hardware=gpu)
    assert ('- Evaluation: runs 1-2: cpu (AMD EPYC, 2 cores), torch 2.14.1, float32; run 3: cuda (NVIDIA H200), '
            'torch 2.11.0, float32, channels_last memory;') in body
    body = body_with(hardware=cpu)  # one run: the report's own hardware, no run numbers
    assert '- Evaluation: cpu (AMD EPYC, 2 cores), torch 2.14.1, float32;' in body


def test_card_lists_the_processes_of_a_resumed_training_run(rel):
    first = {'epochs': [1, 44], 'seconds': 536.4, 'device': 'NVIDIA H200', 'command': 'train.py --epochs 80 --resume'}
    second = {'epochs': [45, 80], 'seconds': 430.8, 'device': None, 'command': 'train.py --epochs 80 --resume'}
    edit_json(rel.folder / 'results.json', lambda d: d['training'].update(processes=[first, second]))
    write_card(rel.folder)
    validate_release(rel.folder)
    assert ("Trained in 2 processes, each resuming the previous one's `last.pt` (weights, optimizer, RNG state, "
            "history): epochs 1-44 in 8.9 min on NVIDIA H200; epochs 45-80 in 7.2 min on unknown hardware. The "
            "command below is the last process's.") in card_body(rel.folder)
    edit_json(rel.folder / 'results.json', lambda d: d['training'].update(processes=[first]))
    write_card(rel.folder)  # one process: nothing to say beyond the command
    assert 'Trained in' not in card_body(rel.folder)


def test_card_says_how_far_an_unfinished_autoattack_got(rel):
    partial = '1 of 4 sub-attacks done (apgd-ce), stopped at apgd-t batch 3 of 8; 378 of 1000 points still robust'

    def stop(d: dict) -> None:
        d['results'].pop('autoattack', None)
        d.setdefault('not_run', {})['autoattack'] = (f'deadline: about 900 s needed for its next batch, 12 s left of '
                                                     f'140.00 min; partial: {partial} (progress saved: continue '
                                                     f'with --resume)')
    edit_json(rel.folder / 'results.json', stop)
    write_card(rel.folder)
    validate_release(rel.folder)
    row = next(line for line in card_body(rel.folder).splitlines() if line.startswith('| AutoAttack |'))
    assert row.split(' | ')[1] == 'not measured'
    assert row.endswith(f'in progress, no result until it completes: {partial} |')

    def attack_hours() -> Tuple[float, str]:
        line = next(ln for ln in card_body(rel.folder).splitlines() if ln.startswith('- Evaluation:'))
        hours = re.search(r'; attacks ([0-9.]+) h in all \(([^)]*)\)', line)
        assert hours, line
        return float(hours.group(1)), hours.group(2)

    before, how = attack_hours()
    assert 'in progress' not in how
    # its saved progress: half an hour of AutoAttack so far, counted in the attack time and said so
    edit_json(rel.folder / 'results.json', lambda d: d.setdefault('progress', {}).update(
        autoattack={'seconds': 1800.0, 'current': 'apgd-t', 'batches_done': 3}))
    write_card(rel.folder)
    validate_release(rel.folder)
    after, how = attack_hours()
    assert after == pytest.approx(before + 0.5, abs=0.011)
    assert how.endswith(', 0.50 h of it in stages still in progress')
