"""Training objectives: PGD-AT (Madry et al. 2018), TRADES (Zhang et al. 2019), MART (Wang et al. 2020), natural
training (clean cross-entropy, no attack) and ADML fine-tuning (Lee et al., ICCV 2023), each optionally with the
FSR losses (paper Eq. 5).

:class:`AdversarialObjective` is an ``nn.Module`` whose ``forward(x_nat, x_adv, y)`` returns the loss: wrapping
it (not the model) in DDP makes one DDP forward per step even for TRADES / MART, which need two model forwards.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attacks import trades_pgd
from .losses import fsr_aux_loss
from .models.base import FSROutput
from .paper import ADML_BETA
from .train_attacks import check_attack, training_attack

__all__ = ['OBJECTIVES', 'ADML_BASES', 'ADML_BETA', 'ObjectiveConfig', 'at_loss', 'trades_loss', 'mart_loss',
           'adml_split', 'adml_debias_loss', 'forward_train', 'AdversarialObjective']

OBJECTIVES = ('at', 'trades', 'mart', 'natural', 'adml')
#: the objectives ADML's first half may take (``--adml-base``)
ADML_BASES = ('at', 'trades', 'mart')
#: added to the probabilities inside ADML's logarithms (the official code's)
ADML_LOG_EPS = 1e-3


@dataclass
class ObjectiveConfig:
    """What the training step optimises and how its adversarial examples are made."""
    name: str = 'at'
    beta: float = 6.0
    fsr: bool = True
    lambda_sep: float = 1.0
    lambda_rec: float = 1.0
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    attack: str = 'pgd'  # one of fsr_hub.train_attacks.TRAIN_ATTACKS (TRADES: pgd only)
    adml_base: str = 'at'  # the first half's objective under ADML: at | trades | mart

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f'Unknown objective {self.name!r}; expected one of {OBJECTIVES}.')
        if self.name == 'adml' and self.adml_base not in ADML_BASES:
            raise ValueError(f'Unknown ADML base {self.adml_base!r}; expected one of {", ".join(ADML_BASES)}.')
        check_attack(self.attack, self.name, None, self.random_start)


def at_loss(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PGD-AT: mean cross-entropy on the adversarial examples."""
    return F.cross_entropy(logits_adv.float(), y)


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float = 6.0) -> torch.Tensor:
    """TRADES: CE(f(x), y) + beta * KL(p(x) || p(x_adv)), KL summed over classes and averaged over the batch."""
    logits_nat, logits_adv = logits_nat.float(), logits_adv.float()
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction='batchmean')
    return F.cross_entropy(logits_nat, y) + beta * kl


