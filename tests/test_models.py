"""Every registered fsr_hub architecture: shapes, exact parameter counts, determinism, gradients, heads, cfgs."""
import pytest
import timm
import torch
from timm.data import resolve_data_config

import fsr_hub
from fsr_hub.models import ALL_MODELS, VANILLA_TWINS
from fsr_hub.catalog import RELEASED, default_release, hub_id

# stage attribute names that feature_info lists, per architecture family
FEATURES = {'resnet18': ['layer1', 'layer2', 'layer3', 'layer4'],
            'vgg16': ['block0', 'block1', 'block2', 'block3', 'block4'],
            'wrn34_10': ['block1', 'block2', 'block3', 'final_norm']}
# smaller members of the same family, for the tests that build extra models (WRN-34-10 is the slow one)
SMALL = {'resnet18': dict(layers=(1, 1, 1, 1)),
         'vgg16': dict(blocks=((16,), (32,), (64,), (64,), (64,)), mlp_hidden=64),
         'wrn34_10': dict(depth=10, widen_factor=2)}

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
    """Shared by the module's tests, so in eval mode and read only: no test changes its mode, weights or grads."""
    torch.manual_seed(0)
    return request.param, timm.create_model(request.param).eval().requires_grad_(False)


def test_registry_holds_every_architecture():
    assert sorted(MODELS) == sorted(PARAMS) == sorted(ALL_MODELS)
    assert sorted(FSR_ONLY) == sorted(VANILLA_TWINS)


def test_param_count_exact(model):
    name, m = model
    assert sum(p.numel() for p in m.parameters()) == PARAMS[name]


def test_shapes_and_interface(model):
    name, m = model
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
    x = _x()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
        out = m.forward_train(x)
    assert torch.equal(out.logits, m(x).detach())
    assert set(out.aux) == set(m.fsr_positions)
    assert bool(out.aux) == name.startswith('fsr_')


def test_gradients_reach_the_input(model):
    name, m = model
    x = _x().requires_grad_(True)
    grad, = torch.autograd.grad(m(x).logsumexp(1).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


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


@pytest.mark.parametrize('name', MODELS)
def test_reset_classifier_resets_main_and_aux_heads(name):
    m = timm.create_model(name, **SMALL[_family(name)])  # its own model: the module-scoped one stays as built
    m.reset_classifier(5)
    assert m.num_classes == 5
    assert m.eval()(_x()).shape == (2, 5)
    for f in m.fsr.values():
        assert f.aux.out_features == 5
    m.reset_classifier(0)
    assert m(_x()).shape == (2, m.head_hidden_size)


def test_pool_size_is_the_final_feature_map(model):
    name, m = model
    with torch.no_grad():
        assert tuple(m.pretrained_cfg['pool_size']) == tuple(m.forward_features(_x(1)).shape[-2:])


def test_input_check_follows_the_parameters_dtype():
    m = timm.create_model('cifar_resnet18', **SMALL['resnet18']).eval()
    x = _x()
    with torch.no_grad():
        m.double()
        assert m(x.double()).dtype == torch.float64
        with pytest.raises(ValueError, match=r'convert with x.to\(torch.float64\)'):
            m(x)
        torch.nn.Sequential(m).float()  # a conversion of a model holding it
        assert m(x).dtype == torch.float32
        state = {k: v.double() if v.is_floating_point() else v for k, v in m.state_dict().items()}
        m.load_state_dict(state, assign=True)  # new parameter objects
        assert m(x.double()).dtype == torch.float64


@pytest.mark.filterwarnings('ignore:The nodes obtained by tracing the model in train mode')  # FSR's Gumbel noise
def test_fx_symbolic_trace_keeps_the_forward_and_the_input_check():
    m = timm.create_model('fsr_resnet18', **SMALL['resnet18']).eval()
    x = _x()
    traced = torch.fx.symbolic_trace(m)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), m(x), rtol=0, atol=0)
        with pytest.raises(ValueError, match='got float64'):
            traced(x.double())
        # timm's FX feature extraction: the FSR output f~ after layer4, as forward_intermediates gives it
        features = timm.models.create_feature_extractor(m, return_nodes={'fsr.layer4.tap': 'f'})(x)['f']
        torch.testing.assert_close(features, m.forward_intermediates(x, intermediates_only=True)[-1], rtol=0, atol=0)


