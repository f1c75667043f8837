"""What one :func:`~fsr_hub.evaluate.evaluate` call runs: :class:`EvalConfig`, the presets, and the checks of a
request before anything runs."""
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..attack_registry import (
    ATTACKS, AUTOATTACK, AUTOATTACK_RAND, BLACKBOX_ATTACKS, CW, DEFAULT_ATTACKS, DEFAULT_SUBSETS, ENSEMBLE_ATTACKS,
    FGSM, MASKING, PGD20, PGD100, SOURCE_ATTACKS, SPECS, STAGE_ORDER, TRANSFER, names,
)
from ..blackbox import require_torchattack
from ..inputs import check_pixels

__all__ = ['EvalConfig', 'PRESETS', 'TORCHATTACK_ATTACKS', 'parse_attacks', 'preset', 'attack_params',
           'check_request']

#: the attacks that run torchattack's implementations (TI-FGSM, DI-FGSM)
TORCHATTACK_ATTACKS = names(lambda a: a.blackbox and a.source)

#: the white-box table: the Ensemble's attacks and AutoAttack
_TABLE_ATTACKS = ENSEMBLE_ATTACKS + (AUTOATTACK,)
#: preset -> (attacks, {attack: first-n subset}, masking checks on?)
PRESETS: Dict[str, Tuple[Tuple[str, ...], Dict[str, int], bool]] = {
    'quick': (_TABLE_ATTACKS, {AUTOATTACK: 1000}, False),
    # a rented GPU's share of a lease: the release floors' clean and PGD-20 (and FGSM) on all images, the slow
    # attacks on the first 1,000 (the full verification of a later lease re-measures them on all images)
    'lease': (_TABLE_ATTACKS, {CW: 1000, PGD100: 1000, AUTOATTACK: 1000}, False),
    'full': (DEFAULT_ATTACKS, {AUTOATTACK_RAND: 1000}, True),
    # a CPU run: clean on all images, the rest on first-n subsets; AutoAttack resumes across runs (--resume)
    'cpu': (_TABLE_ATTACKS, {FGSM: 2000, PGD20: 2000, CW: 2000, PGD100: 1000, AUTOATTACK: 1000}, True),
}


def parse_attacks(spec: str) -> Tuple[str, ...]:
    """'clean,pgd20' -> ('clean', 'pgd20'); 'all' -> every attack; unknown names raise ValueError."""
    chosen = ATTACKS if spec.strip() == 'all' else tuple(s.strip() for s in spec.split(',') if s.strip())
    bad = [n for n in chosen if n not in ATTACKS]
    if bad or not chosen:
        raise ValueError(f'Unknown attack(s) {bad or spec!r}; choose from {", ".join(ATTACKS)} (or "all").')
    return chosen


def preset(name: str, transfer: bool = False,
           blackbox: bool = False) -> Tuple[Tuple[str, ...], Dict[str, int], bool]:
    """(attacks, subsets, masking checks) of a preset; ``transfer`` adds the transfer attack (a source exists),
    ``blackbox`` the black-box attacks TI-FGSM, DI-FGSM (these need the source too) and NAttack."""
    if name not in PRESETS:
        raise ValueError(f'Unknown preset {name!r}; choose from {", ".join(PRESETS)}.')
    attacks, subsets, masking = PRESETS[name]
    extra = ((TRANSFER,) if transfer else ()) + (BLACKBOX_ATTACKS if blackbox else ())
    return attacks + extra, dict(subsets), masking


def attack_params(name: str, eps: float, overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The parameters an attack runs with (recorded in the report; AutoAttack records its own, see
    :mod:`fsr_hub.autoattack`), as :mod:`fsr_hub.attack_registry` declares them. ``overrides`` changes a black-box
    attack's parameters (e.g. NAttack's ``max_queries``); the white-box suite's are fixed by their names."""
    if name in SPECS:
        return SPECS[name].params_at(eps, overrides)
    if overrides:
        raise ValueError(f'{name}: only the black-box attacks ({", ".join(BLACKBOX_ATTACKS)}) take parameter '
                         f'overrides.')
    return {}


@dataclass(frozen=True)
class EvalConfig:
    """The settings of one evaluation (see :func:`fsr_hub.evaluate.evaluate` for each)."""
    attacks: Tuple[str, ...]
    eps: float
    batch_size: int
    device: torch.device
    seed: int
    num_classes: int
    transfer_source: Optional[str]
    masking_checks: bool
    masking_n: Optional[int]
    progress: bool
    subsets: Mapping[str, int]  # over DEFAULT_SUBSETS
    deadline_minutes: Optional[float]
    overrides: Mapping[str, Mapping[str, Any]]
    channels_last: bool = False

    @property
    def stages(self) -> Tuple[str, ...]:
        """The stages to run, cheapest first."""
        return tuple(s for s in STAGE_ORDER if s in self.attacks or (s == MASKING and self.masking_checks))

    @property
    def source(self) -> str:
        """The source model's name, as the entries of the transfer attacks record it."""
        return self.transfer_source or 'unnamed source model'

    def n_images(self, stage: str, total: int) -> int:
        """Images ``stage`` runs on: the first n of ``total``."""
        if stage == MASKING:
            return total if self.masking_n is None else min(self.masking_n, total)
        return min(self.subsets.get(stage, total), total)

    def params(self, name: str) -> Dict[str, Any]:
        """:func:`attack_params` of ``name`` with this evaluation's overrides."""
        return attack_params(name, self.eps, self.overrides.get(name))


def check_request(
        attacks: Sequence[str], x: torch.Tensor, y: torch.Tensor, eps: float, transfer_model: Optional[nn.Module],
        overrides: Optional[Mapping[str, Mapping[str, Any]]], subsets: Optional[Mapping[str, int]],
        deadline_minutes: Optional[float],
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, int]]:
    """ValueError for a request that cannot run; else its overrides and its subsets (over
    :data:`DEFAULT_SUBSETS`)."""
    for a in attacks:
        if a not in ATTACKS:
            raise ValueError(f'Unknown attack {a!r}; choose from {ATTACKS}.')
    needs_source = [a for a in SOURCE_ATTACKS if a in attacks]
    if needs_source and transfer_model is None:
        raise ValueError(f"attack(s) {', '.join(needs_source)} need a source model (--transfer-from MODEL:WEIGHTS).")
    checked = {a: dict(o) for a, o in (overrides or {}).items()}
    for a, o in checked.items():
        if a not in ATTACKS:
            raise ValueError(f'attack_overrides: unknown attack {a!r}.')
        attack_params(a, eps, o)  # raises for unknown parameters
    if any(a in TORCHATTACK_ATTACKS for a in attacks):
        require_torchattack()
    if x.ndim != 4 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f'evaluate needs a non-empty NCHW batch and as many labels, got {tuple(x.shape)}, '
                         f'{tuple(y.shape)}.')
    check_pixels(x, 'evaluation images')
    if deadline_minutes is not None and deadline_minutes <= 0:
        raise ValueError(f'deadline_minutes must be positive, got {deadline_minutes}.')
    merged = {**DEFAULT_SUBSETS, **(subsets or {})}
    for a, k in merged.items():
        if a not in ATTACKS or int(k) <= 0:
            raise ValueError(f'subsets: {a}={k} must name an attack and a positive image count.')
    return checked, merged
