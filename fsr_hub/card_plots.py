"""The figure sections of a model card, each with the table of the numbers it plots: the analysis plots of
``tools/analyze.py`` (:data:`PLOTS`) and the per-class accuracy (:func:`per_class_section`, its figure
:data:`PER_CLASS_PNG`). The card shows a section only when the release folder holds its figure.
"""
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from . import paper
from .card_metrics import PER_CLASS_METRICS, format_number, metric_sample
from .models import CIFAR10_CLASSES
from .catalog import release_name

__all__ = ['PLOTS', 'PLOT_DETAILS', 'PER_CLASS_PNG', 'plot_sections', 'per_class_section', 'write_per_class_plot',
           'shown_per_class_section']

#: results.json ``analysis`` key -> (PNG file, FSR models only, title). The entry is the section
#: ``tools/analyze.py`` wrote (:mod:`fsr_hub.analysis`): the numbers the PNG plots, ``{'eps_255': [...],
#: 'accuracy': [...]}`` (a curve) or ``{'accuracy': {row: {column: value}}}`` (a table), the fields of
#: :data:`PLOT_DETAILS`, and ``model.sha256``, ``data``, ``hardware``, ``seconds``, ``complete``, ``command``. The
#: card shows it only when it is complete and measured on the released weights; another ``sha256`` is refused.
PLOTS: Dict[str, Tuple[str, bool, str]] = {
    'eps_curve': ('eps_curve.png', False, 'Robust accuracy vs eps'),
    'feature_swap': ('feature_swap.png', True, 'Feature swap (paper Table 5a)'),
    'knn': ('knn.png', True, 'Weighted k-NN on the separated features (paper Table 5b)'),
    'gradcam': ('gradcam.png', True, 'Grad-CAM attention maps (paper Fig. 1)'),
    'ib_split': ('ib_split.png', False, 'Robust and non-robust feature units by Information Bottleneck '
                                        '(Kim et al., NeurIPS 2021)'),
    'ib_attack': ('ib_attack.png', False, 'NRF / RF feature attacks, L2 (Kim et al., NeurIPS 2021; not the '
                                          'L-inf threat model of the table above)'),
}
#: the section fields listed under each plot, after its table
PLOT_DETAILS: Dict[str, Tuple[str, ...]] = {
    'eps_curve': ('n', 'attack'),
    'feature_swap': ('n', 'eps', 'position', 'attacks'),
    'knn': ('n_test', 'n_train', 'ks', 'gamma', 'gamma_source', 'pool', 'eps', 'query_attack'),
    'gradcam': ('n', 'eps', 'position', 'columns', 'target'),
    'ib_split': ('n', 'batches', 'stage', 'stage_choice', 'split', 'inversion'),
    'ib_attack': ('n', 'batches', 'stage', 'threat_model', 'attack'),
}
#: the per-class section's figure (written by :func:`write_per_class_plot`; the card shows the section when the
#: release folder holds it); the metrics it shows per class: :data:`fsr_hub.card_metrics.PER_CLASS_METRICS`
PER_CLASS_PNG = 'per_class.png'


def _cell(v: Any) -> str:
    """A number of a section's own table, 4 significant digits (percentages, L2 distances, mask means); None is a
    quantity with nothing to average (e.g. the L2 of an attack that never succeeded): n/a."""
    return f'{v:.4g}' if isinstance(v, (int, float)) and not isinstance(v, bool) else 'n/a'