@pytest.mark.parametrize('name', ['fsr_resnet18', 'cifar_vgg16'])
def test_num_classes_override(name):
    m = timm.create_model(name, num_classes=100)
    assert m.fc.out_features == 100 and m.num_classes == 100
    assert all(f.aux.out_features == 100 for f in m.fsr.values())
    assert m.eval()(_x()).shape == (2, 100)


def test_pretrained_cfg_declares_cifar_preprocessing(model):
    name, m = model
    cfg = m.pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32) and cfg['fixed_input_size'] and cfg['crop_pct'] == 1.0
    assert cfg['num_classes'] == 10 and cfg['architecture'] == name
    # timm's default: the main job's release where it is this architecture's, else the first release, if any
    released = [n for n in RELEASED if n.startswith(name + '.')]
    default = default_release() if default_release() in released else (released[0] if released else None)
    assert cfg.get('sha256') == (RELEASED[default] if default else None)
    assert cfg.get('hf_hub_id') == (hub_id(default) if default else None)
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
    (dict(img_size=36), r'img_size \(36, 36\) must be positive multiples of 8'),
    (dict(drop_rate=1.0), r'drop_rate must be in \[0, 1\)'),
])
def test_bad_model_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('fsr_resnet18', **kwargs)


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


# ----------------------------------------------------------------------------------------------------------------
# timm's model interface, over the whole registry (the ideas of timm's own model tests)


def _family(name):
    return name.split('_', 1)[1]


