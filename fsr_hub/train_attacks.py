"""The training attacks by name (``--attack``): PGD (the paper's), FGSM-RS (Wong et al. 2020) and N-FGSM (de Jorge
et al. 2022), with their default steps and step sizes, and which objectives each one serves.

- ``pgd``: ``steps`` sign steps of ``alpha`` from a uniform random start, projected to the eps-ball and [0, 1].
- ``fgsm-rs``: start U(-eps, eps), one step of alpha = 1.25 eps, projected to the eps-ball and [0, 1].
- ``n-fgsm``: noise U(-2 eps, 2 eps), one step of alpha = eps, NOT projected to the eps-ball (only clamped to
  [0, 1]): the perturbation may reach 3 eps, as in the paper.

TRADES keeps its own inner maximisation (KL ascent from x + N(0, 0.001^2)), which is PGD only: a single KL step
from there has a near-zero gradient, so TRADES refuses the single-step attacks. MART's attack is cross-entropy
PGD, so it takes all three. Natural training has no attack.
"""
from typing import Optional

import torch
import torch.nn as nn

from .attacks import ce_loss, pgd
from .paper import ADML_PGD_STEP

__all__ = ['TRAIN_ATTACKS', 'SINGLE_STEP', 'default_alpha', 'check_attack', 'n_fgsm', 'training_attack']

TRAIN_ATTACKS = ('pgd', 'fgsm-rs', 'n-fgsm')
SINGLE_STEP = ('fgsm-rs', 'n-fgsm')


def default_alpha(attack: str, eps: float, svhn: bool = False, adml: bool = False) -> float:
    """The attack's step: PGD eps/4 (SVHN eps/8, the paper; ADML fine-tuning :data:`ADML_PGD_STEP` scaled by
    eps / (8/255)), FGSM-RS 1.25 eps, N-FGSM eps."""
    if attack == 'pgd' and adml:
        return ADML_PGD_STEP if eps == 8 / 255 else ADML_PGD_STEP * eps / (8 / 255)
    return {'pgd': eps / (8 if svhn else 4), 'fgsm-rs': 1.25 * eps, 'n-fgsm': eps}[attack]


def check_attack(attack: str, objective: str, steps: Optional[int], random_start: bool) -> None:
    """ValueError (one line) for an unknown attack or a combination that has no meaning."""
    if attack not in TRAIN_ATTACKS:
        raise ValueError(f'Unknown attack {attack!r}; expected one of {", ".join(TRAIN_ATTACKS)}.')
    if attack == 'pgd':
        return
    if objective == 'natural':
        raise ValueError(f'--attack {attack} with --objective natural: natural training has no attack.')
    if objective == 'trades':
        raise ValueError(f'--attack {attack} with --objective trades: TRADES starts its KL ascent at the clean point '
                         f'(zero gradient), so one step is no attack; use --attack pgd, or --objective at / mart.')
    if steps is not None and steps != 1:
        raise ValueError(f'--attack {attack} takes one step; --steps {steps} is for --attack pgd.')
    if not random_start:
        raise ValueError(f'--attack {attack} starts from random noise by definition; --no-random-start is for pgd.')


def n_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
           noise: Optional[float] = None) -> torch.Tensor:
    """N-FGSM: x + U(-noise, noise) (default 2 eps) clamped to [0, 1], one sign step of ``alpha`` on the summed
    cross-entropy, clamped to [0, 1] only (no projection to the eps-ball)."""
    noise = 2 * eps if noise is None else noise
    x = x.detach()
    start = (x + torch.empty_like(x).uniform_(-noise, noise)).clamp_(0.0, 1.0).requires_grad_(True)
    with torch.enable_grad():
        grad, = torch.autograd.grad(ce_loss(model(start), y), start)
    return (start.detach() + alpha * grad.sign()).clamp_(0.0, 1.0)


def training_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, eps: float, alpha: float,
                    steps: int, random_start: bool = True) -> torch.Tensor:
    """Adversarial examples of the named training attack (the caller sets the model's mode and autocast)."""
    if attack == 'pgd':
        return pgd(model, x, y, eps, alpha, steps, random_start=random_start)
    if attack == 'fgsm-rs':
        return pgd(model, x, y, eps, alpha, 1, random_start=True)
    if attack == 'n-fgsm':
        return n_fgsm(model, x, y, eps, alpha)
    raise ValueError(f'Unknown attack {attack!r}; expected one of {", ".join(TRAIN_ATTACKS)}.')
