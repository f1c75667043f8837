"""A pruned model through the release flow: tools/prune.py's summary into the verify report (--prune-summary,
with the fp16 cast), the sparsity recounted on the released file, the card's pruning section and cost row, the
comparison with the dense release, and release validation catching a report whose zeros are not those of the
weights."""
import json
from pathlib import Path

import pytest
import torch

from fsr_hub.pruning import run_prune
from fsr_hub import release as release_module
from fsr_hub.pruning.record import measured_sparsity, versus_dense
from fsr_hub.release import ReleaseError, assemble_release, validate_release
from fsr_hub.weights import read_weights, save_weights, sha256_file
from release_builders import edit_json, load_tool
from test_prune import TINY_VGG, tiny_prune_config

verify_tool = load_tool('verify')


@pytest.fixture(scope='module')
def pruned(tmp_path_factory):
    """A tiny pruned fsr_vgg16 (no fine-tuning), its fp16 cast and the verify report of that cast."""
    root = tmp_path_factory.mktemp('pruned_release')
    cfg = tiny_prune_config(root, n_train=32, n_test=8, saliency_batches=1, epochs=0, eval_images=4)
    data = cfg.data
    summary = run_prune(cfg, command='python tools/prune.py (test)')
    fp32 = root / 'out' / 'pruned.safetensors'
    fp16 = root / 'model_fp16.safetensors'
    save_weights(read_weights(fp32), fp16, dtype=torch.float16)
    report = root / 'results.json'
    argv = ['--model', 'fsr_vgg16', '--weights', str(fp16), '--data', str(data), '--attacks', 'clean,pgd20',
            '--no-masking-checks', '--n', '8', '--batch-size', '8', '--device', 'cpu', '--no-progress',
            '--prune-summary', str(root / 'out' / 'prune_summary.json'), '--cast-from', str(fp32),
            '--out', str(report)]
    assert verify_tool.main(argv) == 0
    return root, data, summary, fp16, argv


def test_verify_records_the_run_and_the_sparsity_of_the_verified_file(pruned):
    root, _, summary, fp16, _ = pruned
    report = json.loads((root / 'results.json').read_text())
    section = report['pruning']
    assert report['model']['model_args'] == TINY_VGG and 'training' not in report
    assert section['source']['sha256'] == summary['source']['sha256'] and section['source']['release'] is None
    assert section['cast']['from_sha256'] == summary['weights']['sha256'] and section['cast']['dtype'] == 'float16'
    assert section['mode'] == 'reduced' and section['reductions'] == summary['reductions']
    from fsr_hub.models import create
    from fsr_hub.weights import load_weights
    model = create('fsr_vgg16', num_classes=10, **TINY_VGG)
    load_weights(model, fp16)
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    assert section['sparsity']['nonzero_params'] == sum(p.numel() for p in model.parameters()) - zeros
    assert section['sparsity'] == measured_sparsity(model, flops=False)['sparsity']
    assert section['flops']['gflops_fvcore_sparse'] < section['flops']['gflops_fvcore_dense']


def test_release_card_shows_the_pruning_and_validation_recounts_the_zeros(pruned, tmp_path):
    root, _, summary, fp16, _ = pruned
    results = json.loads((root / 'results.json').read_text())
    info = assemble_release(tmp_path, fp16, results, tag='fgsmrs_mad90_cifar10')
    card = (info.folder / 'README.md').read_text()
    sp = results['pruning']['sparsity']
    assert '## Pruning' in card and '**A reduced run, not MAD\'s recipe:**' in card
    assert f"{sp['nonzero_params']:,} non-zero" in card
    assert '| this model, zero weights skipped |' in card
    for row in sp['layers']:
        assert f"| `{row['layer']}` |" in card
    assert '| dense |' in card and '| pruned |' in card
    assert 'Pruned from `' in card and 'were not recorded' not in card
    assert 'h in all on ' in card and 'saliency 0.' in card  # computed in this run: its minutes

    def tamper(r):
        r['pruning']['sparsity']['layers'][0]['zeros'] += 1
    edit_json(info.folder / 'results.json', tamper)
    with pytest.raises(ReleaseError, match='pruning.sparsity does not match the zeros'):
        validate_release(info.folder, check_card=False)


