"""MAD pruning (fsr_hub.pruning, tools/prune.py) on tiny models and synthetic data: mask constants, exact
identity of the initial masks, K-FAC factors against a brute-force unfold, the vectorised saliency against a
per-entry loop, exact pruned counts, zeros kept through SGD, an end-to-end run whose checkpoint loads strictly,
and one-line errors."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsr_hub.cost import count_cost, module_flops
from fsr_hub.models import create
from fsr_hub.objectives import mart_loss
from fsr_hub.pruning import (
    M_MIN, M_ONE, KeepPruned, KFACFactors, PruneConfig, adversarial_loss, apply_pruning, attached_masks,
    batch_saliency, prunable_layers, run_prune, saliency_matrix, select, sparse_flops,
)
from fsr_hub.pruning import kfac as kfac_module
from fsr_hub.pruning.layers import layer_matrix
from fsr_hub.pruning.prune import check_saliency
from fsr_hub.weights import load_weights, read_weights, save_weights, sha256_file
from conftest import write_cifar_batches
from tools import prune as prune_tool

#: a tiny fsr_vgg16: biased convs, two hidden linears (global pool), an FSR module with its auxiliary head
TINY_VGG = {'blocks': [[4], [4], [8], [8], [8]], 'mlp_hidden': 8, 'fsr_hidden': 4}


def tiny_vgg(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create('fsr_vgg16', num_classes=10, **TINY_VGG)
    with torch.no_grad():  # no zero biases or tiny weights: every exact zero comes from pruning
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def random_saliency(layers, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(layer.shape, generator=g) for n, layer in layers.items()}


def test_mask_constants():
    assert M_ONE == pytest.approx(0.541325, abs=1e-6)
    assert M_MIN == pytest.approx(-9.21029, abs=1e-5)
    assert F.softplus(torch.tensor(M_ONE)).item() == 1.0  # exactly, in float32
    assert F.softplus(torch.tensor(M_MIN, dtype=torch.float64)).item() == pytest.approx(1e-4, rel=1e-9)


def test_layers_and_heads():
    layers = prunable_layers(tiny_vgg())
    heads = {n for n, layer in layers.items() if layer.per_row}
    assert heads == {'fc', 'fsr.block3.aux'}
    assert {'pre_logits.0', 'pre_logits.2', 'fsr.block3.separation.0', 'block0.0'} <= set(layers) - heads
    assert layers['block0.0'].shape == (4, 3 * 9 + 1)
    with pytest.raises(ValueError, match='grouped'):
        prunable_layers(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))


def test_initial_masks_reproduce_the_unmasked_model_exactly():
    model = tiny_vgg()
    x = torch.rand(4, 3, 32, 32)
    keys = list(model.state_dict())
    params = list(model.parameters())
    dense = model(x)
    out = model.forward_train(x)
    layers = prunable_layers(model)
    with attached_masks(model, layers) as masks:
        assert torch.equal(model(x), dense)
        masked = model.forward_train(x)
        assert torch.equal(masked.aux['block3'].logits_rec, out.aux['block3'].logits_rec)
        assert all(not p.requires_grad for p in params)
        assert len(masks) == len(layers)
    assert list(model.state_dict()) == keys
    assert all(a is b and b.requires_grad for a, b in zip(params, model.parameters()))
    assert type(model.block0[0]) is nn.Conv2d and type(model.fc) is nn.Linear


class Shared(nn.Module):
    """A biased strided conv (then an in-place ReLU) and one linear head called on two inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        h = F.relu(self.conv(x), inplace=True).flatten(1)
        return self.head(h) + self.head(h.flip(1))


def test_kfac_factors_equal_a_brute_force_unfold(monkeypatch):
    monkeypatch.setattr(kfac_module, 'CHUNK', 4)  # a batch of 6 is accumulated in chunks of 4 and 2
    torch.manual_seed(0)
    model = Shared()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    layers = prunable_layers(model)
    with KFACFactors(layers) as kfac:
        F.cross_entropy(model(x), y).backward()
    # brute force: the conv output and both head inputs kept, their gradients by autograd
    conv_out = model.conv(x)
    h = F.relu(conv_out).flatten(1)
    h1, h2 = h, h.flip(1)
    o1, o2 = model.head(h1), model.head(h2)
    g_conv, g1, g2 = torch.autograd.grad(F.cross_entropy(o1 + o2, y), [conv_out, o1, o2])
    b = x.shape[0]
    patches = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2)  # (B, L, 27)
    patches = torch.cat([patches, torch.ones(b, patches.shape[1], 1)], 2).reshape(-1, 28)
    loc = conv_out.shape[2] * conv_out.shape[3]
    a_conv = sum(torch.outer(r, r) for r in patches) / (b * loc ** 2)
    gr = g_conv.permute(0, 2, 3, 1).reshape(-1, 4)
    g_conv_f = b * loc * sum(torch.outer(r, r) for r in gr)
    rows = torch.cat([torch.cat([h1, torch.ones(b, 1)], 1), torch.cat([h2, torch.ones(b, 1)], 1)])
    a_head = sum(torch.outer(r, r) for r in rows) / (b * 2 ** 2)
    g_head = b * 2 * sum(torch.outer(r, r) for r in torch.cat([g1, g2]))
    for name, (a, g) in {'conv': (a_conv, g_conv_f), 'head': (a_head, g_head)}.items():
        got_a, got_g = kfac.factors(name)
        torch.testing.assert_close(got_a, a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_g, g, rtol=1e-5, atol=1e-7)


