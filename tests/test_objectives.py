"""AT / TRADES / MART losses on hand-computed cases, the FSR term, and the eval-mode attack of the training step."""
import math

import pytest
import torch
import torch.nn as nn

from fsr_hub.losses import fsr_aux_loss
from fsr_hub.objectives import AdversarialObjective, ObjectiveConfig, at_loss, forward_train, mart_loss, trades_loss

from conftest import tiny_fsr_net


def test_at_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert at_loss(logits, y).item() == pytest.approx(expected, rel=1e-6)


def test_trades_loss_hand_computed():
    nat = torch.tensor([[1.0, 0.0]])
    adv = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([0])
    p = [1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))]
    kl = sum(pi * math.log(pi / 0.5) for pi in p)
    assert trades_loss(nat, adv, y, beta=6.0).item() == pytest.approx(-math.log(p[0]) + 6 * kl, rel=1e-6)
    assert trades_loss(nat, nat, y, beta=6.0).item() == pytest.approx(-math.log(p[0]), rel=1e-6)


def test_mart_loss_hand_computed():
    nat = torch.tensor([[2.0, 1.0, 0.0]])
    adv = torch.tensor([[0.5, 1.5, 0.0]])
    y = torch.tensor([0])

    def softmax(v):
        e = [math.exp(t) for t in v]
        return [t / sum(e) for t in e]

    pa, pn = softmax([0.5, 1.5, 0.0]), softmax([2.0, 1.0, 0.0])
    bce = -math.log(pa[0]) - math.log(1.0001 - pa[1] + 1e-12)  # class 1 is the top wrong adversarial class
    kl = sum(n * (math.log(n + 1e-12) - math.log(a + 1e-12)) for n, a in zip(pn, pa))
    expected = bce + 6.0 * kl * (1.0000001 - pn[0])
    assert mart_loss(nat, adv, y, beta=6.0).item() == pytest.approx(expected, rel=1e-5)
    # when the adversarial prediction is right, the BCE term uses the runner-up
    adv2 = torch.tensor([[3.0, 0.0, 1.0]])
    pa2 = softmax([3.0, 0.0, 1.0])
    bce2 = -math.log(pa2[0]) - math.log(1.0001 - pa2[2] + 1e-12)
    kl2 = sum(n * (math.log(n + 1e-12) - math.log(a + 1e-12)) for n, a in zip(pn, pa2))
    assert mart_loss(nat, adv2, y, 6.0).item() == pytest.approx(bce2 + 6.0 * kl2 * (1.0000001 - pn[0]), rel=1e-5)


@pytest.mark.parametrize('name', ['at', 'trades', 'mart'])
def test_fsr_term_is_added_on_the_adversarial_forward(name):
    model = tiny_fsr_net().train()
    x = torch.rand(6, 3, 32, 32)
    x_adv = (x + 0.01).clamp(0, 1)
    y = torch.randint(0, 10, (6,))

    def run(fsr):
        torch.manual_seed(3)  # same Gumbel noise in each forward
        return AdversarialObjective(model, ObjectiveConfig(name=name, fsr=fsr))(x, x_adv, y)

    (with_fsr, stats), (without, _) = run(True), run(False)
    torch.manual_seed(3)
    out = forward_train(model, x_adv)
    expected = fsr_aux_loss(out.aux, out.logits, y, 1.0, 1.0)
    assert expected.item() > 0
    assert (with_fsr - without).item() == pytest.approx(expected.item(), rel=1e-4)
    assert stats[1].item() == 6 and 0 <= stats[2].item() <= 6
    assert (stats[3].item() == -1) == (name == 'at')


def test_vanilla_model_has_no_fsr_term():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    a, _ = AdversarialObjective(model, ObjectiveConfig(fsr=True))(x, x, y)
    b, _ = AdversarialObjective(model, ObjectiveConfig(fsr=False))(x, x, y)
    assert a.item() == b.item()


class ModeRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3072, 10)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize('name', ['at', 'trades'])
def test_perturb_runs_in_eval_mode_and_restores_train(name):
    model = ModeRecorder().train()
    obj = AdversarialObjective(model, ObjectiveConfig(name=name, steps=3))
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    x_adv = obj.perturb(x, y)
    assert model.modes and not any(model.modes)
    assert model.training
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6


def test_objective_under_bf16_autocast_on_cpu():
    model = tiny_fsr_net().train().to(memory_format=torch.channels_last)
    obj = AdversarialObjective(model, ObjectiveConfig(name='trades', steps=2))
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        x_adv = obj.perturb(x, y)
        loss, _ = obj(x, x_adv, y)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_unknown_objective():
    with pytest.raises(ValueError, match='objective'):
        ObjectiveConfig(name='alp')


def test_natural_objective_is_clean_cross_entropy_plus_fsr_on_the_clean_forward():
    model = tiny_fsr_net().train()
    obj = AdversarialObjective(model, ObjectiveConfig(name='natural'))
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    assert obj.perturb(x, y) is x  # no attack
    torch.manual_seed(3)
    loss, stats = obj(x, obj.perturb(x, y), y)
    torch.manual_seed(3)  # same Gumbel noise
    out = forward_train(model, x)
    expected = at_loss(out.logits, y) + fsr_aux_loss(out.aux, out.logits, y, 1.0, 1.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert stats[2].item() == -1 and stats[3].item() == (out.logits.argmax(1) == y).sum().item()
    no_fsr, _ = AdversarialObjective(model, ObjectiveConfig(name='natural', fsr=False))(x, x, y)
    assert no_fsr.item() < loss.item()  # the FSR term was there
