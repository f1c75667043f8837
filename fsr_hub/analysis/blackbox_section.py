"""Table 3's black-box attacks on a target model as an analysis section: TI-FGSM and DI-FGSM crafted on a source
model and transferred, and the query-based NAttack (:mod:`fsr_hub.blackbox`).

They are measured by the verify suite itself (:func:`fsr_hub.evaluate.evaluate`, attacks ``ti_fgsm``,
``di_fgsm``, ``nattack``): the same code, parameters and report entries as ``tools/verify.py --blackbox``, so a
number here and in a verify report mean the same. Accuracy is over all images the attack ran on: an image the
target already misclassifies counts as broken. Each entry records its parameters, its subset, and for the
transfer attacks the source and the source's own accuracy on the crafted images (the attack works on the source).
"""
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from ..attack_registry import BLACKBOX_ATTACKS, CLEAN, NATTACK, NATTACK_N, SOURCE_ATTACKS
from ..evaluate import evaluate
from ..inputs import check_pixels
from .common import AnalysisError, Deadline, prepare

__all__ = ['blackbox_analysis']


def blackbox_analysis(
        target: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str] = BLACKBOX_ATTACKS,
        source: Optional[nn.Module] = None, source_name: Optional[str] = None, eps: float = 8 / 255,
        batch_size: int = 500, nattack_n: Optional[int] = NATTACK_N, device: Any = 'cpu', seed: int = 0,
        num_classes: int = 10, deadline: Optional[Deadline] = None, progress: bool = False, **nattack_params: Any,
) -> Dict[str, Any]:
    """Table 3's black-box columns for ``target`` (and its clean accuracy): each of ``attacks`` on (x, y), NAttack
    on the first ``nattack_n`` images (the paper: 1,000; None: all). ``nattack_params`` override NAttack's
    parameters (e.g. ``max_queries``). Stops at the ``deadline`` (the section then lists what did not run)."""
    bad = [a for a in attacks if a not in BLACKBOX_ATTACKS]
    if bad or not attacks:
        raise AnalysisError(f'unknown black-box attack(s) {bad or attacks!r}; choose from {BLACKBOX_ATTACKS}.')
    if any(a in SOURCE_ATTACKS for a in attacks) and source is None:
        raise AnalysisError('TI-FGSM / DI-FGSM need a source model (--source MODEL:WEIGHTS).')
    check_pixels(x, 'black-box attack images')
    deadline = deadline or Deadline()
    target = prepare(target, device)
    names = (CLEAN,) + tuple(attacks)
    minutes = None if deadline.seconds is None else deadline.left() / 60
    if minutes is not None and minutes <= 0:
        deadline.stopped = True
        ev: Dict[str, Any] = {'results': {}, 'not_run': {a: 'deadline: no time left' for a in names}}
    else:
        with deadline.unit():
            ev = evaluate(target, x, y, attacks=names, eps=eps, batch_size=batch_size, device=device, seed=seed,
                          num_classes=num_classes, transfer_model=source, transfer_source=source_name,
                          masking_checks=False, progress=progress,
                          subsets={NATTACK: len(y) if nattack_n is None else nattack_n}, deadline_minutes=minutes,
                          attack_overrides={NATTACK: nattack_params} if nattack_params else None)
        deadline.stopped = deadline.stopped or not ev['complete']
    results = {a: ev['results'][a] for a in names if a in ev['results']}
    return {
        'attacks': list(attacks), 'eps': eps, 'n': len(y), 'source': source_name,
        'accuracy': {a: r['accuracy'] for a, r in results.items()}, 'results': results, 'not_run': ev['not_run'],
        'evaluation': 'fsr_hub.evaluate.evaluate (the verify suite, as tools/verify.py --blackbox)',
    }
