"""The measured metrics of a verify report as the model card shows them: one row per metric (its accuracy, the
images it was measured on, the 95 % interval, the paper's number) and each attack's protocol in words.
"""
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import paper
from .attack_registry import ATTACKS, AUTOATTACK_VERSIONS, DISPLAY_NAMES, ENSEMBLE, NATTACK, SOURCE_ATTACKS, names
from .schemas import stage_progress

__all__ = ['PER_CLASS_METRICS', 'ci95', 'metric_sample', 'autoattack_protocol', 'describe_attack', 'format_number',
           'eps_255', 'in_progress', 'metric_rows']

#: PER_CLASS_METRICS: the metrics the per-class section shows per class (:mod:`fsr_hub.card_plots`);
#: _EXTRA_METRICS: those the card's table shows after the paper's (:data:`fsr_hub.paper.METRICS`) when measured
PER_CLASS_METRICS = names(lambda a: a.per_class)
_EXTRA_METRICS = {a: DISPLAY_NAMES[a] for a in ATTACKS if a not in paper.METRICS}


def ci95(accuracy: float, n: int) -> float:
    """Half-width (points) of the normal-approximation 95 % interval of an accuracy (%) measured on n images."""
    p = accuracy / 100
    return round(196 * (p * (1 - p) / n) ** 0.5, 2)


def metric_sample(entry: Mapping[str, Any], data: Mapping[str, Any]) -> Tuple[Optional[int], bool]:
    """(images a metric was measured on, whether they are the whole split): the entry's own ``n`` / ``subset``
    (each attack may run on the first n of the report's images), else the report's ``data``."""
    n = entry.get('n', data.get('n'))
    subset = entry.get('subset')
    whole = data.get('subset') == 'all' and (n == data.get('n')) and (subset is None or str(subset).startswith('all'))
    return (n if isinstance(n, int) else None), whole


def autoattack_protocol(key: str, entry: Mapping[str, Any], eps: Any) -> str:
    from .autoattack import AA_KEYS, departures

    version = AA_KEYS[key]
    off = departures(entry.get('params'), version, eps) if isinstance(eps, (int, float)) else ['eps not recorded']
    subs = ', '.join((entry.get('params') or {}).get('attacks') or []) or 'sub-attacks not recorded'
    what = f'{version} version ({subs})' if not off else f'NOT the original {version} version: {"; ".join(off)}'
    return f"{what}; {entry.get('implementation', 'implementation not recorded')}"


def describe_attack(key: str, entry: Mapping[str, Any], eps: Any = None) -> str:
    """Short protocol of one verify-report attack entry, e.g. ``'20 steps, step eps/10, no random start'``, with
    the source of a transfer attack and the subset when the attack ran on the first n images only."""
    p = entry.get('params') or {}
    if key == ENSEMBLE:
        attacks = entry.get('attacks') or []
        return f"per example: correct under all of {', '.join(attacks)}" if attacks else ''
    bits = []
    if key in AUTOATTACK_VERSIONS:
        bits.append(autoattack_protocol(key, entry, p.get('eps', eps)))
    elif key == NATTACK:
        q = p.get('max_queries')
        bits.append(f"at most {q:,} queries per image" if isinstance(q, int) else 'queries not recorded')
        bits.extend(f'{k} {p[k]}' for k in ('npop', 'sigma', 'lr') if k in p)
    else:
        if 'steps' in p:
            bits.append(f"{p['steps']} step{'s' if p['steps'] != 1 else ''}")
        numbers = all(isinstance(p.get(k), (int, float)) for k in ('alpha', 'eps'))
        if numbers and p['eps'] and p['alpha']:
            ratio = round(p['eps'] / p['alpha'])
            bits.append('step eps' if ratio == 1 else f'step eps/{ratio}')
        if 'random_start' in p:
            bits.append('random start' if p['random_start'] else 'no random start')
        if 'kappa' in p:
            bits.append(f"kappa {p['kappa']}")
        if 'kern_len' in p:
            bits.append(f"Gaussian kernel {p['kern_len']}x{p['kern_len']}")
        if 'diversity_prob' in p:
            bits.append(f"resize-and-pad with probability {p['diversity_prob']}")
    text = ', '.join(bits)
    if key in SOURCE_ATTACKS:
        text = f"source: {entry.get('source', 'unknown')}; {text}"
    subset = entry.get('subset')
    if isinstance(subset, str) and subset.startswith('first'):
        text += f'; {subset} images'
    return text


def format_number(v: Any, nd: int = 2) -> str:
    return f'{v:.{nd}f}' if isinstance(v, (int, float)) and not isinstance(v, bool) else 'not measured'


def eps_255(eps: Any) -> str:
    return f'{round(eps * 255)}/255' if isinstance(eps, (int, float)) else 'unknown'


def in_progress(results: Mapping[str, Any], key: str) -> str:
    """What a metric that has no result yet has run so far ('' if nothing): a stage stopped at a deadline or still
    running saves its progress in the report, and the card says how far it got instead of only "not measured"."""
    progress = stage_progress(results, key)
    return f'in progress, no result until it completes: {progress}' if progress else ''


def metric_rows(results: Mapping[str, Any]) -> List[Dict[str, Any]]:
    measured, data = results['results'], results['data']
    ref = results.get('paper_reference') or {}
    pm, ps = ref.get('metrics') or {}, ref.get('sources') or {}
    keys = list(paper.METRICS) + [k for k in _EXTRA_METRICS if k in measured]
    rows = []
    for k in keys:
        entry = measured.get(k) or {}
        n, whole = metric_sample(entry, data)
        ours = entry.get('accuracy')
        rows.append(dict(key=k, name=paper.METRIC_NAMES.get(k) or _EXTRA_METRICS[k], ours=ours, n=n, whole=whole,
                         ci=ci95(ours, n) if ours is not None and n else None, paper=pm.get(k), source=ps.get(k, '-'),
                         protocol=describe_attack(k, entry, results.get('eps')) if k in measured else
                         in_progress(results, k)))
    return rows
