"""FSR on any timm CNN: fsr_hub.add_fsr and fsr_hub.models.create(name, fsr_positions=...)."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsr_hub import FSRNet, FSRWrapper, VANILLA_TWINS, add_fsr, fsr_aux_loss
from fsr_hub.cost import count_cost
from fsr_hub.models import create
from fsr_hub.objectives import AdversarialObjective, ObjectiveConfig

SMALL = dict(layers=(1, 1, 1, 1))  # timm's ResNet-18 with one block per stage, where the depth does not matter

#: timm models (ResNet-50 with one Bottleneck block per stage, to stay fast; its stages keep their 256-2048
#: channels) and where FSR goes (feature_info module names, or indices into feature_info)
TIMM_CASES = [
    ('resnet18', {}, ['layer3', 'layer4']),
    ('resnet50', dict(layers=(1, 1, 1, 1)), ['layer4']),
    ('convnext_atto', {}, ['stages.2', -1]),
    ('efficientnet_b0', {}, ['blocks.4', 'blocks.6']),
]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _fsr_params(channels: int, hidden: int, num_classes: int) -> int:
    """Separation and Recalibration nets (3 bias-free 3x3 convs, 2 BNs each) and the linear auxiliary head."""
    net = 9 * (channels * hidden + hidden * hidden + hidden * channels) + 2 * 2 * hidden
    return 2 * net + channels * num_classes + num_classes


@pytest.mark.parametrize('name,kwargs,positions', TIMM_CASES)
def test_timm_model_with_fsr_trains_one_at_fsr_step_and_is_deterministic_in_eval(name, kwargs, positions):
    torch.manual_seed(0)
    plain = timm.create_model(name, num_classes=10, **kwargs)
    model = create(name, num_classes=10, fsr_positions=positions, fsr_hidden=8, **kwargs)
    assert isinstance(model, FSRWrapper) and model.num_classes == 10
    names = [f['module'] for f in plain.feature_info]
    expected = tuple(p if isinstance(p, str) else names[p] for p in positions)
    assert model.fsr_positions == expected
    model.backbone.load_state_dict(plain.state_dict())  # strict: timm weights load into the backbone as they are
    chs = {f['module']: f['num_chs'] for f in plain.feature_info}
    assert _params(model) == _params(plain) + sum(_fsr_params(chs[p], 8, 10) for p in expected)

    # one step of PGD-AT + FSR (1-step attack) at 32x32
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    objective = AdversarialObjective(model, ObjectiveConfig(name='at', steps=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    x_adv = objective.perturb(x, y)
    loss, _ = objective(x, x_adv, y)
    optimizer.zero_grad()
    loss.backward()
    assert torch.isfinite(loss)
    for fsr in model.fsr.values():  # the auxiliary heads get gradients from the FSR losses only
        for part in (fsr.separation[0].weight, fsr.recalibration[0].weight, fsr.aux.weight):
            assert part.grad is not None and part.grad.abs().sum() > 0
    head = model.get_classifier().weight
    before = head.detach().clone()
    optimizer.step()
    assert not torch.equal(head, before)

    # train mode: stochastic masks; eval mode: deterministic, forward and forward_train agree
    masks = [model.forward_train(x).aux[expected[-1]].mask for _ in range(2)]
    assert not torch.equal(*masks)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (4, 10) and torch.equal(logits, model(x))
        out = model.forward_train(x)
        assert torch.equal(out.logits, logits)

        # 224x224, batch 1
        big = torch.rand(1, 3, 224, 224)
        out = model.forward_train(big)
        assert out.logits.shape == (1, 10)
        assert list(out.aux) == list(expected)
        for a in out.aux.values():
            assert a.logits_pos.shape == a.logits_neg.shape == a.logits_rec.shape == (1, 10)


#: fsr_hub architectures, small where the constructor allows (ResNet-18 at its real size)
TWIN_CASES = [
    ('fsr_resnet18', 'layer4', {}),
    ('fsr_vgg16', 'block3', dict(blocks=((8,), (8,), (16,), (16, 16), (16,)), mlp_hidden=16)),
    ('fsr_wrn34_10', 'final_norm', dict(depth=10, widen_factor=1)),
]


@pytest.mark.parametrize('fsr_name,paper_position,kwargs', TWIN_CASES)
def test_add_fsr_on_the_vanilla_twin_equals_the_built_in_fsr_model(fsr_name, paper_position, kwargs):
    torch.manual_seed(0)
    ref = create(fsr_name, **kwargs)
    assert ref.fsr_positions == (paper_position,)
    model = add_fsr(create(VANILLA_TWINS[fsr_name], **kwargs), paper_position)
    assert _params(model) == _params(ref)
    # same modules under the same names (the backbone's under backbone.): the built-in weights load strictly
    model.load_state_dict({k if k.startswith('fsr.') else f'backbone.{k}': v for k, v in ref.state_dict().items()})
    assert model.classifier_names() == tuple(n if n.startswith('fsr.') else f'backbone.{n}'
                                             for n in ref.classifier_names())
    x = torch.rand(4, 3, 32, 32)
    ref.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
        got, want = model.forward_train(x), ref.forward_train(x)
    trained = []
    for net in (model, ref):  # train mode: batch statistics and the same Gumbel noise from the same seed
        torch.manual_seed(1)
        trained.append(net.train().forward_train(x))
    for a, b in ((got, want), trained):
        assert torch.equal(a.logits, b.logits) and list(a.aux) == list(b.aux) == [paper_position]
        for field in ('mask', 'logits_pos', 'logits_neg', 'logits_rec'):
            assert torch.equal(getattr(a.aux[paper_position], field), getattr(b.aux[paper_position], field))


def test_create_keeps_fsr_arguments_for_fsr_hub_architectures_and_rebuilds_from_fsr_args():
    own = create('cifar_wrn34_10', depth=10, widen_factor=1, fsr_positions=('block3',), fsr_hidden=8)
    assert isinstance(own, FSRNet) and own.fsr_positions == ('block3',)
    plain = create('resnet18', **SMALL, fsr_tau=0.2, fsr_hidden=8)  # no positions: the timm model itself
    assert type(plain).__name__ == 'ResNet'
    model = create('resnet18', **SMALL, num_classes=7, fsr_positions=['layer4'], fsr_tau=0.2, fsr_hidden=8,
                   fsr_recalibration=False)
    assert model.fsr['layer4'].tau == 0.2 and model.fsr['layer4'].recalibration is None
    assert model.fsr_args == dict(fsr_positions=['layer4'], fsr_tau=0.2, fsr_hidden=8, fsr_separation=True,
                                  fsr_recalibration=False)
    rebuilt = create('resnet18', **SMALL, num_classes=7, **model.fsr_args)  # as a release's config.json model_args
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))
    assert model.pretrained_cfg['architecture'] == 'resnet18' and 'hf_hub_id' not in model.pretrained_cfg
    assert model.pretrained_cfg['classifier'] == ('backbone.fc', 'fsr.layer4.aux')


def test_reset_classifier_resets_backbone_and_auxiliary_heads():
    model = create('convnext_atto', num_classes=10, fsr_positions=['stages.1', 'stages.3'], fsr_hidden=8)
    assert model.classifier_names() == ('backbone.head.fc', 'fsr.stages_1.aux', 'fsr.stages_3.aux')
    model.reset_classifier(5)
    assert model.num_classes == 5
    assert [model.get_submodule(n).out_features for n in model.classifier_names()] == [5, 5, 5]
    out = model.train().forward_train(torch.rand(2, 3, 32, 32))
    assert out.logits.shape == (2, 5)
    assert all(a.logits_pos.shape == a.logits_rec.shape == (2, 5) for a in out.aux.values())


def test_deepcopy_forward_intermediates_and_cost_count():
    torch.manual_seed(0)
    model = create('resnet18', **SMALL, num_classes=10, fsr_positions=['layer4'], fsr_hidden=8).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        # a copy (e.g. an EMA model) runs its own FSR modules, not the original's
        twin = copy.deepcopy(model)
        assert torch.equal(twin(x), logits)
        twin.fsr['layer4'].recalibration[0].weight.mul_(-1.0)
        assert not torch.equal(twin(x), logits) and torch.equal(model(x), logits)
        # timm's forward_intermediates runs through FSR: its final feature gives the logits
        final, feats = model.forward_intermediates(x, indices=[3, 4])
        assert len(feats) == 2 and torch.equal(feats[-1], final)
        assert torch.equal(model.forward_head(final), logits)
    # fvcore traces the hooks: FSR is counted (the backbone alone now runs FSR too: count a plain model)
    plain, fsr = count_cost(timm.create_model('resnet18', num_classes=10, **SMALL)), count_cost(model)
    assert fsr['params'] - plain['params'] == _fsr_params(512, 8, 10)
    assert fsr['gflops_fvcore'] > plain['gflops_fvcore']


class _ChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class _ToyNet(nn.Module):
    """A stem and one stage with timm's feature_info; the stage NHWC, or run twice, if asked."""

    def __init__(self, nhwc: bool = False, twice: bool = False):
        super().__init__()
        self.num_classes, self.nhwc, self.twice = 4, nhwc, twice
        self.feature_info = [dict(module='stem', num_chs=8, reduction=1), dict(module='stage', num_chs=8, reduction=1)]
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), *([_ChannelsLast()] if nhwc else []))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stage(self.stem(x))
        if self.twice:
            x = self.stage(x)
        return self.fc(x.mean((1, 2) if self.nhwc else (2, 3)))