def test_vectorised_saliency_equals_a_per_entry_loop():
    g = torch.Generator().manual_seed(0)
    dw = torch.randn(5, 7, generator=g, dtype=torch.float64)
    m = torch.randn(7, 7, generator=g, dtype=torch.float64)
    a = m @ m.t()
    g_diag = torch.rand(5, generator=g, dtype=torch.float64)
    loop = torch.empty(5, 7, dtype=torch.float64)
    for i in range(5):
        for j in range(7):
            loop[i, j] = 0.5 * g_diag[i] * dw[i, j] * sum(dw[i, k] * a[k, j] for k in range(7))
    torch.testing.assert_close(saliency_matrix(dw, a, g_diag), loop)


@pytest.mark.parametrize('p', [0.9, 0.99])
def test_pruned_counts_are_exact(p):
    layers = prunable_layers(tiny_vgg())
    sal = random_saliency(layers)
    chosen = select(sal, layers, p)
    pooled = [n for n, layer in layers.items() if not layer.per_row]
    n_pool = sum(sal[n].numel() for n in pooled)
    assert sum(int(chosen[n].sum()) for n in pooled) == int(p * n_pool)
    pruned = torch.cat([sal[n][chosen[n]] for n in pooled])
    kept = torch.cat([sal[n][~chosen[n]] for n in pooled])
    assert pruned.max() <= kept.min()  # the lowest saliencies go
    for n in ('fc', 'fsr.block3.aux'):
        d = sal[n].shape[1]  # weights + bias column
        assert chosen[n].sum(1).tolist() == [int(p * d)] * sal[n].shape[0]


