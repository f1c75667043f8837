"""The FSR module (Eq. 2, Sec. 3.1-3.2) and the FSR losses (Eq. 3-5) against hand-computed cases."""
import math

import pytest
import torch

from fsr_hub import FSR, FSRAux, fsr_aux_loss, gumbel_sigmoid_mask, highest_wrong_class
from fsr_hub.losses import recalibration_loss, separation_loss


def _eq2(r, tau, u1, u2):
    """Eq. 2 literally: two-class softmax of (log s(r) + g1, log(1 - s(r)) + g2) / tau, g = -log(-log u)."""
    g1, g2 = -torch.log(-torch.log(u1)), -torch.log(-torch.log(u2))
    s = torch.sigmoid(r)
    logits = torch.stack([(torch.log(s) + g1) / tau, (torch.log(1 - s) + g2) / tau])
    return torch.softmax(logits, dim=0)[0]


def test_eval_mask_equals_eq2_with_expected_uniform():
    r = torch.linspace(-3, 3, 25, dtype=torch.float64)
    half = torch.full_like(r, 0.5)
    torch.testing.assert_close(gumbel_sigmoid_mask(r, 0.1, stochastic=False), _eq2(r, 0.1, half, half))


def test_train_mask_matches_eq2_in_distribution():
    torch.manual_seed(0)
    r = torch.full((200_000,), 0.05, dtype=torch.float64)
    ours = gumbel_sigmoid_mask(r, 0.1, stochastic=True)
    ref = _eq2(r, 0.1, torch.rand_like(r), torch.rand_like(r))
    # same distribution: compare mean and a few quantiles of 200k samples
    assert abs(ours.mean() - ref.mean()) < 0.01
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    torch.testing.assert_close(ours.quantile(q), ref.quantile(q), atol=0.02, rtol=0)


@pytest.mark.parametrize('stochastic', [False, True])
def test_mask_is_finite_for_extreme_scores(stochastic):
    for dtype in (torch.float32, torch.bfloat16):
        r = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=dtype)
        m = gumbel_sigmoid_mask(r, 0.1, stochastic)
        assert torch.isfinite(m).all() and (m >= 0).all() and (m <= 1).all()
        if not stochastic:
            assert m[0] == 0 and m[-1] == 1


def test_fsr_output_is_robust_plus_recalibrated_nonrobust():
    torch.manual_seed(0)
    fsr = FSR(8, num_classes=3).eval()
    f = torch.randn(2, 8, 4, 4)
    out, aux = fsr(f, need_aux=True)
    m = torch.sigmoid(fsr.separation(f) / fsr.tau)
    f_pos, f_neg = m * f, (1 - m) * f
    f_rec = f_neg + (1 - m) * fsr.recalibration(f_neg)
    torch.testing.assert_close(aux.mask, m)
    torch.testing.assert_close(out, f_pos + f_rec)
    torch.testing.assert_close(aux.logits_pos, fsr.aux(f_pos.mean((2, 3))))
    torch.testing.assert_close(aux.logits_neg, fsr.aux(f_neg.mean((2, 3))))
    torch.testing.assert_close(aux.logits_rec, fsr.aux(f_rec.mean((2, 3))))
    assert fsr(f)[1] is None  # no auxiliary work unless asked


def _aux(pos, neg, rec):
    t = lambda v: None if v is None else torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return FSRAux(mask=torch.zeros(1), logits_pos=t(pos), logits_neg=t(neg), logits_rec=t(rec))


def _ce(logits, y):
    return -(logits[y] - math.log(sum(math.exp(v) for v in logits)))


def test_losses_against_hand_computed_values():
    final = torch.tensor([[2.0, 5.0, 1.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([1, 2])
    # highest-scoring wrong class of the final output: sample 0 -> class 0 (2.0 > 1.0), sample 1 -> class 1
    assert highest_wrong_class(final, y).tolist() == [0, 1]
    pos = [[1.0, 2.0, 0.5], [0.2, 0.1, 0.9]]
    neg = [[0.3, -1.0, 2.0], [1.5, 0.5, -0.5]]
    rec = [[0.0, 1.0, 0.0], [2.0, 0.0, 1.0]]
    aux = _aux(pos, neg, rec)
    l_sep = (_ce(pos[0], 1) + _ce(pos[1], 2)) / 2 + (_ce(neg[0], 0) + _ce(neg[1], 1)) / 2
    l_rec = (_ce(rec[0], 1) + _ce(rec[1], 2)) / 2
    assert separation_loss(aux, final, y).item() == pytest.approx(l_sep, rel=1e-12)
    assert recalibration_loss(aux, y).item() == pytest.approx(l_rec, rel=1e-12)
    # Eq. 5 (without L_cls): average over positions of lambda_sep * L_sep + lambda_rec * L_rec
    aux2 = _aux(neg, pos, pos)
    l_sep2 = (_ce(neg[0], 1) + _ce(neg[1], 2)) / 2 + (_ce(pos[0], 0) + _ce(pos[1], 1)) / 2
    l_rec2 = (_ce(pos[0], 1) + _ce(pos[1], 2)) / 2
    got = fsr_aux_loss({'a': aux, 'b': aux2}, final, y, lambda_sep=0.5, lambda_rec=2.0).item()
    assert got == pytest.approx((0.5 * l_sep + 2 * l_rec + 0.5 * l_sep2 + 2 * l_rec2) / 2, rel=1e-12)


def test_aux_loss_skips_disabled_stages_and_is_zero_without_fsr():
    final = torch.tensor([[2.0, 5.0, 1.0]])
    y = torch.tensor([1])
    only_rec = _aux(None, None, [[0.0, 1.0, 0.0]])
    assert fsr_aux_loss({'a': only_rec}, final, y).item() == pytest.approx(_ce([0.0, 1.0, 0.0], 1))
    assert fsr_aux_loss({}, final, y).item() == 0.0
    with pytest.raises(ValueError, match='Separation stage'):
        separation_loss(only_rec, final, y)
    with pytest.raises(ValueError, match='Recalibration stage'):
        recalibration_loss(_aux([[0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0]], None), y)


def test_highest_wrong_class_never_returns_the_target():
    torch.manual_seed(0)
    logits = torch.randn(64, 10)
    y = logits.argmax(1)  # the target is the top class, so the answer is always the runner-up
    wrong = highest_wrong_class(logits, y)
    assert (wrong != y).all()
    assert torch.equal(wrong, logits.topk(2, dim=1).indices[:, 1])
    # every other non-target class scores at most the chosen one
    others = logits.scatter(1, torch.stack([y, wrong], 1), float('-inf'))
    assert (others.max(1).values <= logits.gather(1, wrong[:, None]).squeeze(1)).all()
    # a target that is not the top class: the top class itself is the highest wrong one
    assert highest_wrong_class(torch.tensor([[0.1, 3.0, 2.0]]), torch.tensor([2])).tolist() == [1]


def test_train_mask_noise_is_unbiased_under_bf16():
    # bf16 uniforms (as rand_like would draw under autocast) skew the logistic noise; the mask must not be
    torch.manual_seed(0)
    r = torch.zeros(2_000_000, dtype=torch.bfloat16)
    m = gumbel_sigmoid_mask(r, 0.1, stochastic=True)
    assert m.dtype == torch.bfloat16
    assert abs(m.float().mean().item() - 0.5) < 1e-3  # standard error of the mean here: 3.5e-4
