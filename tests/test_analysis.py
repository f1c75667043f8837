"""Analyses (fsr_hub.analysis) on a tiny FSR network and tools/analyze.py end to end on tiny data."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import tiny_fsr_net
from fsr_hub import analysis as A
from fsr_hub.evaluate import attack_params, evaluate
from fsr_hub.fsr import FEATURE_LABELS, fsr_output



def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_weighted_knn_hand_case():
    # query (1, 0); class 0 has two neighbours at cos 0.766, class 1 one at cos 0.996 (vectors of any length)
    bank = torch.tensor([[0.766, 0.643], [0.766, -0.643], [0.996, 0.087]]) * torch.tensor([[1.0], [5.0], [100.0]])
    labels = torch.tensor([0, 0, 1])
    q = torch.tensor([[1.0, 0.0]])
    # gamma 0.07: 2 exp(0.766 / 0.07) < exp(0.996 / 0.07), the closer neighbour wins the weighted vote
    preds = A.weighted_knn(bank, labels, q, ks=(1, 3), gamma=0.07, num_classes=2)
    assert preds[1].tolist() == [1] and preds[3].tolist() == [1]
    # a flat temperature makes it a majority vote: 2 e^(0.077) > e^(0.0996)
    assert A.weighted_knn(bank, labels, q, ks=(3,), gamma=10.0, num_classes=2)[3].item() == 0
    with pytest.raises(A.AnalysisError, match='k'):
        A.weighted_knn(bank, labels, q, ks=(4,))


def test_fsr_features_are_the_module_features():
    model = tiny_fsr_net().eval()
    x, _ = _data(4)
    stage = model.s2(model.s1(model.stem(x)))
    fsr = model.fsr['s2']
    m = torch.sigmoid(fsr.separation(stage) / fsr.tau)
    torch.testing.assert_close(A.fsr_features(model, x, 'robust'), (m * stage).mean((2, 3)))
    torch.testing.assert_close(A.fsr_features(model, x, 'final', pool='flatten'), model.forward_features(x).flatten(1))
    assert fsr.output == 'final'
    with pytest.raises(A.AnalysisError, match='vanilla'):
        A.fsr_features(tiny_fsr_net(fsr_positions=()), x)


def test_feature_swap_uses_verify_evaluation_and_restores_the_model(tmp_path):
    model = tiny_fsr_net().eval()
    x, y = _data(6)
    section = A.feature_swap(model, x, y, attacks=('clean', 'fgsm'), outputs=('final', 'non_robust'), batch_size=3)
    ref = evaluate(model, x, y, attacks=('clean', 'fgsm'), batch_size=3, masking_checks=False, progress=False)
    assert section['features'] == ['final', 'non_robust'] and section['position'] == 's2'
    assert section['accuracy']['final'] == {k: v['accuracy'] for k, v in ref['results'].items()}
    with fsr_output(model, 'non_robust'):
        ref_neg = evaluate(model, x, y, attacks=('clean', 'fgsm'), batch_size=3, masking_checks=False, progress=False)
    assert section['accuracy']['non_robust']['fgsm'] == ref_neg['results']['fgsm']['accuracy']
    assert model.fsr['s2'].output == 'final'
    png = A.plot_feature_swap(section, tmp_path / 'feature_swap.png')
    assert Image.open(png).size[0] == 800


def test_deadline_cuts_work_and_says_so(tmp_path):
    model = tiny_fsr_net().eval()
    x, y = _data(4)
    deadline = A.Deadline(minutes=1e-9)  # already over when the first unit would start
    section = A.eps_curve(model, x, y, eps_255=(0, 8), deadline=deadline)
    assert section['eps_255'] == [] and deadline.stopped
    meta = A.section_meta({'architecture': 'tiny'}, {'n': 4}, 'cpu', deadline)
    assert meta['complete'] is False and meta['schema'] == A.ANALYSIS_SCHEMA
    grad = A.gradcam_analysis(model, x, y, png=tmp_path / 'g.png', deadline=A.Deadline(minutes=1e-9))
    assert grad['n'] == 0 and not (tmp_path / 'g.png').exists()
    late = A.Deadline(minutes=1e-9)
    bb = A.blackbox_analysis(model, x, y, attacks=('nattack',), deadline=late)
    assert late.stopped and bb['results'] == {} and set(bb['not_run']) == {'clean', 'nattack'}


def test_knn_and_eps_curve_sections(tmp_path):
    model = tiny_fsr_net().eval()
    x, y = _data(4)
    train_x, train_y = _data(30, seed=1)
    knn = A.knn_analysis(model, train_x, train_y, x, y, ks=(1, 5), outputs=('final', 'robust'), batch_size=16)
    assert set(knn['accuracy']) == {'final', 'robust'} and knn['gamma'] == 0.07 and 'Wu et al.' in knn['gamma_source']
    assert all(0 <= v <= 100 for acc in knn['accuracy'].values() for v in acc.values())
    A.plot_knn(knn, tmp_path / 'knn.png')
    curve = A.eps_curve(model, x, y, eps_255=(0, 2))
    clean = evaluate(model, x, y, attacks=('clean',), masking_checks=False, progress=False)
    assert curve['eps_255'] == [0, 2] and curve['accuracy'][0] == clean['results']['clean']['accuracy']
    curves = [('a', curve['eps_255'], curve['accuracy']), ('b', [0, 2], [50.0, 20.0])]
    png = A.plot_eps_curves(curves, tmp_path / 'e.png')
    assert Image.open(png).size == (800, 460)


def test_gradcam_reads_the_swapped_feature(tmp_path):
    pytest.importorskip('pytorch_grad_cam', reason="the 'analysis' extra is not installed")
    import cv2
    model = tiny_fsr_net().eval()
    x, y = _data(2)
    maps = A.gradcam_maps(model, model.fsr['s2'].tap, x, y)  # output 'final'
    with fsr_output(model, 'robust'):
        maps_pos = A.gradcam_maps(model, model.fsr['s2'].tap, x, y)
    # Grad-CAM by hand: pooled linear head, so the channel weights are fc rows / (h w); ReLU, then (as the
    # grad-cam package does) min-max, resize to the input, min-max again
    stage = model.s2(model.s1(model.stem(x)))
    fsr = model.fsr['s2']
    f_pos = torch.sigmoid(fsr.separation(stage) / fsr.tau) * stage
    for i in range(2):
        cam = F.relu((model.fc.weight[y[i]][:, None, None] * f_pos[i]).sum(0)).detach().numpy()
        cam = cv2.resize(((cam - cam.min()) / (1e-7 + cam.max() - cam.min())).astype(np.float32), (32, 32))
        np.testing.assert_allclose(maps_pos[i], (cam - cam.min()) / (1e-7 + cam.max() - cam.min()), atol=1e-4)
    assert not np.allclose(maps, maps_pos) and all(p.grad is None for p in model.parameters())
    section = A.gradcam_analysis(model, x, y, natural_model=tiny_fsr_net(fsr_positions=()), png=tmp_path / 'g.png')
    assert section['columns'] == ['x', 'f_nat', "x'", 'f+', 'f-', 'f~-'] and section['n'] == 2
    assert Image.open(tmp_path / 'g.png').size[0] == 800


def test_blackbox_section_records_parameters():
    pytest.importorskip('torchattack', reason="the 'analysis' extra is not installed")
    target, source = tiny_fsr_net().eval(), tiny_fsr_net(fsr_positions=()).eval()
    x, y = _data(4)
    section = A.blackbox_analysis(target, x, y, source=source, source_name='tiny', nattack_n=2, max_queries=40,
                                  npop=10)
    out = section['results']
    assert set(out) == {'clean', 'ti_fgsm', 'di_fgsm', 'nattack'} and not section['not_run']
    assert section['accuracy'] == {a: r['accuracy'] for a, r in out.items()}
    # the verify suite's entries: its parameters (attack_params), subsets and source fields
    assert out['ti_fgsm']['params'] == attack_params('ti_fgsm', 8 / 255)
    assert out['nattack']['params'] == attack_params('nattack', 8 / 255, {'max_queries': 40, 'npop': 10})
    assert out['ti_fgsm']['params']['kern_len'] == 15 and out['di_fgsm']['params']['diversity_prob'] == 0.5
    assert out['nattack']['n'] == 2 and out['nattack']['params']['max_queries'] == 40
    assert out['nattack']['subset'] == 'first 2' and out['ti_fgsm']['source'] == 'tiny'
    assert all(out[a]['max_bound_violation'] == 0.0 for a in out if a != 'clean')
    with pytest.raises(A.AnalysisError, match='source'):
        A.blackbox_analysis(target, x, y, attacks=('di_fgsm',))


def test_missing_extra_names_it():
    with pytest.raises(ImportError, match=r"fsr-hub\[analysis\]"):
        A.require('fsr_hub_no_such_module')


def test_attach_refuses_other_weights(tmp_path):
    sec = {'schema': A.ANALYSIS_SCHEMA, 'analysis': 'knn', 'model': {'sha256': 'a' * 64}, 'accuracy': {}}
    (tmp_path / 'knn.json').write_text(json.dumps(sec))
    merged = A.attach_sections({'model': {'sha256': 'a' * 64}}, [tmp_path / 'knn.json'])
    assert merged['analysis']['knn']['analysis'] == 'knn' and merged['analysis']['schema'] == A.ANALYSIS_SCHEMA
    with pytest.raises(A.AnalysisError, match='measured on weights'):
        A.attach_sections({'model': {'sha256': 'b' * 64}}, [tmp_path / 'knn.json'])


def test_analyses_end_to_end_into_the_model_card(tmp_path, cifar_root, capsys):
    """tools/analyze.py runs each analysis on tiny data, attaches them to a release folder's results.json (PNGs
    beside it), and the re-rendered card shows each plot with its numbers; a partial analysis is not shown, and an
    analysis of other weights is refused."""
    from fsr_hub.card import PLOTS as ALL_PLOTS
    from fsr_hub.release import ReleaseError, validate_release, write_card
    from release_builders import build_release, card_body, edit_json, load_tool

    analyze = load_tool('analyze')
    info = build_release(tmp_path, model_args={})  # a full-size fsr_resnet18 release with random weights
    folder = info.folder
    common = ['--model', 'fsr_resnet18', '--weights', str(folder / 'model.safetensors'), '--data', str(cifar_root),
              '--device', 'cpu', '--no-progress']
    a = tmp_path / 'a'
    assert analyze.main(['feature-swap', *common, '--n', '2', '--attacks', 'clean',
                         '--out', str(a / 'feature_swap.json')]) == 0
    assert analyze.main(['eps-curve', *common, '--n', '2', '--eps-list', '0', '--out', str(a / 'eps_curve.json')]) == 0
    assert analyze.main(['knn', *common, '--n', '1', '--n-train', '5', '--ks', '1,5',
                         '--out', str(a / 'knn.json')]) == 0
    assert analyze.main(['gradcam', *common, '--n', '1', '--out', str(a / 'gradcam.json')]) == 0  # f_nat: pyautoattack
    PLOTS = {k: ALL_PLOTS[k] for k in ('eps_curve', 'feature_swap', 'knn', 'gradcam')}  # IB: tests/test_ib.py
    docs = {name: json.loads((a / f'{name}.json').read_text()) for name in PLOTS}
    for name, doc in docs.items():
        assert doc['analysis'] == name and doc['complete'] and doc['png'] == f'{name}.png', name
        assert doc['model']['sha256'] == info.sha256 and (a / doc['png']).is_file()
    assert docs['gradcam']['data']['natural_model']['weights'] == 'pyautoattack'
    curve = str(a / 'eps_curve.json')
    assert analyze.main(['plot-eps', curve, curve, '--png', str(a / 'p.png')]) == 0
    assert analyze.main(['attach', str(folder / 'results.json'), *(str(a / f'{n}.json') for n in PLOTS)]) == 0
    assert all((folder / file).is_file() for file, _, _ in PLOTS.values())
    write_card(folder)
    validate_release(folder)
    body = card_body(folder)
    for key, (file, _, title) in PLOTS.items():
        assert f'### {title}\n\n![{title}]({file})' in body, key
    assert f"| accuracy (%) | {docs['eps_curve']['accuracy'][0]:.2f} |" in body
    assert '|  | Clean |' in body and '|  | 1-NN | 5-NN |' in body
    for feature, row in docs['feature_swap']['accuracy'].items():
        assert f"| {FEATURE_LABELS[feature]} | {row['clean']:.2f} |" in body
    for feature, row in docs['knn']['accuracy'].items():
        assert f"| {FEATURE_LABELS[feature]} | {row['1']:.2f} | {row['5']:.2f} |" in body
    assert "- columns: x, f_nat, x', f+, f-, f~-" in body and '- gamma: 0.07' in body and '- eps: 8/255' in body
    assert '- measured on: cifar10 test (n = 1), cpu' in body and '- command: `python tools/analyze.py knn' in body
    # a partial analysis (the deadline passed before any eps) replaces the complete one: the card drops that plot
    assert analyze.main(['eps-curve', *common, '--n', '2', '--deadline-minutes', '1e-9', '--out', curve]) == 0
    assert json.loads(Path(curve).read_text())['complete'] is False
    assert analyze.main(['attach', str(folder / 'results.json'), curve]) == 0
    assert 'eps_curve is partial (complete: false): the card does not show it' in capsys.readouterr().out
    write_card(folder)
    body = card_body(folder)
    assert 'eps_curve.png' not in body and '![Weighted k-NN' in body
    # an analysis of other weights is refused by attach, and by the card renderer if put there by hand
    edit_json(a / 'knn.json', lambda d: d['model'].__setitem__('sha256', '0' * 64))
    assert analyze.main(['attach', str(folder / 'results.json'), str(a / 'knn.json')]) == 2
    assert 'was measured on weights 000' in capsys.readouterr().err
    edit_json(folder / 'results.json', lambda d: d['analysis']['knn']['model'].__setitem__('sha256', '0' * 64))
    with pytest.raises(ReleaseError, match=r'analysis\.knn was measured on other weights'):
        write_card(folder)
    assert analyze.main(['knn', *common[:4], '--sample', '--out', str(a / 'k.json')]) == 2
    assert analyze.main(['blackbox', *common, '--attacks', 'ti_fgsm', '--out', str(a / 'b.json')]) == 2
    err = capsys.readouterr().err
    assert 'error: knn needs the training images' in err and 'error: TI-FGSM / DI-FGSM need --source' in err


def test_curve_labels_name_the_release_and_random_weights(tmp_path):
    assert A.model_label({'architecture': 'fsr_resnet18', 'tag': 'at_cifar10'}) == 'fsr_resnet18.at_cifar10'
    assert A.model_label({'architecture': 'cifar_resnet18', 'tag': None, 'random_init': True}) == (
        'cifar_resnet18 (random init)')
    doc = {'analysis': 'eps_curve', 'eps_255': [0, 8], 'accuracy': [10.0, 0.0],
           'model': {'architecture': 'fsr_resnet18', 'tag': None, 'random_init': True}}
    (tmp_path / 'c.json').write_text(json.dumps(doc))
    assert A.read_eps_curve(tmp_path / 'c.json') == ('fsr_resnet18 (random init)', [0, 8], [10.0, 0.0])


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, 'fp32_precision'), reason='torch < 2.9 flags')
@pytest.mark.parametrize('analysis', ['knn', 'gradcam'])
def test_analysis_attacks_run_in_strict_float32(analysis, monkeypatch, tmp_path):
    """The PGD of the k-NN and Grad-CAM analyses runs with TF32 off, as the verify suite's attacks do."""
    if analysis == 'gradcam':
        pytest.importorskip('pytorch_grad_cam', reason="the 'analysis' extra is not installed")
    module = A.features if analysis == 'knn' else A.gradcam
    seen = []

    def recording_pgd(*args, **kwargs):
        seen.append(torch.backends.cuda.matmul.fp32_precision)
        return module_pgd(*args, **kwargs)
    module_pgd = module.pgd
    monkeypatch.setattr(module, 'pgd', recording_pgd)
    b = torch.backends
    saved = (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)
    b.cuda.matmul.fp32_precision = b.cudnn.conv.fp32_precision = 'tf32'
    try:
        model, (x, y) = tiny_fsr_net().eval(), _data(2)
        if analysis == 'knn':
            A.knn_analysis(model, *_data(8, seed=1), x, y, ks=(1,), outputs=('final',), batch_size=8)
        else:
            A.gradcam_analysis(model, x, y)
        assert seen and set(seen) == {'ieee'}
        assert b.cuda.matmul.fp32_precision == 'tf32'  # restored after
    finally:
        b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision = saved
