"""Robustness-vs-eps curves: PGD-20 accuracy (step eps/10, no random start) for eps in
:data:`EPS_CURVE_255` / 255, measured through :func:`fsr_hub.evaluate.evaluate` (the code of
``tools/verify.py``), one call per eps."""
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from ..attack_registry import CLEAN, PGD20
from ..evaluate import evaluate
from ..inputs import check_pixels
from .common import AnalysisError, Deadline, prepare

__all__ = ['EPS_CURVE_255', 'eps_curve']

EPS_CURVE_255 = (0, 1, 2, 4, 6, 8, 10, 12, 16)


def eps_curve(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_255: Sequence[float] = EPS_CURVE_255,
        batch_size: int = 500, device: Any = 'cpu', seed: int = 0, num_classes: int = 10,
        deadline: Optional[Deadline] = None, progress: bool = False,
) -> Dict[str, Any]:
    """PGD-20 accuracy (%) at each eps (in 1/255 units); one eps is one deadline unit. Works for FSR models and
    vanilla twins alike."""
    if not eps_255 or any(e < 0 or e > 255 for e in eps_255):
        raise AnalysisError(f'eps values must lie in [0, 255] (units of 1/255), got {list(eps_255)}.')
    check_pixels(x, 'eps-curve images')
    deadline = deadline or Deadline()
    model = prepare(model, device)
    done, accuracy = [], []
    for e in eps_255:
        if not deadline.allows_next():
            break
        attack = PGD20 if e > 0 else CLEAN  # PGD with eps 0 returns x: skip its 20 gradient steps
        with deadline.unit():
            ev = evaluate(model, x, y, attacks=(attack,), eps=e / 255, batch_size=batch_size, device=device,
                          seed=seed, num_classes=num_classes, masking_checks=False, progress=progress)
        done.append(e)
        accuracy.append(ev['results'][attack]['accuracy'])
    return {'eps_255': done, 'accuracy': accuracy, 'n': len(y),
            'attack': {'attack': PGD20, 'alpha': 'eps/10', 'steps': 20, 'random_start': False, 'eps_0': CLEAN},
            'evaluation': 'fsr_hub.evaluate.evaluate, one call per eps'}