def _plot_table(key: str, entry: Mapping[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """The numbers a plot shows: the section's own ``table`` (``header`` and ``rows``, each row a name and its
    numbers) where it has one, else a curve as one row, or a table with its rows named by the section's ``labels``
    (f~, f+, ...) and its columns by attack (feature swap) or k (k-NN)."""
    acc, table = entry.get('accuracy'), entry.get('table')
    if isinstance(table, dict) and isinstance(table.get('header'), list) and isinstance(table.get('rows'), list):
        return [str(h) for h in table['header']], [[str(r[0])] + [_cell(v) for v in r[1:]] for r in table['rows']]
    if isinstance(acc, list) and isinstance(entry.get('eps_255'), list):
        return (['eps'] + [f'{e:g}/255' for e in entry['eps_255']],
                [['accuracy (%)'] + [format_number(a) for a in acc]])
    if isinstance(acc, dict) and all(isinstance(r, dict) for r in acc.values()):
        labels = entry.get('labels') if isinstance(entry.get('labels'), dict) else {}
        columns = list(dict.fromkeys(c for r in acc.values() for c in r))
        names = [f'{c}-NN' if key == 'knn' else paper.METRIC_NAMES.get(c, str(c)) for c in columns]
        return [''] + names, [[str(labels.get(k, k))] + [format_number(r.get(c)) for c in columns]
                              for k, r in acc.items()]
    return [], []


def _detail(key: str, value: Any) -> str:
    if key in ('eps', 'alpha') and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'{value * 255:.4g}/255'
    if isinstance(value, list):
        return ', '.join(_detail(key, v) for v in value)
    if isinstance(value, dict):
        return ', '.join(f'{k} {_detail(k, v)}' for k, v in value.items())
    return str(value)


def _measured(entry: Mapping[str, Any]) -> Optional[str]:
    data, hw = entry.get('data') or {}, entry.get('hardware') or {}
    if not isinstance(data, dict) or not isinstance(hw, dict):
        return None
    where = ' '.join(str(data[k]) for k in ('dataset', 'split') if data.get(k))
    if data.get('n') is not None:
        where += f" (n = {data['n']}" + (f", {data['source']})" if data.get('source') else ')')
    secs = entry.get('seconds')
    took = f"{hw.get('device', 'unknown device')}" + (f', {secs:.1f} s' if isinstance(secs, (int, float)) else '')
    return ', '.join(x for x in (where.strip(), took) if x)


def plot_sections(results: Mapping[str, Any], config: Mapping[str, Any],
                  folder: Optional[Path]) -> List[Dict[str, Any]]:
    """The plots the card shows: PNG in the folder, its complete section in results.json measured on these weights
    (``model.sha256``), FSR plots for FSR models only."""
    has_fsr = bool(config.get('model_args', {}).get('fsr_positions'))
    sha = results['model'].get('sha256')
    out = []
    for key, (file, fsr_only, title) in PLOTS.items():
        entry = (results.get('analysis') or {}).get(key)
        if folder is None or not (folder / file).is_file() or not isinstance(entry, dict) or (fsr_only and not has_fsr):
            continue
        if entry.get('complete') is False or (entry.get('model') or {}).get('sha256') != sha:
            continue  # a partial analysis, or one that does not say it was measured on these weights
        details = [(k, _detail(k, entry[k])) for k in PLOT_DETAILS[key] if entry.get(k) is not None]
        measured = _measured(entry)
        if measured:
            details.append(('measured on', measured))
        if entry.get('command'):
            details.append(('command', f"`{entry['command']}`"))
        header, rows = _plot_table(key, entry)
        out.append(dict(file=file, title=title, details=details, header=header, rows=rows))
    return out


def _class_names(config: Mapping[str, Any], results: Mapping[str, Any], k: int) -> List[str]:
    names = config.get('label_names')
    if isinstance(names, list) and len(names) == k:
        return [str(n) for n in names]
    if k == len(CIFAR10_CLASSES) and results['data'].get('dataset', 'cifar10') == 'cifar10':
        return list(CIFAR10_CLASSES)
    return [f'class {i}' for i in range(k)]


def _pct(v: Any) -> str:
    return f'{v:.2f}' if isinstance(v, (int, float)) and not isinstance(v, bool) else 'n/a'


def _images(entry: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    n, whole = metric_sample(entry, data)
    return f"{'all' if whole else 'first'} {n:,}" if n else 'images not recorded'


class _Column(NamedTuple):
    series: str  # the name of its bars in the figure ('' for the change column, which has none)
    header: str  # its name in the table, with the images it was measured on
    values: List[Any]  # per class
    start_model: bool = False  # the start model's numbers (drawn faded)


def _per_class_columns(results: Mapping[str, Any]) -> List[_Column]:
    """The columns of the per-class section: each metric of :data:`PER_CLASS_METRICS` the report has per class;
    with the start model's report attached, its numbers before this model's and the change after them."""
    measured, data = results['results'], results['data']
    before = results.get('per_class_before') if isinstance(results.get('per_class_before'), dict) else {}
    start = before.get('results') or {}
    columns: List[_Column] = []
    for m in PER_CLASS_METRICS:
        entry = measured.get(m) or {}
        if not isinstance(entry.get('per_class'), list):
            continue
        name, now = paper.METRIC_NAMES[m], entry['per_class']
        old = start.get(m) if isinstance(start.get(m), dict) else None
        if old is None or len(old.get('per_class') or []) != len(now):
            columns.append(_Column(name, f'{name} ({_images(entry, data)})', now))
            continue
        change = [f'{a - b:+.2f}' if isinstance(a, (int, float)) and isinstance(b, (int, float)) else 'n/a'
                  for a, b in zip(now, old['per_class'])]
        columns += [_Column(f'{name} before', f"{name} before ({_images(old, before.get('data') or {})})",
                            old['per_class'], True),
                    _Column(f'{name} after', f'{name} after ({_images(entry, data)})', now),
                    _Column('', f'{name} change (points)', change)]
    return columns


def per_class_section(results: Mapping[str, Any], config: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The card's per-class section from results.json: per class, clean and PGD-20 accuracy; for a fine-tuned model
    whose start model's report is attached (``per_class_before``, :func:`fsr_hub.release.attach_before`) the start
    model's beside them and the change. None when results.json has no per-class numbers for these metrics."""
    columns = _per_class_columns(results)
    if not columns:
        return None
    k = len(columns[0].values)
    names = _class_names(config, results, k)
    rows = [[names[i]] + [c.values[i] if not c.series else _pct(c.values[i]) for c in columns] for i in range(k)]
    before = results.get('per_class_before') if isinstance(results.get('per_class_before'), dict) else None
    start = None
    if before is not None:
        model = before.get('model') or {}
        start = dict(name=release_name(model.get('architecture') or 'model', model.get('tag')),
                     sha256=str(model.get('sha256') or '')[:12])
    return dict(file=PER_CLASS_PNG, header=['class'] + [c.header for c in columns], rows=rows, classes=names,
                series={c.series: c.values for c in columns if c.series},
                faded=[c.series for c in columns if c.start_model], before=start)


def write_per_class_plot(results: Mapping[str, Any], config: Mapping[str, Any], folder: Path) -> Optional[Path]:
    """Write ``per_class.png`` of the per-class section into ``folder``; None (nothing written) when results.json
    has no per-class numbers or matplotlib (the ``analysis`` extra) is not installed."""
    section = per_class_section(results, config)
    if section is None:
        return None
    try:
        from .analysis.plots import plot_per_class
        return plot_per_class(section['classes'], section['series'], Path(folder) / PER_CLASS_PNG,
                              faded=section['faded'])
    except ImportError:
        return None


def shown_per_class_section(results: Mapping[str, Any], config: Mapping[str, Any],
                            folder: Optional[Path]) -> Optional[Dict[str, Any]]:
    """The per-class section when the release folder holds its figure (as the analysis plots: the card shows what
    the folder holds), else None."""
    if folder is None or not (folder / PER_CLASS_PNG).is_file():
        return None
    return per_class_section(results, config)
