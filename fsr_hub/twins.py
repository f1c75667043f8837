"""FSR minus its vanilla twin, measured on the same test images.

A release ``fsr_<arch>.<tag>`` and its twin ``cifar_<arch>.<tag>`` (same recipe, no FSR) are compared per metric
on the first images both were evaluated on, from the per-example outcomes their ``results.json`` files keep. The
interval is the paired one: each image contributes d = (FSR correct) - (vanilla correct), and the 95 % interval
is 1.96 x the standard error of the mean of d, much tighter than two independent intervals.
"""
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .attack_registry import ENSEMBLE
from .autoattack import unpack_flags
from .models import VANILLA_TWINS
from .paper import METRIC_NAMES, METRICS
from .catalog import release_name, split_name

__all__ = ['twin_name', 'fsr_side', 'example_flags', 'paired_gap', 'twin_gaps', 'paper_gaps', 'gap_rows',
           'twin_section', 'check_twin_section']

_FSR_OF = {vanilla: fsr for fsr, vanilla in VANILLA_TWINS.items()}
#: what must agree for two evaluations to have used the same images in the same order
_SAME_DATA = ('dataset', 'split', 'seed')


def twin_name(name: str) -> Optional[str]:
    """The release name of ``name``'s twin: ``fsr_resnet18.x`` <-> ``cifar_resnet18.x``; None without one."""
    arch, tag = split_name(name)
    other = VANILLA_TWINS.get(arch) or _FSR_OF.get(arch)
    return release_name(other, tag) if other and tag else None


def fsr_side(name: str) -> bool:
    """True if ``name`` is the FSR member of a twin pair."""
    return split_name(name)[0] in VANILLA_TWINS


def example_flags(results: Mapping[str, Any], metric: str) -> Optional[torch.Tensor]:
    """Per-image correctness of ``metric`` (the first ``n`` test images) from a verify report, or None.

    The Ensemble is rebuilt from its attacks' outcomes on the first images all of them ran on, as the report
    computes it.
    """
    entry = (results.get('results') or {}).get(metric)
    if not isinstance(entry, dict):
        return None
    packed = results.get('per_example') or {}
    if metric == ENSEMBLE:
        parts = [example_flags(results, a) for a in entry.get('attacks') or ()]
        if not parts or any(p is None for p in parts):
            return None
        k = int(entry.get('n', min(len(p) for p in parts)))
        if any(len(p) < k for p in parts):
            return None
        return torch.stack([p[:k] for p in parts]).all(dim=0)
    if metric not in packed or not isinstance(entry.get('n'), int):
        return None
    try:
        return unpack_flags(packed[metric], entry['n'])
    except ValueError as e:
        raise ValueError(f'results.json: per-example outcomes of {metric!r} do not fit its n ({e}).') from None


