"""FSR objectives (paper Eq. 3-5), usable from any training loop."""
from typing import Mapping, Optional

import torch
import torch.nn.functional as F

from .fsr import FSRAux

__all__ = ['highest_wrong_class', 'separation_loss', 'recalibration_loss', 'fsr_aux_loss']


def highest_wrong_class(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """y' of Eq. 3: the wrong class with the highest score in ``logits`` (the model's final output)."""
    masked = logits.detach().scatter(1, target[:, None], float('-inf'))
    return masked.argmax(dim=1)


def separation_loss(aux: FSRAux, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_sep = CE(p+, y) + CE(p-, y') (Eq. 3), batch mean."""
    if aux.logits_pos is None or aux.logits_neg is None:
        raise ValueError('separation_loss needs an FSR module with its Separation stage enabled.')
    wrong = highest_wrong_class(logits, target)
    return F.cross_entropy(aux.logits_pos, target) + F.cross_entropy(aux.logits_neg, wrong)


def recalibration_loss(aux: FSRAux, target: torch.Tensor) -> torch.Tensor:
    """L_rec = CE(p~-, y) (Eq. 4), batch mean."""
    if aux.logits_rec is None:
        raise ValueError('recalibration_loss needs an FSR module with its Recalibration stage enabled.')
    return F.cross_entropy(aux.logits_rec, target)


def fsr_aux_loss(
        aux: Mapping[str, FSRAux],
        logits: torch.Tensor,
        target: torch.Tensor,
        lambda_sep: float = 1.0,
        lambda_rec: float = 1.0,
) -> torch.Tensor:
    """(1/|L|) * sum over FSR positions of (lambda_sep * L_sep + lambda_rec * L_rec): Eq. 5 without L_cls.

    Stages that a module has disabled contribute nothing. Returns 0 for a model without FSR.
    """
    if not aux:
        return logits.new_zeros(())
    total: Optional[torch.Tensor] = None
    for a in aux.values():
        term = logits.new_zeros(())
        if a.logits_pos is not None:
            term = term + lambda_sep * separation_loss(a, logits, target)
        if a.logits_rec is not None:
            term = term + lambda_rec * recalibration_loss(a, target)
        total = term if total is None else total + term
    return total / len(aux)
