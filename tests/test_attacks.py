"""Attacks against models with a known answer, the eps-ball / box invariants, and the AutoAttack configuration."""
import pytest
import torch
import torch.nn as nn

from fsr_hub.attacks import cw_inf, fgsm, linf_violation, pgd, pgd_trajectory, trades_pgd
from fsr_hub.autoattack import autoattack_config, build_autoattack, run_autoattack

from conftest import tiny_fsr_net

EPS = 8 / 255
TOL = 1e-6  # float32 rounding of x +- eps


def linear_model(num_classes: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))
    return m.eval()


def _in_bounds(x_adv, x, eps=EPS):
    return linf_violation(x_adv, x, eps) <= TOL


def test_linear_worst_case_is_sign_w_times_eps():
    # 2-class linear model: every gradient of the CE (or margin) loss w.r.t. x has the sign of w1 - w0 for y = 0,
    # so the worst-case L-inf perturbation is x + eps * sign(w1 - w0), and every attack must find exactly it.
    model = linear_model()
    w = model[1].weight.detach()
    direction = (w[1] - w[0]).sign().view(1, 3, 32, 32)
    x = torch.full((4, 3, 32, 32), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    expected = x + EPS * direction
    for x_adv in (fgsm(model, x, y, EPS), pgd(model, x, y, EPS, EPS / 10, 20), pgd(model, x, y, EPS, EPS / 4, 10, True),
                  cw_inf(model, x, y, EPS, EPS / 10, 30)):
        assert torch.allclose(x_adv, expected, atol=TOL)
    # for y = 1 the direction flips
    assert torch.allclose(fgsm(model, x, torch.ones(4, dtype=torch.long), EPS), x - EPS * direction, atol=TOL)


def test_attacks_respect_ball_and_box():
    model = tiny_fsr_net().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 32, generator=g)
    x[:2] = x[:2].round()  # pixels at exactly 0 and 1 test the box clipping
    y = torch.randint(0, 10, (6,), generator=g)
    outs = [fgsm(model, x, y, EPS), pgd(model, x, y, EPS, EPS / 4, 5, random_start=True),
            pgd(model, x, y, EPS, EPS / 10, 5), cw_inf(model, x, y, EPS, EPS / 10, 5),
            trades_pgd(model, x, EPS, EPS / 4, 3),
            pgd_trajectory(model, x, y, EPS, EPS / 10, 5, record=(1, 5))[0]]
    for x_adv in outs:
        assert _in_bounds(x_adv, x) and x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv - x).abs().max() > 0
    assert not model.training
    # a too-large step must still be projected
    big = pgd(model, x, y, EPS, 1.0, 3)
    assert _in_bounds(big, x)


def test_pgd_trajectory_matches_separate_runs():
    model = tiny_fsr_net().eval()
    x = torch.rand(5, 3, 32, 32)
    y = torch.randint(0, 10, (5,))
    x_adv, rec = pgd_trajectory(model, x, y, EPS, EPS / 10, 6, record=(0, 2, 6))
    assert torch.equal(x_adv, pgd(model, x, y, EPS, EPS / 10, 6))
    for k in (0, 2, 6):
        with torch.no_grad():
            expect = model(pgd(model, x, y, EPS, EPS / 10, k)).argmax(1) == y
        assert torch.equal(rec[k], expect)


def test_attack_under_bf16_autocast_on_cpu():
    model = tiny_fsr_net().eval()
    x = torch.rand(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, EPS, EPS / 4, 3, random_start=True)
    assert x_adv.dtype == torch.float32 and _in_bounds(x_adv, x)


def test_bad_attack_args():
    model = linear_model()
    with pytest.raises(ValueError, match='eps'):
        pgd(model, torch.rand(1, 3, 32, 32), torch.zeros(1, dtype=torch.long), -1.0, 0.1, 1)