@pytest.mark.parametrize('change, message', [
    (lambda argv, root: argv + ['--train-summary', str(root / 'out' / 'prune_summary.json')], 'not both'),
    (lambda argv, root: [a for a in argv if a not in ('--cast-from', str(root / 'out' / 'pruned.safetensors'))],
     'belongs to another run'),
])
def test_bad_prune_summaries_are_one_line_errors(pruned, change, message, capsys, tmp_path):
    root, _, _, _, argv = pruned
    argv = change(list(argv), root)
    argv[argv.index('--out') + 1] = str(tmp_path / 'r.json')
    assert verify_tool.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_train_summary_is_not_a_prune_summary(pruned, tmp_path, capsys):
    root, _, summary, _, argv = pruned
    fake = tmp_path / 'train_summary.json'
    fake.write_text(json.dumps({'schema': 'fsr-hub/train/v1', 'config': {'model': 'fsr_vgg16',
                                                                         'model_args': TINY_VGG}}))
    argv = list(argv)
    argv[argv.index('--prune-summary') + 1] = str(fake)
    argv[argv.index('--out') + 1] = str(tmp_path / 'r.json')
    assert verify_tool.main(argv) == 2
    assert 'expected \'fsr-hub/prune/v1\'' in capsys.readouterr().err


def test_the_card_compares_the_pruned_file_with_its_dense_release(pruned, tmp_path, monkeypatch):
    root, data, _, fp16, argv = pruned
    dense_report = tmp_path / 'dense.json'
    dense_summary = tmp_path / 'train_summary.json'  # what builds the tiny dense model
    dense_summary.write_text(json.dumps({
        'schema': 'fsr-hub/train/v1', 'config': {'model': 'fsr_vgg16', 'model_args': TINY_VGG},
        'weights': {'final': {'sha256': sha256_file(root / 'dense.safetensors')}}}))
    dense_argv = list(argv[:argv.index('--prune-summary')]) + ['--train-summary', str(dense_summary), '--out',
                                                               str(dense_report)]
    dense_argv[dense_argv.index('--weights') + 1] = str(root / 'dense.safetensors')
    assert verify_tool.main(dense_argv) == 0
    results, dense = json.loads((root / 'results.json').read_text()), json.loads(dense_report.read_text())
    section = versus_dense(results, dense)
    rows = {r['metric']: r for r in section['rows']}
    assert set(rows) == {'clean', 'pgd20', 'ensemble'}
    for m, r in rows.items():
        assert r['pruned'] == results['results'][m]['accuracy'] and r['dense'] == dense['results'][m]['accuracy']
        assert r['gap'] == pytest.approx(r['pruned'] - r['dense'], abs=0.011) and r['subset'] == 'all 8'
    with pytest.raises(ValueError, match='was pruned from'):
        versus_dense(results, results)

    # a release whose source is at hand gets the comparison in results.json and on its card
    dense_folder = tmp_path / 'dense_release'
    dense_folder.mkdir()
    (dense_folder / 'results.json').write_text(json.dumps(dense))
    results['pruning']['source']['release'] = 'fsr_vgg16.tiny_cifar10'
    monkeypatch.setattr(release_module, 'local_release',
                        lambda name: dense_folder if name == 'fsr_vgg16.tiny_cifar10' else None)
    info = assemble_release(tmp_path / 'cards', fp16, results, tag='fgsmrs_mad90_cifar10')
    stored = json.loads((info.folder / 'results.json').read_text())['pruning']['versus_dense']
    assert stored['rows'] == section['rows'] and stored['sha256'] == section['sha256']
    card = (info.folder / 'README.md').read_text()
    assert 'against `fsr_vgg16.tiny_cifar10`, the dense model' in card
    assert f"| {rows['pgd20']['gap']:+.2f} |" in card


def test_the_readme_table_says_how_a_pruned_release_was_made(pruned, tmp_path):
    from fsr_hub.card_tables import released_table

    root, _, _, fp16, _ = pruned
    info = assemble_release(tmp_path, fp16, json.loads((root / 'results.json').read_text()), tag='fgsmrs_mad90_cifar10')
    table = released_table({info.name: (info.results, info.config)})
    zeros = 100 * info.results['pruning']['sparsity']['prunable_sparsity']
    row = f'| MAD pruning of `dense weights` to {zeros:.2f} % zeros (conv / linear), 0 MART epochs, reduced run |'
    assert row in table
