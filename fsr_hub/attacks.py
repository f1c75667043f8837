"""White-box L-inf attacks of the paper's suite (Sec. 4.1) and of adversarial training, on raw [0, 1] inputs.

Every attack returns ``x_adv`` with ``||x_adv - x||_inf <= eps`` and ``0 <= x_adv <= 1``. Attacks do not
change the model's mode: evaluate with ``model.eval()`` (deterministic FSR masks). Losses are summed over
the batch so the sign step does not depend on the batch size. Attacks run under whatever autocast context
the caller opened; the perturbation itself is always kept in float32.
"""
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    'ce_loss', 'cw_margin_loss', 'kl_loss', 'pgd', 'fgsm', 'cw_inf', 'pgd_trajectory', 'trades_pgd', 'project',
    'linf_violation',
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch."""
    return F.cross_entropy(logits.float(), y, reduction='sum')


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """C&W-inf margin loss as in the original FSR code: -sum over the batch of max(true - max_wrong + kappa, 0).

    Its gradient is non-zero until the best wrong class leads the true one by kappa, so the attack keeps
    pushing confidently-correct examples (a clamp on the other side would leave them with zero gradient).
    """
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], float('-inf')).amax(dim=1)
    return -torch.clamp(true - wrong + kappa, min=0).sum()


def kl_loss(logits_adv: torch.Tensor, p_nat: torch.Tensor) -> torch.Tensor:
    """KL(p_nat || softmax(logits_adv)) summed over the batch: the TRADES inner maximisation."""
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), p_nat, reduction='sum')


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip to the eps-ball around x and to the [0, 1] image box."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def linf_violation(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> float:
    """How far ``x_adv`` leaves the eps-ball or the [0, 1] box (0.0 when it stays inside)."""
    over_ball = ((x_adv - x).abs().amax() - eps).clamp(min=0)
    over_box = torch.maximum((-x_adv).amax(), (x_adv - 1).amax()).clamp(min=0)
    return float(torch.maximum(over_ball, over_box))


def _check(eps: float, alpha: float, steps: int) -> None:
    if eps < 0 or alpha < 0 or steps < 0:
        raise ValueError(f'attack needs eps, alpha, steps >= 0, got eps={eps}, alpha={alpha}, steps={steps}.')


def _ascend(
        model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, target: torch.Tensor, eps: float, alpha: float,
        steps: int, loss_fn: LossFn, on_logits: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    # sign-gradient ascent from x_adv, projected around the clean x after every step; on_logits(k, logits)
    # sees the logits of the k-th iterate (the forward that computes step k + 1's gradient)
    for k in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_adv)
            grad, = torch.autograd.grad(loss_fn(logits, target), x_adv)
        if on_logits is not None:
            on_logits(k, logits.detach())
        x_adv = project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()


def pgd(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        alpha: float,
        steps: int,
        random_start: bool = False,
        loss_fn: LossFn = ce_loss,
) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn`` (sign steps of size ``alpha``), uniform random start optional."""
    _check(eps, alpha, steps)
    x = x.detach()
    x_adv = x.clone()
    if random_start:
        x_adv = project(x_adv + torch.empty_like(x).uniform_(-eps, eps), x, eps)
    return _ascend(model, x, x_adv, y, eps, alpha, steps, loss_fn)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps from x (no random start)."""
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1)


def cw_inf(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int = 30,
        kappa: float = 50.0,
) -> torch.Tensor:
    """C&W-inf of the paper: PGD (no random start) on the margin loss with confidence ``kappa``."""
    return pgd(model, x, y, eps, alpha, steps, loss_fn=lambda logits, t: cw_margin_loss(logits, t, kappa))


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1) == y


def pgd_trajectory(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        alpha: float,
        steps: int,
        record: Iterable[int] = (),
        loss_fn: LossFn = ce_loss,
) -> Tuple[torch.Tensor, Dict[int, torch.Tensor]]:
    """PGD without random start that also returns, for each k in ``record``, which examples the k-th iterate
    leaves correctly classified.

    Without a random start the k-th iterate IS the output of ``pgd(..., steps=k)``, so one PGD-100 run gives
    the whole steps sweep of the gradient-masking check. Correctness at step k is read from the logits of the
    forward that computes the gradient of step k + 1 (deterministic models only, i.e. eval mode).
    """
    _check(eps, alpha, steps)
    record = sorted({int(k) for k in record if 0 <= int(k) <= steps})
    out: Dict[int, torch.Tensor] = {}

    def keep(k: int, logits: torch.Tensor) -> None:
        if k in record:
            out[k] = logits.argmax(dim=1) == y

    x = x.detach()
    x_adv = _ascend(model, x, x.clone(), y, eps, alpha, steps, loss_fn, keep)
    if steps in record:
        out[steps] = _correct(model, x_adv, y)
    return x_adv, out


def trades_pgd(
        model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int, init_std: float = 0.001,
) -> torch.Tensor:
    """TRADES inner maximisation (Zhang et al. 2019): start at x + N(0, init_std^2), ascend KL(p(x) || p(x_adv))."""
    _check(eps, alpha, steps)
    x = x.detach()
    with torch.no_grad():
        p_nat = F.softmax(model(x).float(), dim=1)
    x_adv = project(x + init_std * torch.randn_like(x), x, eps)
    return _ascend(model, x, x_adv, p_nat, eps, alpha, steps, kl_loss)