def _check_same_images(a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    da, db = a.get('data') or {}, b.get('data') or {}
    differ = [k for k in _SAME_DATA if da.get(k) != db.get(k)]
    if differ or a.get('eps') != b.get('eps'):
        what = (', '.join(f'{k} {da.get(k)!r} vs {db.get(k)!r}' for k in differ)
                or f"eps {a.get('eps')} vs {b.get('eps')}")
        raise ValueError(f'The two evaluations did not use the same test images and threat model ({what}).')


def paired_gap(fsr: Mapping[str, Any], vanilla: Mapping[str, Any], metric: str) -> Optional[Dict[str, Any]]:
    """FSR minus vanilla accuracy for ``metric`` on the first images both evaluated, with its paired 95 % interval.

    Returns None where either report lacks the metric's per-example outcomes. Raises ValueError if the two reports
    used different test data or eps.
    """
    _check_same_images(fsr, vanilla)
    a, b = example_flags(fsr, metric), example_flags(vanilla, metric)
    if a is None or b is None:
        return None
    n = min(len(a), len(b))
    if n < 2:
        return None
    d = a[:n].double() - b[:n].double()
    ci = 1.96 * d.std(unbiased=True).item() / math.sqrt(n)
    total = int((fsr.get('data') or {}).get('n') or 0)
    return {'metric': metric, 'n': n, 'subset': f'all {n}' if n == total else f'first {n}',
            'fsr': round(100 * a[:n].double().mean().item(), 2),
            'vanilla': round(100 * b[:n].double().mean().item(), 2),
            'gap': round(100 * d.mean().item(), 2), 'ci95': round(100 * ci, 2)}


def twin_gaps(fsr: Mapping[str, Any], vanilla: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """:func:`paired_gap` of every metric of the paper's table that both reports can compare, in table order."""
    gaps = {m: paired_gap(fsr, vanilla, m) for m in METRICS}
    return {m: g for m, g in gaps.items() if g is not None}


def paper_gaps(fsr: Mapping[str, Any], vanilla: Mapping[str, Any]) -> Dict[str, float]:
    """The paper's FSR - vanilla gap of every metric it reports for both (from the two reports' paper references),
    in table order."""
    pf = (fsr.get('paper_reference') or {}).get('metrics') or {}
    pv = (vanilla.get('paper_reference') or {}).get('metrics') or {}
    return {m: round(pf[m] - pv[m], 2) for m in METRICS if m in pf and m in pv}


def gap_rows(fsr: Mapping[str, Any], vanilla: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """:func:`twin_gaps` as table rows, each with its display name and the paper's FSR - vanilla gap
    (:func:`paper_gaps`) where the paper has both numbers."""
    paper = paper_gaps(fsr, vanilla)
    return [{**g, 'name': METRIC_NAMES[m], 'paper_gap': paper.get(m)} for m, g in twin_gaps(fsr, vanilla).items()]



def _side(name: str, results: Mapping[str, Any]) -> Dict[str, Any]:
    training = results.get('training') or {}
    seconds = training.get('wall_clock_seconds')
    return {'name': name, 'sha256': (results.get('model') or {}).get('sha256'), 'epochs': training.get('epochs'),
            'training_hours': round(seconds / 3600, 2) if isinstance(seconds, (int, float)) else None,
            'training_hardware': (training.get('hardware') or {}).get('device')
            if isinstance(training.get('hardware'), dict) else training.get('hardware'),
            'command': training.get('command')}


def twin_section(a: Tuple[str, Mapping[str, Any]], b: Tuple[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """The ``twin`` section both releases of a pair store in results.json: who is who (name, weights sha256,
    epochs, training hours, command) and :func:`gap_rows`. ``a`` and ``b`` are ``(release name, report)`` in
    either order; ValueError unless they are twins of each other."""
    na, nb = a[0], b[0]
    if twin_name(na) != nb:
        raise ValueError(f'{na} and {nb} are not twins (the twin of {na} is {twin_name(na) or "none"}).')
    (nf, rf), (nv, rv) = (a, b) if fsr_side(na) else (b, a)
    return {'fsr': _side(nf, rf), 'vanilla': _side(nv, rv), 'rows': gap_rows(rf, rv),
            'rule': 'per metric, on the first test images both models were evaluated on; the 95 % interval is the '
                    'paired one (1.96 x the standard error of the per-image difference)'}


def check_twin_section(section: Mapping[str, Any], name: str, results: Mapping[str, Any]) -> None:
    """ValueError unless ``section`` was computed from ``results`` (release ``name``) as they are now: its sha256
    and, per row, this model's accuracy on the row's images."""
    side = 'fsr' if fsr_side(name) else 'vanilla'
    own = section.get(side) or {}
    if own.get('name') != name or own.get('sha256') != (results.get('model') or {}).get('sha256'):
        raise ValueError(f"the twin comparison was made for {own.get('name')} (sha256 {own.get('sha256')}), not these "
                         'weights: attach it again.')
    for row in section.get('rows') or ():
        flags = example_flags(results, row['metric'])
        if (flags is None or len(flags) < row['n']
                or round(100 * flags[:row['n']].double().mean().item(), 2) != row[side]):
            raise ValueError(f"the twin comparison's {row['metric']} no longer matches this report: attach it again.")