def test_toy_model_with_feature_info_takes_fsr():
    out = add_fsr(_ToyNet(), 'stage', hidden=4).forward_train(torch.rand(2, 3, 8, 8))
    assert out.logits.shape == out.aux['stage'].logits_pos.shape == (2, 4)


@pytest.mark.parametrize('build,match', [
    (lambda: add_fsr(nn.Sequential(nn.Conv2d(3, 8, 3)), 0),
     'needs a timm classifier that lists its feature stages in feature_info; Sequential has no feature_info'),
    (lambda: create('resnet18', **SMALL, fsr_positions=['layer5']),
     "'layer5' is not a feature module of ResNet; feature_info modules: act1, layer1, layer2, layer3, layer4"),
    (lambda: create('resnet18', **SMALL, fsr_positions=[5]),
     'index 5 out of range for the 5 feature modules of ResNet'),
    (lambda: create('resnet18', **SMALL, fsr_positions=['layer4', -1]), "'layer4' given twice"),
    (lambda: add_fsr(_ToyNet(), []), 'needs at least one position'),
    (lambda: add_fsr(create('fsr_wrn34_10', depth=10, widen_factor=1), 'block3'), 'already has FSR modules'),
    (lambda: add_fsr(add_fsr(_ToyNet(), 'stem'), 'stage'), 'already has FSR modules'),
    (lambda: create('resnet18', **SMALL, features_only=True, fsr_positions=['layer4']),
     'needs a classifier with num_classes'),
    (lambda: create('swin_tiny_patch4_window7_224', embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                    fsr_positions=[0]), 'FSR needs NCHW feature maps; the stages of SwinTransformer give NHWC'),
    (lambda: create('not_a_model', fsr_positions=['layer4']), 'Unknown model'),
])
def test_models_that_cannot_take_fsr_raise_one_line_errors(build, match):
    with pytest.raises(ValueError, match=match) as info:
        build()
    assert '\n' not in str(info.value)


