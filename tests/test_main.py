"""The main job (``python -m fsr_hub``): a planned, unreleased name -> says so + cost report; a typo -> error;
a release folder, a local file, or a released name pulled through huggingface_hub -> a table of measured vs card
vs paper numbers, and a footer naming only the attacks that ran."""
import json
import re

import pytest
import torch

from fsr_hub import paper
from fsr_hub.__main__ import main
from fsr_hub.attacks import pgd
from fsr_hub.models import create
from fsr_hub.release import validate_release
from fsr_hub.catalog import RELEASED, default_release
from fsr_hub.sample import load_sample
from fsr_hub.weights import save_weights

from release_builders import (NAME, REPO_ID, REPO_ROOT, SMALL_ARGS, build_release, fill_hf_cache, json_result,
                              start_python)


@pytest.fixture(scope='module')
def tiny_release(tmp_path_factory):
    return build_release(tmp_path_factory.mktemp('main'), attacks=('clean', 'pgd20', 'pgd100'), seed=5)


def _row(out: str, metric: str) -> list:
    line = next(l for l in out.splitlines() if l.startswith(f'| {metric} '))
    return [c.strip() for c in line.split('|')[1:-1]]


def test_planned_name_says_so_and_prints_cost(capsys):
    assert main([], released={}) == 0
    out = capsys.readouterr().out
    assert f'No weights have been released for {NAME} yet (it is planned)' in out
    row = next(l for l in out.splitlines() if l.startswith('| fsr_resnet18 |'))
    assert f"{sum(p.numel() for p in create('fsr_resnet18').parameters()):,}" in row


@pytest.mark.parametrize('name, listed', [
    ('fsr_resnet18.bogus', 'released: none; planned: fsr_resnet18.at_cifar10'),
    ('cifar_vgg16.at_cifar100', 'released: none; planned: cifar_vgg16.at_cifar10'),
])
def test_unknown_tag_is_an_error_listing_the_tags(name, listed, capsys):
    assert main(['--model', name], released={}) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'fsr-hub: error: --model {name}: ') and listed in err and err.count('\n') == 1, err


def test_released_tags_are_listed_and_not_called_planned(capsys):
    released = {NAME: '0' * 64, 'fsr_resnet18.trades_cifar10': '1' * 64}
    assert main(['--model', 'fsr_resnet18.bogus'], released=released) == 2
    assert 'released: fsr_resnet18.at_cifar10, fsr_resnet18.trades_cifar10; planned: none' in capsys.readouterr().err