def test_pruned_parameters_stay_zero_through_sgd_with_momentum_and_weight_decay():
    model = tiny_vgg().train()
    layers = prunable_layers(model)
    chosen = select(random_saliency(layers), layers, 0.9)
    apply_pruning(layers, chosen)
    before = {n: layer_matrix(layer.module.weight, layer.module.bias).detach().clone() for n, layer in layers.items()}
    keep = KeepPruned(layers, chosen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        opt.zero_grad()
        x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
        adversarial_loss(model, x, y)[0].backward()
        opt.step()
    keep.check()
    keep.remove()
    for n, layer in layers.items():
        now = layer_matrix(layer.module.weight, layer.module.bias).detach()
        assert (now[chosen[n]] == 0).all(), n
        assert not torch.equal(now[~chosen[n]], before[n][~chosen[n]]), n  # the rest did train


def test_batch_saliency_reaches_every_layer_fsr_heads_included():
    model = tiny_vgg()
    layers = prunable_layers(model)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with attached_masks(model, layers) as masks:
        sal, correct = batch_saliency(model, layers, masks, x, y, steps=3)
    assert set(sal) == set(layers) and 0 <= correct <= 8
    for n, layer in layers.items():
        assert sal[n].shape == layer.shape and torch.isfinite(sal[n]).all(), n
        assert sal[n].abs().sum() > 0, n  # the masks moved, the loss reached the layer


def test_adversarial_loss_on_fixed_logits_is_hand_computed():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y = torch.tensor([0, 2])

    class Fixed(nn.Module):
        def forward(self, x):
            return logits

    ce = [-(2.0 - math.log(math.exp(2) + 1 + math.exp(-1))), -(0.0 - math.log(math.exp(0.5) + math.exp(1.5) + 1))]
    loss, _ = adversarial_loss(Fixed(), torch.zeros(2, 3), y)
    assert loss.item() == pytest.approx(sum(ce) / 2, rel=1e-6)
    # MART with MAD's beta 0.5 on fixed clean = adversarial logits (KL term 0): CE - log(1 - max wrong p)
    p = F.softmax(logits, 1)
    bce = [ce[0] - math.log(1.0001 - p[0, 1].item() + 1e-12), ce[1] - math.log(1.0001 - p[1, 1].item() + 1e-12)]
    assert mart_loss(logits, logits, y, beta=0.5).item() == pytest.approx(sum(bce) / 2, rel=1e-5)


def test_sparse_flops_count_each_layer_at_its_weight_density():
    model = tiny_vgg()
    layers = prunable_layers(model)
    dense = module_flops(model)
    assert dense[''] == round(count_cost(model)['gflops_fvcore'] * 1e9)
    assert dense['fsr.block3.aux'] == 0  # not on the inference path
    with torch.no_grad():
        model.block0[0].weight[:2] = 0  # half of the first conv's output channels
    flops = sparse_flops(model, layers, (3, 32, 32))
    assert flops['gflops_fvcore_dense'] == round(dense[''] / 1e9, 6)
    assert flops['gflops_fvcore_sparse'] == round((dense[''] - dense['block0.0'] / 2) / 1e9, 6)


def tiny_prune_config(root: Path, n_train: int, n_test: int, **overrides) -> PruneConfig:
    """A reduced run on :func:`tiny_vgg` (written to ``root/dense.safetensors``) and synthetic CIFAR-10 batches
    under ``root/data``, output in ``root/out``; ``overrides`` replace the config's fields."""
    data = write_cifar_batches(root / 'data', n_train=n_train, n_test=n_test)
    save_weights(tiny_vgg(), root / 'dense.safetensors')
    fields = dict(model='fsr_vgg16', weights=str(root / 'dense.safetensors'), data=str(data), out=str(root / 'out'),
                  model_args=TINY_VGG, sparsity=0.9, batch_size=16, attack='fgsm-rs', holdout=0, eval_steps=2,
                  device='cpu', progress=False)
    return PruneConfig(**{**fields, **overrides})


@pytest.fixture(scope='module')
def pruned_run(tmp_path_factory):
    cfg = tiny_prune_config(tmp_path_factory.mktemp('mad'), n_train=40, n_test=10, saliency_batches=2, epochs=1,
                            eval_images=6)
    return cfg, run_prune(cfg, command='test')


def test_run_writes_a_strict_loadable_sparse_checkpoint(pruned_run):
    cfg, summary = pruned_run
    out = Path(cfg.out)
    assert json.loads((out / 'prune_summary.json').read_text())['schema'] == 'fsr-hub/prune/v1'
    assert summary['mode'] == 'reduced' and len(summary['reductions']) == 3  # saliency batches, epochs, FGSM-RS
    model = create('fsr_vgg16', num_classes=10, **TINY_VGG)
    load_weights(model, out / 'pruned.safetensors')  # strict: same keys and shapes
    layers = prunable_layers(model)
    sal = read_weights(out / 'saliency.safetensors')
    chosen = select(sal, layers, cfg.sparsity)
    for n, layer in layers.items():
        assert (layer_matrix(layer.module.weight, layer.module.bias)[chosen[n]] == 0).all(), n
    sp = summary['sparsity']
    pooled = [r for r in sp['layers'] if r['pool'] == 'global']
    assert sum(r['pruned'] for r in pooled) == int(0.9 * sum(r['params'] for r in pooled))
    assert sp['nonzero_params'] == sum(int((p != 0).sum()) for p in model.parameters())
    assert summary['flops']['gflops_fvcore_sparse'] < summary['flops']['gflops_fvcore_dense']
    assert summary['evaluation']['dense']['n'] == 6 and len(summary['finetune']['history']) == 1


def test_saliency_file_is_reused(pruned_run, tmp_path):
    cfg, _ = pruned_run
    again = PruneConfig(**{**cfg.__dict__, 'saliency': f'{cfg.out}/saliency.safetensors', 'epochs': 0,
                           'saliency_batches': None, 'eval_images': 0, 'out': str(tmp_path)})
    summary = run_prune(again)
    assert summary['saliency']['computed'] is False and summary['evaluation'] is None
    assert summary['saliency']['recorded']['batches'] == '2'
    assert summary['mode'] == 'reduced' and 'no fine-tuning (--epochs 0)' in summary['reductions']
    assert any(r.startswith('saliency read from') and 'first 2 training batches' in r for r in summary['reductions'])


def test_magnitude_baseline_prunes_the_smallest_weights(pruned_run, tmp_path):
    cfg, _ = pruned_run
    summary = run_prune(PruneConfig(**{**cfg.__dict__, 'criterion': 'magnitude', 'saliency_batches': None,
                                       'epochs': 0, 'eval_images': 0, 'out': str(tmp_path)}))
    dense = tiny_vgg()
    layers = prunable_layers(dense)
    chosen = select({n: layer_matrix(l.module.weight, l.module.bias).abs() for n, l in layers.items()}, layers, 0.9)
    pruned = create('fsr_vgg16', num_classes=10, **TINY_VGG)
    load_weights(pruned, tmp_path / 'pruned.safetensors')
    for n, layer in prunable_layers(pruned).items():
        zero = layer_matrix(layer.module.weight, layer.module.bias) == 0
        assert torch.equal(zero, chosen[n]), n  # exactly the chosen entries: the dense weights have no zeros
    assert summary['criterion'] == 'magnitude' and summary['method']['criterion'] == 'magnitude'
    assert 'not MAD' in summary['method']['baseline'] and not (tmp_path / 'saliency.safetensors').exists()
    assert summary['mode'] == 'reduced' and summary['reductions'] == ['no fine-tuning (--epochs 0)']


@pytest.mark.parametrize('flags, message', [
    (['--sparsity', '1.5'], 'sparsity must be in (0, 1)'),
    (['--sparsity', '0'], 'sparsity must be in (0, 1)'),
    (['--saliency-batches', '0'], 'saliency_batches must be positive'),
    (['--epochs', '-1'], 'epochs must be >= 0'),
    (['--weights', 'missing.safetensors'], 'weights file not found'),
    (['--saliency', 'missing.safetensors'], 'saliency file not found'),
    (['--saliency', '{weights}', '--saliency-batches', '2'], 'saliency_batches has no effect'),
    (['--model', 'no_such_model'], 'Unknown model'),
    (['--criterion', 'magnitude', '--saliency-batches', '2'], 'saliency_batches has no effect with criterion'),
    (['--criterion', 'magnitude', '--saliency', '{weights}'], 'saliency has no effect with criterion'),
])
def test_bad_inputs_are_one_line_errors(flags, message, tmp_path, capsys):
    weights = tmp_path / 'w.safetensors'
    weights.write_bytes(b'')
    argv = ['--model', 'fsr_vgg16', '--weights', str(weights), '--data', str(tmp_path), '--out', str(tmp_path / 'o'),
            '--device', 'cpu', *(f.format(weights=weights) for f in flags)]
    assert prune_tool.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and message in err and '\n' not in err


@pytest.mark.parametrize('metadata, message', [
    ({'kind': 'mad_saliency', 'weights_sha256': 'DENSE'}, 'does not fit the model'),
    ({'kind': 'mad_saliency', 'weights_sha256': '0' * 64}, 'was computed for weights with sha256 0000'),
    ({}, 'not a saliency file written by tools/prune.py'),
])
def test_saliency_file_of_another_model_is_refused(pruned_run, tmp_path, metadata, message):
    cfg, _ = pruned_run
    bad = tmp_path / 'sal.safetensors'
    dense_sha = sha256_file(cfg.weights)
    metadata = {k: v.replace('DENSE', dense_sha) for k, v in metadata.items()}
    save_weights({'fc': torch.zeros(10, 9)}, bad, metadata=metadata)
    with pytest.raises(ValueError, match=message):
        run_prune(PruneConfig(**{**cfg.__dict__, 'saliency': str(bad), 'saliency_batches': None,
                                 'out': str(tmp_path / 'o')}))


def test_saliency_of_other_shapes_is_refused_by_name():
    layers = prunable_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)))
    saliency = {name: torch.zeros(layer.shape) for name, layer in layers.items()}
    check_saliency(saliency, layers, 'sal.safetensors')  # fits
    name = next(iter(layers))
    saliency[name] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=rf"sal.safetensors does not fit the model: saliency shapes differ, "
                                         rf"e.g. \['{name}: \(2, 2\) vs \(4, 28\)'\]"):
        check_saliency(saliency, layers, 'sal.safetensors')


def test_cli_maps_every_flag_to_the_config(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run(cfg, command):
        seen['cfg'], seen['command'] = cfg, command
        return {'criterion': cfg.criterion, 'mode': 'reduced', 'evaluation': None,
                'sparsity': {'prunable_sparsity': 0.9, 'nonzero_params': 5}}

    monkeypatch.setattr(prune_tool, 'run_prune', fake_run)
    argv = ['--model', 'resnet18', '--weights', 'w', '--data', 'd', '--out', 'o', '--sparsity', '99/100',
            '--saliency-batches', '3', '--epochs', '2', '--attack', 'fgsm-rs', '--no-progress',
            '--fsr-positions', 'layer4']
    assert prune_tool.main(argv) == 0
    cfg = seen['cfg']
    assert (cfg.sparsity, cfg.saliency_batches, cfg.epochs, cfg.attack, cfg.progress) == (0.99, 3, 2, 'fgsm-rs', False)
    assert cfg.model_args == {'fsr_positions': ['layer4']} and cfg.weight_decay == 2e-4 and cfg.beta == 0.5
    assert cfg.criterion == 'mad'
    assert seen['command'].startswith('python tools/prune.py --model resnet18')
    assert 'mad reduced run' in capsys.readouterr().out
