"""Every registered fsr_hub architecture: shapes, exact parameter counts, determinism, gradients, heads, cfgs."""
import pytest
import timm
import torch
from timm.data import resolve_data_config

import fsr_hub
from fsr_hub.models import ALL_MODELS, HF_ORG, VANILLA_TWINS

MODELS = timm.list_models(['fsr_*', 'cifar_*'])  # what timm sees; ALL_MODELS is what the package declares
FSR_ONLY = [m for m in MODELS if m.startswith('fsr_')]

PARAMS = {
    'cifar_resnet18': 11_173_962, 'fsr_resnet18': 12_432_980,
    'cifar_vgg16': 15_253_578, 'fsr_vgg16': 16_512_596,
    'cifar_wrn34_10': 46_160_474, 'fsr_wrn34_10': 47_715_684,
}


def _x(n=2, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module', params=MODELS)
def model(request):
    torch.manual_seed(0)
    return request.param, timm.create_model(request.param)


def test_registry_holds_every_architecture():
    assert sorted(MODELS) == sorted(PARAMS) == sorted(ALL_MODELS)
    assert sorted(FSR_ONLY) == sorted(VANILLA_TWINS)


def test_param_count_exact(model):
    name, m = model
    assert sum(p.numel() for p in m.parameters()) == PARAMS[name]


def test_shapes_and_interface(model):
    name, m = model
    m.eval()
    x = _x()
    feats = m.forward_features(x)
    assert feats.shape[:2] == (2, m.num_features)
    assert m.forward_head(feats, pre_logits=True).shape == (2, m.head_hidden_size)
    logits = m(x)
    assert logits.shape == (2, m.num_classes) == (2, 10)
    assert torch.isfinite(logits).all()
    assert m.get_classifier() is m.fc


def test_eval_forward_is_deterministic(model):
    name, m = model
    m.eval()
    x = _x()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
        out = m.forward_train(x)
    assert torch.equal(out.logits, m(x).detach())
    assert set(out.aux) == set(m.fsr_positions)
    assert bool(out.aux) == name.startswith('fsr_')


def test_gradients_reach_the_input(model):
    name, m = model
    m.eval()
    x = _x().requires_grad_(True)
    m(x).logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    m.zero_grad(set_to_none=True)


@pytest.mark.parametrize('name', FSR_ONLY)
def test_train_mode_mask_is_stochastic_and_eval_mask_is_sigmoid(name):
    torch.manual_seed(0)
    m = timm.create_model(name)
    pos = m.fsr_positions[0]
    fsr = m.fsr[pos]
    x = _x(2)
    with torch.no_grad():
        m.train()
        a, b = m.forward_train(x).aux[pos].mask, m.forward_train(x).aux[pos].mask
        assert not torch.equal(a, b)
        m.eval()
        feats = {}
        hook = getattr(m, pos).register_forward_hook(lambda mod, inp, out: feats.setdefault('f', out))
        mask = m.forward_train(x).aux[pos].mask
        hook.remove()
        expected = torch.sigmoid(fsr.separation(feats['f']) / fsr.tau)
        torch.testing.assert_close(mask, expected)


@pytest.mark.parametrize('name', ['fsr_resnet18'])
def test_fsr_losses_train_separation_and_recalibration_nets(name):
    m = timm.create_model(name).train()
    y = torch.tensor([1, 2])
    out = m.forward_train(_x())
    fsr_hub.fsr_aux_loss(out.aux, out.logits, y).backward()
    fsr = m.fsr[m.fsr_positions[0]]
    for net in (fsr.separation, fsr.recalibration, fsr.aux):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_reset_classifier_resets_main_and_aux_heads(model):
    name, m = model
    m.reset_classifier(5)
    assert m.num_classes == 5
    assert m.eval()(_x()).shape == (2, 5)
    for f in m.fsr.values():
        assert f.aux.out_features == 5
    m.reset_classifier(0)
    assert m(_x()).shape == (2, m.head_hidden_size)
    m.reset_classifier(10)


@pytest.mark.parametrize('name', ['fsr_resnet18', 'cifar_vgg16'])
def test_num_classes_override(name):
    m = timm.create_model(name, num_classes=100)
    assert m.fc.out_features == 100 and m.num_classes == 100
    assert all(f.aux.out_features == 100 for f in m.fsr.values())
    assert m.eval()(_x()).shape == (2, 100)


def test_pretrained_cfg_declares_cifar_preprocessing(model):
    name, m = model
    cfg = m.pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32) and cfg['crop_pct'] == 1.0 and cfg['num_classes'] == 10
    assert cfg['hf_hub_id'] == f'{HF_ORG}/{name}.{cfg["tag"]}'
    data_cfg = resolve_data_config({}, model=m)
    assert data_cfg['mean'] == (0.0, 0.0, 0.0) and data_cfg['std'] == (1.0, 1.0, 1.0)
    classifiers = (cfg['classifier'],) if isinstance(cfg['classifier'], str) else tuple(cfg['classifier'])
    assert classifiers == m.classifier_names()
    for c in classifiers:
        m.get_submodule(c)  # raises if the cfg names a module that does not exist


def test_several_fsr_positions_and_indices():
    m = timm.create_model('fsr_resnet18', fsr_positions=('layer3', -1)).eval()
    assert m.fsr_positions == ('layer3', 'layer4')
    out = m.forward_train(_x())
    assert set(out.aux) == {'layer3', 'layer4'}
    assert out.aux['layer3'].mask.shape == (2, 256, 8, 8)
    assert m.classifier_names() == ('fc', 'fsr.layer3.aux', 'fsr.layer4.aux')
    assert sum(p.numel() for p in m.parameters()) > PARAMS['fsr_resnet18']


@pytest.mark.parametrize('kwargs, match', [
    (dict(fsr_positions=('layer9',)), 'Unknown FSR position'),
    (dict(fsr_positions=(7,)), 'out of range'),
    (dict(fsr_positions=('layer4', 4 - 1)), 'given twice'),
    (dict(fsr_separation=False, fsr_recalibration=False), 'at least one'),
    (dict(fsr_tau=0.0), 'tau must be > 0'),
])
def test_bad_model_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('fsr_resnet18', **kwargs)


def test_bad_input_shape_raises_clear_error():
    m = timm.create_model('cifar_resnet18').eval()
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        m(torch.rand(3, 32, 32))


@pytest.mark.parametrize('kwargs, pos_none, rec_none', [
    (dict(fsr_separation=False), True, False),
    (dict(fsr_recalibration=False), False, True),
])
def test_ablations_drop_a_stage(kwargs, pos_none, rec_none):
    m = timm.create_model('fsr_resnet18', **kwargs).eval()
    fsr = m.fsr['layer4']
    assert (fsr.separation is None) == pos_none and (fsr.recalibration is None) == rec_none
    a = m.forward_train(_x()).aux['layer4']
    assert (a.logits_pos is None) == pos_none and (a.logits_rec is None) == rec_none
    if pos_none:
        assert torch.count_nonzero(a.mask) == 0


def test_vgg_uses_the_reference_initialisation():
    torch.manual_seed(0)
    m = timm.create_model('fsr_vgg16')
    assert m.fc.weight.std().item() == pytest.approx(0.01, rel=0.1) and torch.count_nonzero(m.fc.bias) == 0
    assert m.fsr['block3'].aux.weight.std().item() == pytest.approx(0.01, rel=0.1)
    conv = m.block4[0]  # kaiming fan-out: std = sqrt(2 / (out_channels * 9))
    assert conv.weight.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.05)