def test_feature_info_lists_stage_modules(model):
    name, m = model
    assert [f['module'] for f in m.feature_info] == FEATURES[_family(name)]
    for f in m.feature_info:
        assert m.get_submodule(f['module']) is getattr(m, f['module'])


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates(name):
    torch.manual_seed(0)
    m = timm.create_model(name, **SMALL[_family(name)]).eval()
    x = _x(1)
    captured = {}

    def keep(pos):
        def hook(module, inputs, output):
            captured[pos] = output[0]
        return hook
    hooks = [f.register_forward_hook(keep(pos)) for pos, f in m.fsr.items()]
    with torch.no_grad():
        final, feats = m.forward_intermediates(x)
        for h in hooks:
            h.remove()
        assert torch.equal(final, m.forward_features(x))
        last2 = m.forward_intermediates(x, indices=2, intermediates_only=True)
        first = m.forward_intermediates(x, indices=[-len(feats)], intermediates_only=True)
        early_x, early = m.forward_intermediates(x, indices=[1], stop_early=True)
    assert [t.shape[1] for t in feats] == [f['num_chs'] for f in m.feature_info]
    assert [32 // t.shape[-1] for t in feats] == [f['reduction'] for f in m.feature_info]
    assert len(last2) == 2 and all(torch.equal(a, b) for a, b in zip(last2, feats[-2:]))
    assert len(first) == 1 and torch.equal(first[0], feats[0])
    assert torch.equal(early_x, feats[1]) and len(early) == 1 and torch.equal(early[0], feats[1])
    # the feature of a stage that FSR follows is the FSR output f~
    names = [f['module'] for f in m.feature_info]
    assert set(captured) == set(m.fsr_positions)
    for pos, out in captured.items():
        assert torch.equal(feats[names.index(pos)], out)
    with pytest.raises(ValueError, match='out of range'):
        m.forward_intermediates(x, indices=[len(names)])
    with pytest.raises(ValueError, match='NCHW'):
        m.forward_intermediates(x, output_fmt='NHWC')


@pytest.mark.parametrize('name', MODELS)
def test_features_only_through_timm(name):
    kwargs = SMALL[_family(name)]
    torch.manual_seed(0)
    full = timm.create_model(name, **kwargs).eval()
    torch.manual_seed(0)
    feat = timm.create_model(name, features_only=True, **kwargs).eval()
    torch.manual_seed(0)
    first2 = timm.create_model(name, features_only=True, out_indices=(0, 1), **kwargs).eval()
    x = _x(1)
    with torch.no_grad():
        expected = full.forward_intermediates(x, intermediates_only=True)
        got, got2 = feat(x), first2(x)
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    assert feat.feature_info.channels() == [f['num_chs'] for f in full.feature_info]
    assert feat.feature_info.module_name() == FEATURES[_family(name)]
    assert len(got2) == 2 and all(torch.equal(a, b) for a, b in zip(got2, expected[:2]))
    # stages after the last one asked for are pruned, with their FSR modules
    pruned = first2.model
    assert all(isinstance(getattr(pruned, s), torch.nn.Identity) for s in full.stage_names[full.stage_names.index(
        FEATURES[_family(name)][1]) + 1:])
    assert pruned.fsr_positions == tuple(p for p in full.fsr_positions if p in FEATURES[_family(name)][:2]) == ()


def test_group_matcher_covers_parameters_in_forward_order(model):
    name, m = model
    params = [n for n, _ in m.named_parameters()]
    for coarse in (True, False):
        groups = timm.models.group_parameters(m, m.group_matcher(coarse=coarse))
        ordered = [n for i in sorted(groups) for n in groups[i]]
        assert sorted(ordered) == sorted(params)
        first, last = groups[min(groups)], groups[max(groups)]
        assert all(n.startswith(('stem.', m.stage_names[0] + '.')) for n in first)
        assert 'fc.weight' in last and all(n.startswith(('fc.', 'pre_logits.')) for n in last)
        group_of = {n: i for i, ns in groups.items() for n in ns}
        order = [s for s in m.stage_names if any(n.startswith(s + '.') for n in params)]
        spans = [[group_of[n] for n in params if n.startswith(s + '.')] for s in order]
        assert all(max(a) <= min(b) for a, b in zip(spans, spans[1:]))  # stages in forward order
        for pos in m.fsr_positions:  # each FSR module is grouped with (the last block of) its stage
            fsr = {group_of[n] for n in params if n.startswith(f'fsr.{pos}.')}
            assert fsr == {max(group_of[n] for n in params if n.startswith(pos + '.'))}
    coarse_groups = timm.models.group_parameters(m, m.group_matcher(coarse=True))
    assert len(coarse_groups) == int(any(n.startswith('stem.') for n in params)) + len(order) + 1


@pytest.mark.parametrize('name', ['fsr_resnet18', 'fsr_vgg16', 'fsr_wrn34_10'])
def test_grad_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    m = timm.create_model(name, **SMALL[_family(name)]).eval()
    x = _x(1)
    grads = []
    for enable in (False, True):
        m.set_grad_checkpointing(enable)
        assert m.grad_checkpointing is enable
        xi = x.clone().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        m(xi).logsumexp(1).sum().backward()
        grads.append((xi.grad, [p.grad for p in m.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):  # None: the auxiliary heads, unused by forward
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_drop_rate_drops_pre_logits_in_train_mode_only():
    torch.manual_seed(0)
    m = timm.create_model('fsr_resnet18', drop_rate=0.5, **SMALL['resnet18'])
    feats = torch.rand(4, m.num_features, 4, 4)
    m.eval()
    ref = m.forward_head(feats, pre_logits=True)
    assert torch.equal(ref, m.forward_head(feats, pre_logits=True))
    m.train()
    out = m.forward_head(feats, pre_logits=True)
    ratio = out / ref  # inverted dropout: each feature is dropped (0) or scaled by 1 / (1 - 0.5)
    assert set(ratio.unique().tolist()) == {0.0, 2.0}
    m0 = timm.create_model('fsr_resnet18', **SMALL['resnet18'])
    assert torch.equal(m0.train().forward_head(feats, pre_logits=True), m0.eval().forward_head(feats, pre_logits=True))


def test_input_size_and_channels_follow_the_build():
    m = timm.create_model('cifar_resnet18', in_chans=1, img_size=64, **SMALL['resnet18']).eval()
    assert m(torch.rand(2, 1, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match=r'shape \(B, 1, 64, 64\)'):
        m(torch.rand(2, 1, 32, 32))