def test_autoattack_standard_configuration_is_the_originals():
    model = linear_model(10)
    std = autoattack_config(build_autoattack(model, EPS, 'standard'))
    assert std['attacks'] == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    s = std['sub_attacks']
    assert s['apgd-ce']['n_iter'] == 100 and s['apgd-ce']['n_restarts'] == 1 and s['apgd-ce']['eot_iter'] == 1
    assert s['apgd-t']['n_iter'] == 100 and s['apgd-t']['n_target_classes'] == 9
    assert s['fab-t']['n_iter'] == 100 and s['fab-t']['n_target_classes'] == 9
    assert s['square']['n_queries'] == 5000 and s['square']['p_init'] == 0.8
    assert std['implementation'].startswith('pyautoattack 0.2.0') and std['eps'] == EPS
    rand = autoattack_config(build_autoattack(model, EPS, 'rand'))
    assert rand['attacks'] == ['apgd-ce', 'apgd-dlr'] and rand['sub_attacks']['apgd-dlr']['eot_iter'] == 20
    with pytest.raises(ValueError, match='version'):
        build_autoattack(model, EPS, 'plus')


def test_autoattack_on_linear_model_finds_the_exact_robust_set():
    # For a linear classifier, x (away from the box edges) is L-inf robust iff for every k != y:
    # (w_y - w_k) . x + b_y - b_k > eps * ||w_y - w_k||_1. AutoAttack must break exactly the others.
    model = linear_model(10, seed=1)
    # class k reads pixel k (and a little of every other pixel): both robust and non-robust points
    with torch.no_grad():
        model[1].weight.mul_(0.01)
        model[1].weight[:, :10] += 5 * torch.eye(10)
    w = model[1].weight.detach()
    x = 0.2 + 0.6 * torch.rand(400, 3, 32, 32)
    logits = model(x).detach()
    y = logits.argmax(1)
    margin = logits.gather(1, y[:, None]) - logits
    l1 = (w[y][:, None, :] - w[None]).abs().sum(-1)
    slack = (margin - EPS * l1).scatter(1, y[:, None], float('inf')).amin(1)
    keep = torch.cat([torch.nonzero(slack > 0.02).flatten()[:6], torch.nonzero(slack < -0.02).flatten()[:6]])
    assert len(keep) >= 8, 'test data gives too few clearly robust / non-robust points'
    x, y, truth = x[keep], y[keep], slack[keep] > 0
    # fewer iterations / queries than the original keep this test fast; robust points stay robust whatever runs
    quick = {'apgd': {'n_iter': 20}, 'apgd_targeted': {'n_iter': 20, 'n_target_classes': 3},
             'fab': {'n_iter': 10, 'n_target_classes': 2}, 'square': {'n_queries': 50}}
    x_adv, robust, cfg = run_autoattack(model, x, y, EPS, 'standard', batch_size=16, overrides=quick)
    assert cfg['sub_attacks']['square']['n_queries'] == 50
    assert torch.equal(robust, truth)
    assert _in_bounds(x_adv, x)
    # PGD can never beat the exact optimum
    with torch.no_grad():
        pgd_ok = model(pgd(model, x, y, EPS, EPS / 10, 100)).argmax(1) == y
    assert (pgd_ok | ~truth).all() and (pgd_ok >= truth).all()


def _original_cw_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """The original FSR code's C&W loss, written from its one-hot formulation."""
    onehot = torch.nn.functional.one_hot(y, logits.shape[1]).float()
    correct = (onehot * logits).sum(1)
    wrong = ((1 - onehot) * logits - 1e4 * onehot).max(1)[0]
    return -torch.clamp(correct - wrong + kappa, min=0).sum()


def test_cw_margin_loss_equals_the_originals_and_pushes_confident_examples():
    from fsr_hub.attacks import cw_margin_loss

    logits = torch.tensor([[80.0, 0.0, 5.0], [1.0, 2.0, 0.5], [0.0, 60.0, 70.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    ours, ref = cw_margin_loss(logits, y), _original_cw_loss(logits, y)
    torch.testing.assert_close(ours, ref)
    grad, = torch.autograd.grad(ours, logits)
    # a margin of 75 > kappa still gets a gradient (lower the true logit, raise the best wrong one) ...
    assert grad[0, 0] < 0 and grad[0, 2] > 0
    # ... and so does an example misclassified by less than kappa (the wrong class leads by 10)
    assert grad[2, 1] < 0 and grad[2, 2] > 0


def test_cw_attack_moves_confidently_correct_examples():
    # a linear model whose clean margins exceed kappa: the attack must still move every input
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()
    with torch.no_grad():
        model[1].weight.mul_(200.0)
    x = torch.rand(16, 3, 4, 4)
    y = model(x).argmax(1)
    x_adv = cw_inf(model, x, y, eps=8 / 255, alpha=0.8 / 255, steps=5)
    assert ((x_adv - x).flatten(1).abs().amax(1) > 0).all()