def test_release_folder_pgd20_matches_direct_evaluation(tiny_release, capsys):
    n, bs = 6, 3
    assert main(['--release', str(tiny_release.folder), '--attack', 'pgd20', '--n', str(n),
                 '--batch-size', str(bs), '--device', 'cpu']) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert 'batch' in captured.err  # tqdm progress bar
    header = next(l for l in out.splitlines() if l.startswith('| metric'))
    assert f'measured here ({n} images, cpu)' in header and 'model card (test images)' in header
    # measured numbers equal an independent evaluation of the same weights on the same images
    model = validate_release(tiny_release.folder).model  # a fresh model: the fixture's is never touched
    x, y = load_sample(n)
    clean = adv = 0
    for i in range(0, n, bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        with torch.no_grad():
            clean += (model(xb).argmax(1) == yb).sum().item()
            xa = pgd(model, xb, yb, eps=8 / 255, alpha=0.8 / 255, steps=20)
            adv += (model(xa).argmax(1) == yb).sum().item()
    ref = paper.paper_reference('fsr_resnet18', 'at_cifar10')
    for metric, key, correct in (('Clean', 'clean', clean), ('PGD-20', 'pgd20', adv)):
        cells = _row(out, metric)
        assert cells[1] == f'{100 * correct / n:.2f}'
        assert cells[2] == f"{tiny_release.results['results'][key]['accuracy']:.2f} (first 200)"
        assert cells[3] == f'{ref.metrics[key]:.2f} ({ref.sources[key]})'
    assert not any(l.startswith('| FGSM') for l in out.splitlines())
    assert 'Linf eps 8/255; PGD-20: 20 steps, step eps/10, no random start. 6 images' in out


def test_local_weights_and_clean_footer(tmp_path, capsys):
    torch.manual_seed(0)
    save_weights(create('fsr_resnet18', **SMALL_ARGS), tmp_path / 'w.safetensors')
    # the registry architecture has 2 blocks per stage: a 1-block file does not fit -> one-line error
    assert main(['--weights', str(tmp_path / 'w.safetensors'), '--attack', 'clean', '--n', '10']) == 2
    err = capsys.readouterr().err
    assert err.startswith('fsr-hub: error:') and 'does not fit CifarResNet' in err and err.count('\n') == 1
    save_weights(create('cifar_resnet18'), tmp_path / 'v.safetensors')
    assert main(['--model', 'cifar_resnet18.at_cifar10', '--weights', str(tmp_path / 'v.safetensors'),
                 '--attack', 'clean', '--n', '10', '--no-progress']) == 0
    out = capsys.readouterr().out
    cells = _row(out, 'Clean')
    ref = paper.paper_reference('cifar_resnet18', 'at_cifar10')
    assert cells[2] == 'no card' and cells[3] == f"{ref.metrics['clean']:.2f} (Table 1)"
    footer = out.strip().splitlines()[-1]
    assert footer.startswith('Clean accuracy only. 10 images') and 'PGD' not in out and 'eps' not in footer


# Runs in a fresh interpreter whose huggingface_hub is offline (HF_HUB_OFFLINE and HF_HUB_CACHE are read at import):
# argv[1] is a JSON list of runs [released pins or null for `python -m fsr_hub` itself, argv]; after each run it
# records the exit status, the output and which of the modules __main__ loads lazily are loaded.
FRESH = r'''
import contextlib, io, json, runpy, sys
LAZY = ('fsr_hub.evaluate', 'fsr_hub.attacks', 'fsr_hub.release', 'fsr_hub.card', 'fsr_hub.cost', 'fsr_hub.sample')
runs = []
for released, argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if released is None:  # exactly what `python -m fsr_hub ARGV` runs
            sys.argv = ['fsr-hub', *argv]
            try:
                runpy.run_module('fsr_hub', run_name='__main__', alter_sys=True)
                code = None
            except SystemExit as e:
                code = e.code
        else:
            from fsr_hub.__main__ import main
            code = main(argv, released=released)
    loaded = sorted(m for m in sys.modules if m in LAZY or m.split('.')[0] in ('fvcore', 'jinja2'))
    runs.append({'exit': code, 'out': out.getvalue(), 'err': err.getvalue(), 'loaded': loaded})
print(json.dumps(runs))
'''


def _fresh_runs(tmp, runs: list) -> list:
    """``FRESH`` over ``runs`` in one fresh, offline interpreter whose hub cache is ``tmp / 'cache'``."""
    return json_result(start_python(['-c', FRESH, json.dumps(runs)], tmp, env={'HF_HUB_CACHE': str(tmp / 'cache')}))


@pytest.fixture(scope='module')
def fresh(tmp_path_factory):
    """One fresh, offline interpreter: `--help`, and a released name pulled from a cache filled by hf_hub_download
    (right pin, wrong pin, a released name missing from the cache)."""
    tmp = tmp_path_factory.mktemp('fresh')
    rel = build_release(tmp / 'rel', attacks=('clean', 'fgsm'), seed=7)  # 1-block stages, in its config.json
    fill_hf_cache(tmp / 'cache', REPO_ID, rel.folder)
    job = ['--attack', 'fgsm', '--n', '10', '--no-progress']
    runs = [[None, ['--help']], [{NAME: rel.sha256}, job], [{NAME: 'f' * 64}, job],
            [{'cifar_resnet18.at_cifar10': 'f' * 64}, ['--model', 'cifar_resnet18.at_cifar10']]]
    return dict(zip(('help', 'released', 'wrong pin', 'not cached'), _fresh_runs(tmp, runs))), rel


def test_help_parses_before_the_evaluation_stack_loads(fresh):
    """``python -m fsr_hub --help`` loads nothing beyond what ``import fsr_hub`` (torch, timm) loads."""
    run = fresh[0]['help']
    assert run['exit'] == 0 and '--attack {pgd20,fgsm,clean}' in run['out']
    assert run['loaded'] == []


@pytest.mark.slow  # the real default model, PGD-20 on 50 images: 35-71 s measured on 2 cores
def test_python_m_fsr_hub_runs_offline(tmp_path):
    """The README's first command, offline in this checkout: the best released model from its release folder,
    measured clean and PGD-20 on 50 sample images beside its card's numbers."""
    (run,) = _fresh_runs(tmp_path, [[None, []]])
    assert run['exit'] == 0, run['err']
    name = default_release()
    folder = REPO_ROOT / 'model_cards' / name
    assert name in RELEASED and run['out'].startswith(f'{name}: release folder {folder} (sha256 {RELEASED[name][:12]})')
    card = json.loads((folder / 'results.json').read_text())['results']
    for metric, key in (('Clean', 'clean'), ('PGD-20', 'pgd20')):
        cells = _row(run['out'], metric)
        n = card[key]['n']
        assert cells[2] == f"{card[key]['accuracy']:.2f} ({'all' if n == 10000 else 'first'} {n:,})"
        # 50 images: the measured number lies within 4 standard errors (<= 28 points) of the card's
        assert abs(float(cells[1]) - card[key]['accuracy']) <= 4 * 50 / 50 ** 0.5, cells
    assert "the paper's recipe, not this model's" in run['out'].splitlines()[2]
    assert 'PGD-20: 20 steps, step eps/10, no random start. 50 images' in run['out']


def test_released_name_pulled_through_huggingface_hub(fresh):
    """Once released (a pin in RELEASED), the job gets the release files through huggingface_hub's cache, holds
    the weights to the pin, and shows the card's numbers from the pulled results.json."""
    run, rel = fresh[0]['released'], fresh[1]
    assert run['exit'] == 0, run['err']
    assert f'{REPO_ID} (sha256 {rel.sha256[:12]})' in run['out']
    assert _row(run['out'], 'Clean')[2] == f"{rel.results['results']['clean']['accuracy']:.2f} (first 200)"
    assert _row(run['out'], 'FGSM')[2] == f"{rel.results['results']['fgsm']['accuracy']:.2f} (first 200)"
    assert 'Linf eps 8/255; FGSM: 1 step. 10 images' in run['out']


def test_hub_weights_other_than_the_pin_are_refused(fresh):
    run, rel = fresh[0]['wrong pin'], fresh[1]
    assert run['exit'] == 2 and run['err'].count('\n') == 1
    assert re.search(rf"fsr-hub: error: .*model\.safetensors: sha256 {rel.sha256} differs from the pin f{{64}}",
                     run['err'])


def test_released_name_not_in_the_offline_cache(fresh):
    run = fresh[0]['not cached']
    assert run['exit'] == 2 and run['err'].count('\n') == 1
    assert run['err'].startswith('fsr-hub: error: could not get cifar_resnet18.at_cifar10 from the Hugging Face '
                                 'Hub repo fsr-hub/cifar_resnet18.at_cifar10')


@pytest.mark.parametrize('argv, message', [
    (['--model', 'resnet50'], "unknown architecture 'resnet50'"),
    (['--n', '0'], 'n=0 is out of range'),
    (['--n', '999'], 'n=999 is out of range'),
    (['--batch-size', '0'], '--batch-size must be positive'),
    (['--release', '/nonexistent/fsr_resnet18.at_cifar10'], 'release folder not found'),
    (['--weights', '/nonexistent.safetensors'], 'Weight file not found: /nonexistent.safetensors'),
    (['--device', 'nodevice'], "--device: device 'nodevice'"),
])
def test_bad_arguments_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('fsr-hub: error:') and message in err and err.count('\n') == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-CUDA message')
def test_cuda_unavailable(capsys):
    assert main(['--device', 'cuda']) == 2
    assert 'CUDA is not available' in capsys.readouterr().err
