"""Robustness evaluation as the ``fsr-hub/verify/v1`` report: the paper's white-box suite (Sec. 4.1), AutoAttack,
transfer attacks, the black-box attacks of its Table 3, and gradient-masking checks (Carlini et al. 2019).

The attacks, their parameters and their run order are declared in :mod:`fsr_hub.attack_registry`. The parts:
:mod:`.config` (the request and the presets), :mod:`.measure` (accuracies, the deadline clock, the batch loop),
:mod:`.stages` (one function per kind of stage), :mod:`.checks` (masking and cross checks), :mod:`.runner` (the
state of one evaluation and its snapshots) and :mod:`.report` (the report around it).
"""
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ..attack_registry import (
    ATTACKS, DEFAULT_ATTACKS, DEFAULT_SUBSETS, ENSEMBLE_ATTACKS, MASKING, SOURCE_ATTACKS, STAGE_ORDER,
    WHITEBOX_REFERENCE,
)
from .checks import BLACKBOX_TOL, EPS_SWEEP_255, STEPS_SWEEP, UNBOUNDED, ZERO_TOL
from .config import PRESETS, EvalConfig, attack_params, check_request, parse_attacks, preset
from .report import SCHEMA, build_report, model_info, training_section
from .runner import PENDING, run_evaluation
from .stages import NATTACK_BATCH

__all__ = [
    'SCHEMA', 'ATTACKS', 'DEFAULT_ATTACKS', 'ENSEMBLE_ATTACKS', 'SOURCE_ATTACKS', 'STAGE_ORDER', 'DEFAULT_SUBSETS',
    'PRESETS', 'STEPS_SWEEP', 'EPS_SWEEP_255', 'BLACKBOX_TOL', 'attack_params', 'preset',
    'evaluate', 'model_info', 'build_report', 'parse_attacks', 'training_section',
]


def evaluate(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        attacks: Sequence[str] = DEFAULT_ATTACKS,
        eps: float = 8 / 255,
        batch_size: int = 500,
        device: Any = 'cpu',
        seed: int = 0,
        num_classes: int = 10,
        transfer_model: Optional[nn.Module] = None,
        transfer_source: Optional[str] = None,
        masking_checks: bool = True,
        masking_n: Optional[int] = 1000,
        progress: bool = True,
        subsets: Optional[Mapping[str, int]] = None,
        deadline_minutes: Optional[float] = None,
        previous: Optional[Mapping[str, Any]] = None,
        on_update: Optional[Callable[[Dict[str, Any]], None]] = None,
        attack_overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
        channels_last: bool = False,
) -> Dict[str, Any]:
    """Run ``attacks`` on (x float [0, 1] NCHW, y) and the masking checks, cheapest first (:data:`STAGE_ORDER`),
    in strict float32 (no autocast, float32 weights, TF32 off).

    ``transfer_model``: the source the transfer attacks are crafted on (named ``transfer_source`` in the report).
    ``subsets``: {attack: n} runs that attack on the first n images only (over :data:`DEFAULT_SUBSETS`: NAttack on
    the paper's first 1,000). ``deadline_minutes``: wall-clock limit from the call (stages that do not fit are
    skipped, a stage that runs out is stopped; AutoAttack and NAttack keep their progress and start whenever one
    batch fits, the masking checks whenever one part does). ``previous``: an earlier evaluation (or report) of the
    same weights and data to continue (a result measured with other parameters, another subset or another source
    is measured again). ``on_update(evaluation)`` runs after each stage, AutoAttack / NAttack batch and
    masking-check part, so a caller can write a valid partial report at any moment. ``attack_overrides``:
    {black-box attack: parameters} over the defaults of :func:`attack_params`. ``channels_last``: run the models'
    weights in channels_last memory (still float32; faster convolutions on some CPUs, rounding differs in the last
    bits); the report's ``precision`` names the format, and the models are back in contiguous memory afterwards.
    Returns the report's ``results``, ``masking_checks``, ``timing``, ``precision``, ``per_example``,
    ``not_run`` (what was not run and why), ``progress`` and ``complete``.
    """
    overrides, subsets = check_request(attacks, x, y, eps, transfer_model, attack_overrides, subsets,
                                       deadline_minutes)
    config = EvalConfig(
        attacks=tuple(attacks), eps=eps, batch_size=batch_size, device=torch.device(device), seed=seed,
        num_classes=num_classes, transfer_source=transfer_source, masking_checks=masking_checks, masking_n=masking_n,
        progress=progress, subsets=subsets, deadline_minutes=deadline_minutes, overrides=overrides,
        channels_last=channels_last)
    return run_evaluation(model, x, y, config, transfer_model, previous, on_update)