def mart_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float = 6.0) -> torch.Tensor:
    """MART as in Wang et al.'s code: BCE(p(x_adv), y) + beta * mean(KL(p(x) || p(x_adv)) * (1 - p_y(x))).

    BCE = CE(x_adv, y) - log(1 - max_{k != y} p_k(x_adv)); the constants 1.0001, 1e-12 and 1.0000001 are theirs.
    """
    logits_nat, logits_adv = logits_nat.float(), logits_adv.float()
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits_nat, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = (nat_probs * (torch.log(nat_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(dim=1)
    return loss_adv + beta * (kl * (1.0000001 - true_probs)).mean()


def adml_split(n: int) -> int:
    """Size of ADML's first half of a batch of ``n``: ``floor(n / 2)`` (an odd batch gives the extra example to
    the second, debiasing half). ValueError below 2 examples."""
    if n < 2:
        raise ValueError(f'ADML splits each batch in two halves: it needs at least 2 examples, got {n}.')
    return n // 2


def adml_debias_loss(logits_adv: torch.Tensor, logits_nat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ADML's loss on the second half (Lee et al. 2023, official code).

    With p = softmax(f(x_adv)), y^ = argmax p, S the examples the attack wins (y^ != y) and w = 1 / p(y^) - 1
    (detached): ``mean_S[w * -log(p_y + 1e-3)] + mean_S[w * log(p_y^ + 1e-3)] + CE(f(x_nat), y)``. The means
    over S are sums over the batch masked by S and divided by max(|S|, 1): no data-dependent shapes (CUDA
    graphs), and an empty S contributes exactly 0 (the official code returns NaN there). p(y^) >= 1 / K keeps w
    finite.
    """
    logits_adv, logits_nat = logits_adv.float(), logits_nat.float()
    p = F.softmax(logits_adv, dim=1)
    p_hat, y_hat = p.max(dim=1)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    won = (y_hat != y).float()
    w = (1.0 / p_hat - 1.0).detach()
    per_example = w * (torch.log(p_hat + ADML_LOG_EPS) - torch.log(p_y + ADML_LOG_EPS))
    debias = (won * per_example).sum() / won.sum().clamp(min=1.0)
    return debias + F.cross_entropy(logits_nat, y)


def forward_train(model: nn.Module, x: torch.Tensor) -> FSROutput:
    """``model.forward_train(x)`` for FSR networks; plain logits and no auxiliary outputs for any other model."""
    fn = getattr(model, 'forward_train', None)
    if fn is not None:
        return fn(x)
    return FSROutput(logits=model(x), aux={})


class AdversarialObjective(nn.Module):
    """Adversarial example generation plus the training loss of one objective for ``model``.

    The FSR term ``(1/|L|) sum_l (lambda_sep L_sep + lambda_rec L_rec)`` is computed on the adversarial forward
    (the original FSR code applies it to adversarial examples; for TRADES / MART this is the forward that carries
    the robustness term), and for natural training on the clean forward. ``y'`` of L_sep is the highest wrong
    class of that same forward.

    ADML splits each batch in order into halves: the first ``floor(B / 2)`` examples take the base objective's loss
    (AT, TRADES or MART: ``adml_base``), the other ``ceil(B / 2)`` the debiasing loss of :func:`adml_debias_loss`.
    Its adversarial examples come from the training attack (``attack``: PGD, FGSM-RS or N-FGSM, cross-entropy) for
    every base, as in the official code.
    """

    def __init__(self, model: nn.Module, cfg: ObjectiveConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg

    def perturb(self, x: torch.Tensor, y: torch.Tensor, attack_model: Optional[nn.Module] = None) -> torch.Tensor:
        """Adversarial examples for the update, made with the model in eval mode (BN running statistics,
        deterministic FSR mask), which is then put back into train mode, as in the original FSR code.
        Natural training has no attack: ``x`` itself is returned.

        ``attack_model`` is the callable to attack (e.g. a compiled model); defaults to ``self.model``.
        """
        c = self.cfg
        if c.name == 'natural':
            return x
        net = attack_model if attack_model is not None else self.model
        was_training = self.model.training
        self.model.eval()
        try:
            if c.name == 'trades':
                return trades_pgd(net, x, c.eps, c.alpha, c.steps)
            return training_attack(net, x, y, c.attack, c.eps, c.alpha, c.steps, c.random_start)
        finally:
            self.model.train(was_training)

    def forward(self, x_nat: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, stats) with stats = [sum of loss * B, B, adversarially correct or -1, naturally correct
        or -1] as one float tensor, for on-device accumulation without host syncs. For natural training
        ``x_adv`` is the clean batch (what :meth:`perturb` returns)."""
        c = self.cfg
        out = forward_train(self.model, x_adv)
        logits_adv = out.logits
        nat_correct = x_nat.new_full((), -1.0)  # new_full: a device fill, no blocking host-to-device copy
        if c.name in ('at', 'natural'):
            loss = at_loss(logits_adv, y)  # the cross-entropy of the (adversarial or clean) forward
        elif c.name == 'adml':
            loss, nat_correct = self._adml_loss(x_nat, logits_adv, y, nat_correct)
        else:
            logits_nat = self.model(x_nat)
            fn = trades_loss if c.name == 'trades' else mart_loss
            loss = fn(logits_nat, logits_adv, y, c.beta)
            nat_correct = (logits_nat.detach().argmax(1) == y).sum().float()
        if c.fsr and out.aux:
            loss = loss + fsr_aux_loss(out.aux, logits_adv.float(), y, c.lambda_sep, c.lambda_rec)
        n = float(y.shape[0])
        adv_correct = (logits_adv.detach().argmax(1) == y).sum().float()
        if c.name == 'natural':
            adv_correct, nat_correct = x_nat.new_full((), -1.0), adv_correct
        stats = torch.stack([loss.detach().float() * n, x_nat.new_full((), n), adv_correct, nat_correct])
        return loss, stats

    def _adml_loss(self, x_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                   nat_correct: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """ADML's loss1 (the base objective on the first half) + loss2 (:func:`adml_debias_loss` on the second),
        from the adversarial forward of the whole batch; returns (loss, naturally correct or -1). The AT base
        needs the clean forward of the second half only, so it counts no clean accuracy."""
        c, h = self.cfg, adml_split(y.shape[0])
        if c.adml_base == 'at':
            loss1 = at_loss(logits_adv[:h], y[:h])
            logits_nat2 = self.model(x_nat[h:])
        else:
            logits_nat = self.model(x_nat)
            fn = trades_loss if c.adml_base == 'trades' else mart_loss
            loss1 = fn(logits_nat[:h], logits_adv[:h], y[:h], c.beta)
            logits_nat2 = logits_nat[h:]
            nat_correct = (logits_nat.detach().argmax(1) == y).sum().float()
        return loss1 + adml_debias_loss(logits_adv[h:], logits_nat2, y[h:]), nat_correct
