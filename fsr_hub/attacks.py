"""White-box L-inf attacks of the paper's suite (Sec. 4.1) on raw [0, 1] inputs.

Every attack returns ``x_adv`` with ``||x_adv - x||_inf <= eps`` and ``0 <= x_adv <= 1``. Attacks do not
change the model's mode: evaluate with ``model.eval()`` (deterministic FSR masks).
"""
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['ce_loss', 'cw_margin_loss', 'pgd', 'fgsm', 'project']

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction='sum')


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """C&W-inf margin loss as in the original FSR code: sum over the batch of clamp(max_wrong - true, min=-kappa)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], float('-inf')).amax(dim=1)
    return torch.clamp(wrong - true, min=-kappa).sum()


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip to the eps-ball around x and to the [0, 1] image box."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


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
    """Projected gradient ascent on ``loss_fn`` (sign steps of size ``alpha``)."""
    x = x.detach()
    x_adv = x.clone()
    if random_start:
        x_adv = project(x_adv + torch.empty_like(x).uniform_(-eps, eps), x, eps)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(x_adv), y)
            grad, = torch.autograd.grad(loss, x_adv)
        x_adv = project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps from x (no random start)."""
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1)
