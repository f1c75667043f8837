"""Black-box attacks (fsr_hub.blackbox) against cases their papers let us compute by hand."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsr_hub.attacks import fgsm, pgd
from fsr_hub.blackbox import DI_FGSM, di_fgsm, nattack_loss, nes_update, run_nattack, ti_fgsm

pytest.importorskip('torchattack', reason="the 'analysis' extra is not installed")


class PixelReader(nn.Module):
    """Logits (w * x[c, i, j], 0): the input gradient of its loss is non-zero at one pixel only."""

    def __init__(self, c=1, i=16, j=16, w=3.0):
        super().__init__()
        self.c, self.i, self.j = c, i, j
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        v = self.w * x[:, self.c, self.i, self.j]
        return torch.stack([v, torch.zeros_like(v)], dim=1)


class Linear(nn.Module):
    """Logits (w . x + b, 0) for images of any size (resized inputs are pooled back to the weight's size)."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(torch.tensor(float(b)))

    def forward(self, x):
        if x.shape[-2:] != self.w.shape[-2:]:
            x = F.adaptive_avg_pool2d(x, self.w.shape[-2:])
        v = (x * self.w).flatten(1).sum(1) + self.b
        return torch.stack([v, torch.zeros_like(v)], dim=1)


def test_ti_fgsm_spreads_the_gradient_over_the_gaussian_kernel():
    # Dong et al.: x' = x + eps * sign(W * grad). A gradient at one pixel becomes the kernel's support around it
    # (a Gaussian is positive everywhere on its 15 x 15 window), in that channel only (the convolution is per channel)
    model = PixelReader()
    x, y = torch.full((1, 3, 32, 32), 0.5), torch.tensor([0])
    eps = 8 / 255
    x_adv = ti_fgsm(model, x, y, eps)
    expected = torch.zeros_like(x)
    expected[0, 1, 16 - 7:16 + 8, 16 - 7:16 + 8] = -eps  # lowering the true logit raises the loss
    torch.testing.assert_close(x_adv - x, expected, atol=1e-6, rtol=0)
    assert model.w.grad is None  # the attack left the model's gradients alone


def test_ti_fgsm_with_a_1x1_kernel_is_fgsm():
    torch.manual_seed(0)
    model = Linear(torch.randn(3, 32, 32), 0.5)
    x, y = torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(ti_fgsm(model, x, y, 8 / 255, kern_len=1), fgsm(model, x, y, 8 / 255))
    with pytest.raises(ValueError, match='odd'):
        ti_fgsm(model, x, y, 8 / 255, kern_len=4)


def test_di_fgsm_without_diversity_is_i_fgsm():
    # Xie et al.: with transformation probability p = 0, DI2-FGSM is I-FGSM
    torch.manual_seed(0)
    model = Linear(torch.randn(3, 32, 32), 0.5)
    x, y = torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    x_adv = di_fgsm(model, x, y, 8 / 255, diversity_prob=0.0)
    torch.testing.assert_close(x_adv, pgd(model, x, y, 8 / 255, DI_FGSM['alpha'], DI_FGSM['steps']), atol=1e-6, rtol=0)


def test_di_fgsm_resizes_and_pads_as_the_paper():
    # 299 -> rnd in [299, 330), zero-padded to 330; scaled to CIFAR: 32 -> {32, 33, 34}, padded to 35
    seen = []

    class Recorder(Linear):
        def forward(self, x):
            seen.append(x.detach().clone())
            return super().forward(x)

    torch.manual_seed(0)
    model = Recorder(torch.randn(3, 32, 32), 0.5)
    x = torch.rand(2, 3, 32, 32) * 0.5 + 0.25  # no zero pixels: zeros in the input are padding
    x_adv = di_fgsm(model, x, torch.zeros(2, dtype=torch.long), 8 / 255, diversity_prob=1.0)
    assert len(seen) == DI_FGSM['steps'] and ((x_adv - x).abs().amax() <= 8 / 255 + 1e-7)
    for inp in seen:
        assert inp.shape[-2:] == (35, 35)
        zero_rows = int((inp[0].abs().sum(dim=(0, 2)) == 0).sum())
        zero_cols = int((inp[0].abs().sum(dim=(0, 1)) == 0).sum())
        assert zero_rows == zero_cols and 1 <= zero_rows <= 3


def test_di_fgsm_lets_a_size_checking_model_see_the_enlarged_image_for_the_attack_only():
    from conftest import tiny_fsr_net

    model = tiny_fsr_net().eval()
    x, y = torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)
    x_adv = di_fgsm(model, x, y, 8 / 255, diversity_prob=1.0)
    assert (x_adv - x).abs().amax() <= 8 / 255 + 1e-7 and model.dynamic_img_size is False
    with pytest.raises(ValueError, match=r'shape \(B, 3, 32, 32\)'):
        model(torch.rand(2, 3, 35, 35))


def test_nes_update_follows_the_loss_gradient():
    # for a linear loss f(mu + sigma e) = a . e the z-scored estimate is -(lr / sigma) a / |a| in expectation
    torch.manual_seed(0)
    a = torch.randn(48)
    noise = torch.randn(1, 20000, 48)
    step = nes_update(noise, (noise @ a), lr=0.02, sigma=0.1)[0]
    assert F.cosine_similarity(step, -a, dim=0) > 0.95
    assert abs(step.norm().item() - 0.2) < 0.03


def test_nattack_loss_is_the_log_probability_margin():
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, 1.0]])
    logp = logits.log_softmax(1)
    expected = torch.stack([logp[0, 0] - logp[0, 2], torch.tensor(0.0)])  # second example is already wrong
    torch.testing.assert_close(nattack_loss(logits, torch.tensor([0, 0])), expected)


def test_nattack_succeeds_when_possible_fails_when_not_and_counts_queries():
    # linear model at x = 0.5: the best L-inf perturbation lowers the margin by exactly eps * |w|_1 (1.5 here)
    torch.manual_seed(0)
    w = torch.randint(0, 2, (3, 4, 4)).float() * 2 - 1
    eps, q_max, npop = 8 / 255, 3000, 50
    x, y = torch.full((1, 3, 4, 4), 0.5), torch.tensor([0])
    runs = {}
    for name, margin in (('breakable', 0.5), ('unbreakable', 3.0), ('already_wrong', -1.0)):
        model = Linear(w, margin - 0.5 * w.sum().item())  # margin at x = 0.5
        res = run_nattack(model, x, y, eps, max_queries=q_max, npop=npop, seed=0)
        assert (res.x_adv - x).abs().max() <= eps + 1e-7 and 0 <= res.x_adv.min() and res.x_adv.max() <= 1
        with torch.no_grad():
            runs[name] = (res, model(res.x_adv).argmax(1).item())
    res, pred = runs['breakable']
    assert bool(res.success) and pred == 1 and int(res.queries) < q_max
    res, pred = runs['unbreakable']
    assert not bool(res.success) and pred == 0 and q_max - (npop + 1) < int(res.queries) <= q_max
    res, pred = runs['already_wrong']
    assert not bool(res.success) and int(res.queries) == 1 and torch.equal(res.x_adv, x)