@pytest.mark.parametrize('build,x,error,match', [
    (lambda: add_fsr(_ToyNet(nhwc=True), 'stage'), torch.rand(1, 3, 5, 6), ValueError,
     r"needs an NCHW feature map \(B, 8, H, W\); _ToyNet.stage gives shape \(1, 5, 6, 8\) \(channels last"),
    (lambda: create('vit_tiny_patch16_224', depth=1, embed_dim=8, num_heads=1, fsr_positions=[0]),
     torch.rand(1, 3, 224, 224), ValueError, r'gives shape \(1, 197, 8\) \(tokens \(B, N, C\)'),
    (lambda: add_fsr(_ToyNet(twice=True), 'stage'), torch.rand(1, 3, 8, 8), RuntimeError, 'stage ran twice'),
])
def test_feature_maps_fsr_cannot_follow_are_refused_at_the_first_forward(build, x, error, match):
    model = build()
    with pytest.raises(error, match=match):
        model(x)


def test_grad_checkpointing_that_recomputes_an_fsr_position_gives_the_same_gradients():
    # FSRNet checkpoints whole stages: the hooks (and FSR) run again in backward, outside forward_train
    torch.manual_seed(0)
    model = add_fsr(create('cifar_wrn34_10', depth=10, widen_factor=1), ['block2', 'block3'], hidden=4)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)
        out = model.forward_train(x)
        (F.cross_entropy(out.logits, y) + fsr_aux_loss(out.aux, out.logits, y)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_grad_checkpointing_that_skips_an_fsr_position_is_refused():
    model = create('resnet18', **SMALL, num_classes=10, fsr_positions=['layer4'], fsr_hidden=8)
    model.set_grad_checkpointing(True)  # timm's ResNet then calls layer4's blocks, not layer4
    with pytest.raises(RuntimeError, match=r"\['layer4'\] did not run .* grad checkpointing"):
        model(torch.rand(2, 3, 32, 32))
