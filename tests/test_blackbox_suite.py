"""The black-box attacks as attacks of the verify suite (fsr_hub.evaluate): parameters in the report, NAttack's
subset and resumable progress, and the cross-check that a black-box attack beating white-box ones flags masking."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsr_hub.autoattack import unpack_flags
from fsr_hub.blackbox import NATTACK_N
from fsr_hub.card import ci95
from fsr_hub.evaluate import STAGE_ORDER, attack_params, evaluate, preset
from fsr_hub.sample import load_sample

pytest.importorskip('torchattack', reason="the 'analysis' extra is not installed")


class PixelLinear(nn.Module):
    """Logits W x + b over the raw pixels (DI-FGSM's enlarged copies are pooled back to 32x32); ``quantize`` rounds
    the input to 1/255 first, which has zero gradient everywhere: the classic gradient-masking defence that
    white-box gradient attacks cannot get through."""

    def __init__(self, quantize: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3 * 32 * 32, 10)
        self.quantize = quantize

    def forward(self, x):
        if x.shape[-1] != 32:
            x = F.adaptive_avg_pool2d(x, 32)
        if self.quantize:
            x = torch.round(x * 255) / 255
        return self.fc(x.flatten(1))


def _images(n):
    x, _ = load_sample(n)  # real images: whole multiples of 1/255, so quantizing leaves them unchanged
    return x


def test_a_masked_model_is_caught_by_the_blackbox_cross_check():
    source, masked = PixelLinear(), PixelLinear(quantize=True)  # same weights: the source is the unmasked model
    x = _images(4)
    with torch.no_grad():
        y = masked(x).argmax(1)  # clean accuracy 100 %
    ev = evaluate(masked, x, y, attacks=('clean', 'pgd20', 'ti_fgsm', 'di_fgsm', 'nattack'), batch_size=4,
                  transfer_model=source, transfer_source='unmasked twin', masking_checks=False, progress=False,
                  attack_overrides={'nattack': {'max_queries': 3000}})
    r = ev['results']
    assert r['clean']['accuracy'] == 100.0 and r['pgd20']['accuracy'] == 100.0  # the gradient is zero: PGD is stuck
    # a margin of a few units against eps * |w_i - w_j|_1 ~ 1.7: every black-box attack gets through
    assert r['ti_fgsm']['accuracy'] < 50 and r['di_fgsm']['accuracy'] < 50 and r['nattack']['accuracy'] == 0.0
    assert r['ti_fgsm']['source_accuracy'] == 0.0 and r['di_fgsm']['source'] == 'unmasked twin'
    assert r['nattack']['successes'] == 4 and r['nattack']['queries']['max'] < 3000
    versus = ev['masking_checks']['blackbox_vs_whitebox']
    assert set(versus) == {'ti_fgsm', 'di_fgsm', 'nattack'} and versus['nattack']['whitebox'] == 'pgd20'
    assert versus['nattack'] == {'accuracy': 0.0, 'whitebox': 'pgd20', 'whitebox_accuracy': 100.0, 'n': 4,
                                 'tolerance': 1.0, 'passed': False}
    assert ev['masking_checks']['checks']['blackbox_ge_whitebox'] is False and ev['masking_checks']['passed'] is False
    # the same attacks on the unmasked model: white-box is the stronger, the check passes
    ev = evaluate(source, x, y, attacks=('clean', 'pgd20', 'nattack'), masking_checks=False, progress=False,
                  attack_overrides={'nattack': {'max_queries': 3000}})
    assert ev['results']['pgd20']['accuracy'] == 0.0 and ev['masking_checks']['checks']['blackbox_ge_whitebox'] is True


def test_blackbox_parameters_come_from_attack_params_and_nattack_runs_on_its_subset():
    model = PixelLinear()
    x = _images(4)
    y = torch.zeros(4, dtype=torch.long)
    ev = evaluate(model, x, y, attacks=('nattack', 'ti_fgsm'), transfer_model=PixelLinear(seed=1),
                  transfer_source='other', masking_checks=False, progress=False, subsets={'nattack': 3},
                  attack_overrides={'nattack': {'max_queries': 500, 'npop': 20}})
    n = ev['results']['nattack']
    assert n['params'] == {'eps': 8 / 255, 'max_queries': 500, 'npop': 20, 'sigma': 0.1, 'lr': 0.02, 'init_std': 0.001}
    assert n['n'] == 3 and n['subset'] == 'first 3' and n['max_bound_violation'] <= 1e-6
    t = ev['results']['ti_fgsm']
    assert t['params'] == attack_params('ti_fgsm', 8 / 255) == {'eps': 8 / 255, 'steps': 1, 'kern_len': 15, 'n_sig': 3,
                                                                 'alpha': 8 / 255}
    assert t['n'] == 4 and t['implementation'].startswith('torchattack')
    assert STAGE_ORDER.index('ti_fgsm') < STAGE_ORDER.index('pgd20') < STAGE_ORDER.index('nattack') < \
        STAGE_ORDER.index('autoattack')
    attacks, subsets, _ = preset('full', transfer=True, blackbox=True)
    assert {'ti_fgsm', 'di_fgsm', 'nattack', 'transfer'} <= set(attacks) and 'nattack' not in preset('full')[0]
    assert attack_params('nattack', 8 / 255)['max_queries'] == 40_000 and NATTACK_N == 1000


def test_bad_blackbox_arguments():
    x, y = _images(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match='ti_fgsm, di_fgsm need a source model'):
        evaluate(PixelLinear(), x, y, attacks=('ti_fgsm', 'di_fgsm'), progress=False)
    with pytest.raises(ValueError, match=r"nattack has no parameter\(s\) \['queries'\]"):
        evaluate(PixelLinear(), x, y, attacks=('nattack',), progress=False,
                 attack_overrides={'nattack': {'queries': 9}})
    with pytest.raises(ValueError, match='only the black-box attacks'):
        attack_params('pgd20', 8 / 255, {'steps': 5})


def test_nattack_interrupted_resumes_to_the_result_of_one_run():
    model = PixelLinear()
    x = _images(4)
    with torch.no_grad():
        y = model(x).argmax(1)
    kwargs = dict(attacks=('clean', 'nattack'), batch_size=2, masking_checks=False, progress=False,
                  attack_overrides={'nattack': {'max_queries': 100, 'npop': 10, 'lr': 0.005}})
    whole = evaluate(model, x, y, **kwargs)
    snapshots = []

    def stop_after_first_batch(snapshot):
        snapshots.append(json.loads(json.dumps(snapshot)))  # what a report on disk holds
        if (snapshot['progress'].get('nattack') or {}).get('done') == 2 and len(snapshots) < 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, x, y, on_update=stop_after_first_batch, **kwargs)
    partial = snapshots[-1]
    assert partial['not_run'] == {'nattack': 'interrupted while running'} and not partial['complete']
    assert partial['progress']['nattack']['done'] == 2 and len(partial['progress']['nattack']['queries']) == 2
    rest = evaluate(model, x, y, previous=partial, **kwargs)
    assert rest['complete'] and rest['resumed'] == ['clean'] and not rest['progress']
    a, b = rest['results']['nattack'], whole['results']['nattack']
    assert {k: v for k, v in a.items() if k != 'seconds'} == {k: v for k, v in b.items() if k != 'seconds'}
    assert torch.equal(unpack_flags(rest['per_example']['nattack'], 4),
                       unpack_flags(whole['per_example']['nattack'], 4))
    # a previous result measured with other parameters is measured again, not adopted
    other = dict(kwargs, attack_overrides={'nattack': {'max_queries': 50, 'npop': 10}})
    again = evaluate(model, x, y, previous=json.loads(json.dumps(whole)), **other)
    assert again['resumed'] == ['clean'] and again['results']['nattack']['params']['max_queries'] == 50


def test_card_shows_the_blackbox_metrics_with_their_source_subset_and_cross_check(tmp_path):
    from huggingface_hub import ModelCard

    from fsr_hub.release import write_card
    from release_builders import build_release, edit_json

    model, source = PixelLinear(), PixelLinear(seed=1)
    x = _images(4)
    with torch.no_grad():
        y = model(x).argmax(1)
    ev = evaluate(model, x, y, attacks=('clean', 'pgd20', 'ti_fgsm', 'nattack'), transfer_model=source,
                  transfer_source='cifar_resnet18 (pyautoattack, sha256 0123456789ab)', masking_checks=False,
                  progress=False, subsets={'nattack': 2}, attack_overrides={'nattack': {'max_queries': 600}})
    info = build_release(tmp_path)

    def add(d):
        d['results'].update({k: ev['results'][k] for k in ('ti_fgsm', 'nattack')})
        d['masking_checks']['blackbox_vs_whitebox'] = ev['masking_checks']['blackbox_vs_whitebox']
    edit_json(info.folder / 'results.json', add)
    write_card(info.folder)
    card = ModelCard.load(info.folder / 'README.md')
    rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
            for line in card.text.splitlines() if line.startswith('| ')}
    ti, na = ev['results']['ti_fgsm'], ev['results']['nattack']
    assert rows['TI-FGSM (black-box)'] == [
        f"{ti['accuracy']:.2f}", f"{ci95(ti['accuracy'], ti['n']):.2f}", f"first {ti['n']}", '62.53',
        'Table 3 (from a natural ResNet-50)',
        'source: cifar_resnet18 (pyautoattack, sha256 0123456789ab); 1 step, step eps, Gaussian kernel 15x15']
    assert rows['NAttack (black-box)'] == [
        f"{na['accuracy']:.2f}", f"{ci95(na['accuracy'], 2):.2f}", 'first 2', '52.65', 'Table 3 (1,000 images)',
        'at most 600 queries per image, npop 300, sigma 0.1, lr 0.02; first 2 images']
    assert 'DI-FGSM (black-box)' not in rows  # not measured: no row
    assert {e.metric_config for e in card.data.eval_results} >= {'ti_fgsm', 'nattack'}
    assert f"- nattack {na['accuracy']:.2f} vs pgd20 0.00 on the first 2 images: " in card.text
