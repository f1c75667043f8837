"""The Information-Bottleneck feature split and the NRF / RF attacks (fsr_hub.analysis.ib, ib_attacks) on tiny
networks, and tools/analyze.py ib-split / ib-attack into a model card."""
import json
import math

import pytest
import torch
import torch.nn as nn

from conftest import tiny_fsr_net
from fsr_hub import analysis as A
from fsr_hub.analysis import ib
from fsr_hub.analysis import ib_attacks as atk


@pytest.fixture(autouse=True)
def one_thread():
    """Batches of 2 to 4 tiny images: intra-op threads cost more in synchronisation than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ScaledIdentityNet(nn.Module):
    """z = scale * x at stage ``body`` (so the spatial variance of z is set by the image), then a pooled linear head."""

    def __init__(self, scale: float = 10.0):
        super().__init__()
        self.body = nn.Conv2d(3, 3, 1, bias=False)
        nn.init.constant_(self.body.weight, 0.0)
        with torch.no_grad():
            self.body.weight[:, :, 0, 0] = scale * torch.eye(3)
        self.fc = nn.Linear(3, 10)
        self.feature_info = [dict(module='body', num_chs=3, reduction=1)]

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def _data(n=4, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_sigma_starts_at_ln2_and_the_kl_term():
    torch.manual_seed(0)
    model = ScaledIdentityNet().eval()
    x, y = _data(2)
    cut, why = ib.feature_cut(model, x)
    assert cut.stage == 'body' and why.startswith('the last feature stage') and cut.fsr is None
    # a step too small to move lambda: sigma is softplus(0) = ln 2 for every unit
    split = ib.ib_split_batch(cut, x, y, steps=1, lr=1e-12)
    torch.testing.assert_close(split.sigma, torch.full((2, 3), math.log(2.0)))
    assert ib.split_params(200, 0.1, 0.3)['sigma0'] == math.log(2.0)
    assert ib.kl_term(torch.tensor(2.0), torch.tensor(1.0)).item() == pytest.approx(0.153426, abs=1e-6)
    v = torch.tensor([1e-3, 0.5, 2.0, 30.0])
    torch.testing.assert_close(ib.kl_term(v, v.sqrt()), torch.zeros(4), atol=1e-6, rtol=0)
    assert ib.kl_term(torch.tensor(0.5), torch.tensor(2.0)).item() > 0


def test_split_depends_on_the_batch_and_is_deterministic_under_a_seed():
    model = ScaledIdentityNet().eval()
    quiet = 0.5 + 0.05 * (torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5)
    loud = (torch.arange(64).view(1, 1, 8, 8) % 2).float().expand(1, 3, 8, 8)  # 0/1 stripes: v = 25 after x10
    y = torch.tensor([1, 2, 3, 4])
    cut, _ = ib.feature_cut(model, quiet)
    alone = ib.ib_split_batch(cut, quiet, y[:3], steps=2)
    mixed = ib.ib_split_batch(cut, torch.cat([quiet, loud]), y, steps=2)
    # the same three images: every unit robust on their own (sigma^2 ~ 0.48 > M ~ 0.05), none beside the loud one
    assert alone.robust.all() and not mixed.robust[:3].any()
    assert mixed.threshold == pytest.approx(float((10 * loud).var(dim=(2, 3)).max()), rel=1e-5)

    net = tiny_fsr_net().eval()
    x, y = _data(4)
    cut, _ = ib.feature_cut(net, x)
    runs = [ib.ib_split_batch(cut, x, y, steps=3, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0].sigma, runs[1].sigma) and torch.equal(runs[0].robust, runs[1].robust)
    assert not torch.equal(runs[0].sigma, runs[2].sigma)
    a = A.ib_split(net, x, y, batch_size=2, steps=3, seed=3)
    b = A.ib_split(net, x, y, batch_size=2, steps=3, seed=3)
    assert a == b and a['batch_size'] == 2 and a['batches'] == '2 x 2' and a['n'] == 4
    assert ib.batches(237, 100) == '2 x 100 + 1 x 37' and ib.batches(3, 100) == '1 x 3'


def test_fsr_model_cut_puts_fsr_in_the_tail_and_compares_masks():
    net = tiny_fsr_net().eval()
    x, y = _data(4)
    cut, why = ib.feature_cut(net, x)
    assert cut.stage == 's2' and cut.fsr is net.fsr['s2'] and 'FSR position' in why
    with torch.no_grad():
        z = cut.head(x)
        torch.testing.assert_close(z, net.s2(net.s1(net.stem(x))))  # FSR's input, before the module
        torch.testing.assert_close(cut.tail(z, x), net(x))
    section = A.ib_split(net, x, y, batch_size=4, steps=2)
    overlap = section['fsr_overlap']
    assert section['fsr_at_cut'] and overlap['units_ib_robust'] + overlap['units_ib_non_robust'] == 4 * 16
    split = ib.ib_split_batch(cut, x, y, steps=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mask = net.fsr['s2'](split.z, need_aux=True)[1].mask.mean((2, 3))
    assert overlap['mean_mask_ib_robust'] == pytest.approx(float(mask[split.robust].mean()), abs=1e-6)
    assert section['accuracy']['whole'] == 100.0 * float((net(x).argmax(1) == y).float().mean())
    assert [r[0] for r in section['table']['rows']][-1] == 'mean FSR mask on IB-non-robust units'


def test_any_timm_cnn_with_and_without_fsr():
    timm = pytest.importorskip('timm')
    from fsr_hub import add_fsr
    torch.manual_seed(0)
    x, _ = _data(2, size=64)
    model = timm.create_model('resnet10t', num_classes=10).eval()
    cut, _ = ib.feature_cut(model, x)
    assert cut.stage == 'layer4' and cut.fsr is None
    with pytest.raises(A.AnalysisError, match="stage 'layer4' gives a 1 x 1 map at this input size"):
        ib.feature_cut(model, x[:, :, :32, :32])
    plugged = add_fsr(model, 'layer3').eval()
    cut, why = ib.feature_cut(plugged, x)
    assert cut.stage == 'layer3' and cut.fsr is plugged.fsr['layer3'] and 'FSR position' in why
    with torch.no_grad():
        torch.testing.assert_close(cut.tail(cut.head(x), x), plugged(x))
    with pytest.raises(A.AnalysisError, match="unknown stage 'nope'; feature_info stages of FSRWrapper: act1"):
        ib.feature_cut(plugged, x, 'nope')
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, depth=1, num_classes=10).eval()
    with pytest.raises(A.AnalysisError, match=r"stage 'blocks.0' gives \(2, 17, 192\), not a \(B, C, H, W\)"):
        ib.feature_cut(vit, x[:, :, :32, :32])
    with pytest.raises(A.AnalysisError, match='lists no feature stages'):
        ib.feature_cut(nn.Sequential(nn.Conv2d(3, 3, 1)), x)


def test_feature_term_value_and_gradient_and_the_margin():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3)
    units = torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, 1]])[:, :, None, None]
    term = atk.feature_term(z, g, units)
    (grad,) = torch.autograd.grad(term, z)
    u = units * g
    assert term.item() == pytest.approx(float(u.norm()), rel=1e-6)
    torch.testing.assert_close(grad, u / u.norm())
    # the direct computation: ||z - (z0 - u)|| at z = z0
    z2 = z.detach().clone().requires_grad_(True)
    direct = torch.dist(z2, z2.detach() - u)
    (grad2,) = torch.autograd.grad(direct, z2)
    assert term.item() == pytest.approx(direct.item(), rel=1e-6)
    torch.testing.assert_close(grad, grad2)
    zero = atk.feature_term(z, g, torch.zeros_like(units))
    (grad0,) = torch.autograd.grad(zero, z)
    assert zero.item() == 0.0 and torch.equal(grad0, torch.zeros_like(z))
    logits = torch.tensor([[2.0, -1.0, -3.0], [0.0, 1.0, 0.5]])
    assert atk.margin(logits, torch.tensor([0, 2])).tolist() == [3.0, 0.0]  # max over the other classes only


def test_attack_outputs_stay_in_the_unit_box_also_from_0_and_1():
    net = tiny_fsr_net().eval()
    x, y = _data(4)
    x[0, 0] = 0.0
    x[1, 1] = 1.0
    w = atk.to_tanh_space(x)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(atk.from_tanh_space(w), x, atol=2e-6, rtol=0)
    w.requires_grad_(True)
    (grad,) = torch.autograd.grad((atk.from_tanh_space(w) - 0.5).square().sum(), w)
    assert torch.isfinite(grad).all() and (grad[0, 0] != 0).all()  # pixels at 0 can move
    cut, _ = ib.feature_cut(net, x)
    with ib.frozen(net):
        split = ib.ib_split_batch(cut, x, y, steps=2)
        for units in (None, ~split.robust):
            adv, ran = atk.l2_attack(cut, x, y, units, -1.0, steps=6, lr=0.5, c=10.0)
            assert adv.min() >= 0 and adv.max() <= 1 and torch.isfinite(adv).all() and 1 <= ran <= 6
    assert all(p.requires_grad for p in net.parameters())
    section = A.ib_attack(net, x, y, batch_size=4, steps=3, split_steps=2)
    assert set(section['results']) == set(A.IB_ATTACKS) and section['norm'] == 'L2'
    for r in section['results'].values():
        assert r['n'] == 4 and 0 <= r['n_success'] <= r['n_correct'] and (r['mean_l2'] is None) == (r['n_success'] == 0)
    late = A.Deadline(minutes=1e-9)
    cut_short = A.ib_attack(net, x, y, batch_size=2, steps=3, split_steps=2, deadline=late)
    assert late.stopped and cut_short['n'] == 0 and cut_short['results']['nrf']['success_rate'] is None
    late = A.Deadline(minutes=1e-9)
    assert A.ib_split(net, x, y, steps=2, deadline=late)['n'] == 0 and late.stopped


def test_bad_inputs_get_one_line_errors():
    net = tiny_fsr_net().eval()
    x, y = _data(2)
    cases = [
        (lambda: A.ib_split(net, x, y, stage='s9'), "unknown stage 's9'; feature_info stages of TinyFSRNet: s1, s2"),
        (lambda: A.ib_split(net, x, y, steps=0), 'steps must be a positive integer, got 0'),
        (lambda: A.ib_split(net, x, y, lr=-1.0), 'lr must be a positive number, got -1.0'),
        (lambda: A.ib_split(net, x, y, beta=float('nan')), 'beta (the KL weight) must be a non-negative number'),
        (lambda: A.ib_split(net, x, y, batch_size=0), 'batch_size must be a positive integer, got 0'),
        (lambda: A.ib_split(net, x, y, inversions=-1), 'inversions must be a non-negative integer'),
        (lambda: A.ib_split(net, x[:0], y[:0]), 'at least one image'),
        (lambda: A.ib_attack(net, x, y, attacks=('nrf', 'fgsm')), "unknown IB attack(s) ['fgsm']"),
        (lambda: A.ib_attack(net, x, y, c=0.0), 'c must be a positive number, got 0.0'),
        (lambda: A.ib_attack(net, x, y, steps=1.5), 'attack_steps must be a positive integer, got 1.5'),
    ]
    for call, message in cases:
        with pytest.raises(A.AnalysisError) as e:
            call()
        assert message in str(e.value) and '\n' not in str(e.value), message
    with pytest.raises(ValueError, match=r'values must lie in \[0, 1\]'):
        A.ib_attack(net, x * 2, y)


def test_ib_commands_into_the_model_card(tmp_path, cifar_root, capsys):
    """ib-split and ib-attack write JSON and PNG, attach to a release, and the card shows both as L2 / split tables."""
    from fsr_hub.release import validate_release, write_card
    from release_builders import build_release, card_body, load_tool

    analyze = load_tool('analyze')
    info = build_release(tmp_path, model_args={})
    folder, a = info.folder, tmp_path / 'a'
    common = ['--model', 'fsr_resnet18', '--weights', str(folder / 'model.safetensors'), '--data', str(cifar_root),
              '--n', '2', '--device', 'cpu', '--no-progress']
    assert analyze.main(['ib-split', *common, '--steps', '2', '--inversions', '1', '--inversion-steps', '1',
                         '--out', str(a / 'ib_split.json')]) == 0
    assert analyze.main(['ib-attack', *common, '--steps', '2', '--split-steps', '1', '--attacks', 'nrf,cw_l2',
                         '--out', str(a / 'ib_attack.json')]) == 0
    split = json.loads((a / 'ib_split.json').read_text())
    attack = json.loads((a / 'ib_attack.json').read_text())
    assert split['analysis'] == 'ib_split' and split['stage'] == 'layer4' and split['batch_size'] == 100
    assert split['complete'] and split['png'] == 'ib_split.png' and split['inversion']['steps'] == 1
    assert attack['attacks'] == ['nrf', 'cw_l2'] and attack['model']['sha256'] == info.sha256
    assert analyze.main(['attach', str(folder / 'results.json'), str(a / 'ib_split.json'),
                         str(a / 'ib_attack.json')]) == 0
    write_card(folder)
    validate_release(folder)
    body = card_body(folder)
    assert '![NRF / RF feature attacks, L2' in body and '(ib_attack.png)' in body and '(ib_split.png)' in body
    assert '|  | success rate (%) | mean L2 | median L2 | accuracy under attack (%) |' in body
    assert '- batches: 1 x 2' in body and 'not measured' not in body.split('## Analysis')[1].split('## Cost')[0]
    assert f"| IB-robust units (%) | {split['robust_fraction']:.4g} |" in body
    sample = ['--model', 'fsr_resnet18', '--random-init', '--sample', '--n', '2', '--device', 'cpu', '--no-progress',
              '--steps', '1']
    assert analyze.main(['ib-split', *sample, '--inversions', '1', '--inversion-steps', '1',
                         '--out', str(a / 'r' / 'ib_split.json')]) == 0
    assert analyze.main(['ib-attack', *sample, '--split-steps', '1', '--out', str(a / 'r' / 'ib_attack.json')]) == 0
    for name in ('ib_split', 'ib_attack'):
        doc = json.loads((a / 'r' / f'{name}.json').read_text())
        assert doc['model']['random_init'] and doc['data']['source'] == 'fsr_hub test sample' and doc['n'] == 2
        assert (a / 'r' / f'{name}.png').is_file()
    assert analyze.main(['ib-split', *common, '--stage', 'layer9', '--out', str(a / 'x.json')]) == 2
    assert analyze.main(['ib-attack', *common, '--beta', '-1', '--out', str(a / 'x.json')]) == 2
    assert analyze.main(['ib-attack', '--model', 'fsr_resnet18', '--weights', 'pyautoattack', '--sample',
                         '--out', str(a / 'x.json')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: unknown stage 'layer9'; feature_info stages of CifarResNet: layer1")
    assert err[1] == 'error: beta (the KL weight) must be a non-negative number, got -1.0.'
    assert err[2].startswith("error: --model/--weights: the 'pyautoattack' weights are a 10-class cifar_resnet18")
    assert len(err) == 3
