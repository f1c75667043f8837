"""The model card of a release folder: huggingface_hub's :class:`~huggingface_hub.ModelCard` rendered from the
Jinja template :data:`TEMPLATE_PATH` with the folder's results.json and config.json and the plots present
(:data:`PLOTS`), the card's metadata (model-index) from :class:`~huggingface_hub.ModelCardData` /
:class:`~huggingface_hub.EvalResult`.

The card is a function of those files (:func:`render_card`); :func:`fsr_hub.release.validate_release` re-renders
it and compares bytes, so every number the card shows comes from results.json.
"""
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import yaml

from . import paper
from .attack_registry import (
    ATTACKS, AUTOATTACK, AUTOATTACK_VERSIONS, CLEAN, DISPLAY_NAMES, ENSEMBLE, NATTACK, SOURCE_ATTACKS, names,
)
from .models import ALL_MODELS, CIFAR10_CLASSES, VANILLA_TWINS
from .releases import release_name, robustbench_name
from .twins import check_twin_section
from .weights import WEIGHTS_NAME

__all__ = ['TEMPLATE_PATH', 'PLOTS', 'PLOT_DETAILS', 'PER_CLASS_PNG', 'PER_CLASS_METRICS', 'CardError', 'ci95',
           'describe_attack', 'describe_recipe', 'metric_sample', 'per_class_section', 'write_per_class_plot',
           'released_table', 'render_card', 'robustbench_record']

TEMPLATE_PATH = Path(__file__).parent / 'templates' / 'model_card.md'
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
#: the per-class section: its figure (written by :func:`write_per_class_plot`; the card shows the section when the
#: release folder holds it) and the verify-report metrics it shows per class
PER_CLASS_PNG = 'per_class.png'
PER_CLASS_METRICS = names(lambda a: a.per_class)
_EXTRA_METRICS = {a: DISPLAY_NAMES[a] for a in ATTACKS if a not in paper.METRICS}
_SOURCE_ATTACKS = SOURCE_ATTACKS
_DATASET_NAMES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'svhn': 'SVHN', 'tiny_imagenet': 'Tiny ImageNet'}


class CardError(RuntimeError):
    """A release folder's files cannot be rendered into a card (one-line message naming the file)."""


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


def _autoattack_protocol(key: str, entry: Mapping[str, Any], eps: Any) -> str:
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
        bits.append(_autoattack_protocol(key, entry, p.get('eps', eps)))
    elif key == NATTACK:
        q = p.get('max_queries')
        bits.append(f"at most {q:,} queries per image" if isinstance(q, int) else 'queries not recorded')
        bits.extend(f'{k} {p[k]}' for k in ('npop', 'sigma', 'lr') if k in p)
    else:
        if 'steps' in p:
            bits.append(f"{p['steps']} step{'s' if p['steps'] != 1 else ''}")
        if isinstance(p.get('alpha'), (int, float)) and isinstance(p.get('eps'), (int, float)) and p['eps'] and p['alpha']:
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
    if key in _SOURCE_ATTACKS:
        text = f"source: {entry.get('source', 'unknown')}; {text}"
    subset = entry.get('subset')
    if isinstance(subset, str) and subset.startswith('first'):
        text += f'; {subset} images'
    return text


_TRAIN_ATTACKS = {'fgsm-rs': 'FGSM-RS', 'n-fgsm': 'N-FGSM'}


def _frac255(v: Any) -> str:
    return f'{v * 255:.3g}/255' if isinstance(v, (int, float)) and not isinstance(v, bool) else '?'


def _train_attack(config: Mapping[str, Any]) -> Optional[str]:
    """The training attack a trainer config names (FGSM-RS, N-FGSM, PGD-k), None when it records none."""
    if not {'steps', 'eps'} <= set(config):
        return None
    steps, attack = config['steps'], config.get('attack')
    if attack in _TRAIN_ATTACKS:
        return _TRAIN_ATTACKS[attack]
    return 'FGSM-RS' if steps == 1 and config.get('random_start') else f'PGD-{steps}'


def describe_recipe(config: Mapping[str, Any]) -> Optional[str]:
    """One line of a trainer config (``train_summary.json``'s ``config``): the training attack, objective and FSR
    loss weights, epochs, optimiser and lr schedule, batch and precision; None when it records no attack."""
    name = _train_attack(config)
    if name is None:
        return None
    steps, start, attack = config['steps'], config.get('random_start'), config.get('attack')
    start_text = 'from a uniform random start' if start else 'from the clean image'
    if attack == 'n-fgsm':
        start_text = 'from noise U(-2 eps, 2 eps), not projected to the eps-ball'
    bits = [f"{name} ({steps} step{'s' if steps != 1 else ''} of {_frac255(config.get('alpha'))} {start_text}, "
            f"eps {_frac255(config.get('eps'))})"]
    objective = str(config.get('objective', 'at'))
    fsr = (f" + FSR losses (lambda_sep {config.get('lambda_sep')}, lambda_rec {config.get('lambda_rec')})"
           if config.get('fsr_loss') else ' without the FSR losses')
    if objective == 'adml':
        base = str(config.get('adml_base') or 'at').upper()
        bits.append(f"ADML fine-tuning objective ({base} on the first half of each batch{fsr})")
    else:
        bits.append(f"{objective.upper()} objective{fsr}")
    bits.append(f"{config.get('epochs')} epochs, SGD momentum {config.get('momentum')}, weight decay "
                f"{config.get('weight_decay')}, {_lr_text(config)}, batch {config.get('batch_size')}")
    bits.append('bf16 autocast' if config.get('amp') else 'float32')
    if objective == 'adml':
        departures = paper.adml_departures(config)
        bits.append(f"a reduced ADML recipe ({'; '.join(departures)})" if departures else
                    f"the official ADML recipe ({paper.ADML_PAPER})")
    return '; '.join(bits)


def _lr_text(config: Mapping[str, Any]) -> str:
    schedule = config.get('schedule', 'piecewise')
    if schedule == 'piecewise':
        return (f"lr {config.get('lr')} x{config.get('lr_gamma')} after epochs "
                f"{' and '.join(str(m) for m in config.get('milestones') or []) or 'none'}")
    if schedule == 'adml':
        return (f"adml lr triangle peaking at {config.get('lr')} after {float(paper.ADML_WARMUP):.0%} of the "
                f"iterations")
    return f"{schedule} lr peaking at {config.get('lr')}"


def _verify_seconds(results: Mapping[str, Any]) -> Optional[float]:
    """Attack time summed over the report's stages (a resumed report's stages ran in several runs)."""
    entries = list((results.get('results') or {}).values()) + [results.get('masking_checks') or {}]
    secs = [e['seconds'] for e in entries if isinstance(e, dict) and isinstance(e.get('seconds'), (int, float))]
    return sum(secs) if secs else None


def _fmt(v: Any, nd: int = 2) -> str:
    return f'{v:.{nd}f}' if isinstance(v, (int, float)) and not isinstance(v, bool) else 'not measured'


def _cell(v: Any) -> str:
    """A number of a section's own table, 4 significant digits (percentages, L2 distances, mask means); None is a
    quantity with nothing to average (e.g. the L2 of an attack that never succeeded): n/a."""
    return f'{v:.4g}' if isinstance(v, (int, float)) and not isinstance(v, bool) else 'n/a'


def _eps_255(eps: Any) -> str:
    return f'{round(eps * 255)}/255' if isinstance(eps, (int, float)) else 'unknown'


def _metric_rows(results: Mapping[str, Any]) -> List[Dict[str, Any]]:
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
                         protocol=describe_attack(k, entry, results.get('eps')) if k in measured else ''))
    return rows


def _split_of(row: Mapping[str, Any], split: str) -> str:
    """The dataset split a metric was measured on, as the hub writes slices: ``test``, or ``test[:1000]``."""
    return split if row['whole'] else f"{split}[:{row['n'] if row['n'] is not None else '?'}]"


def _card_data(results: Mapping[str, Any], config: Mapping[str, Any], name: str):
    from huggingface_hub import EvalResult, ModelCardData

    data = results['data']
    dataset = data.get('dataset', 'cifar10')
    split = data.get('split', 'test')
    eps = _eps_255(results.get('eps'))

    def metric_name(row: Mapping[str, Any]) -> str:
        what = 'clean accuracy' if row['key'] == CLEAN else f"robust accuracy, {row['name']}, Linf {eps}"
        if row['key'] == AUTOATTACK and row['protocol'].startswith('standard'):
            what = f'robust accuracy, AutoAttack (standard), Linf {eps}'
        return what + ('' if row['whole'] else f", first {row['n']} {split} images (n = {row['n']})")

    evals = [EvalResult(
        task_type='image-classification', task_name='Image Classification', dataset_type=dataset,
        dataset_name=_DATASET_NAMES.get(dataset, dataset), dataset_split=_split_of(row, split),
        metric_type='accuracy', metric_value=row['ours'], metric_config=row['key'], verified=False,
        metric_name=metric_name(row),
    ) for row in _metric_rows(results) if row['ours'] is not None]
    # the hub's "use this model" snippet for timm works only for fsr_hub's own architectures (registered with timm)
    library = 'timm' if config.get('architecture') in ALL_MODELS else None
    return ModelCardData(
        model_name=name, eval_results=evals, library_name=library, pipeline_tag='image-classification',
        license=config.get('pretrained_cfg', {}).get('license', 'mit'), datasets=[dataset], metrics=['accuracy'],
        tags=['image-classification', 'timm', 'fsr-hub', 'adversarial-robustness', 'adversarial-training',
              'feature-separation-and-recalibration', 'safetensors'])


def _plot_table(key: str, entry: Mapping[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """The numbers a plot shows: the section's own ``table`` (``header`` and ``rows``, each row a name and its
    numbers) where it has one, else a curve as one row, or a table with its rows named by the section's ``labels``
    (f~, f+, ...) and its columns by attack (feature swap) or k (k-NN)."""
    acc, table = entry.get('accuracy'), entry.get('table')
    if isinstance(table, dict) and isinstance(table.get('header'), list) and isinstance(table.get('rows'), list):
        return [str(h) for h in table['header']], [[str(r[0])] + [_cell(v) for v in r[1:]] for r in table['rows']]
    if isinstance(acc, list) and isinstance(entry.get('eps_255'), list):
        return (['eps'] + [f'{e:g}/255' for e in entry['eps_255']], [['accuracy (%)'] + [_fmt(a) for a in acc]])
    if isinstance(acc, dict) and all(isinstance(r, dict) for r in acc.values()):
        labels = entry.get('labels') if isinstance(entry.get('labels'), dict) else {}
        columns = list(dict.fromkeys(c for r in acc.values() for c in r))
        names = [f'{c}-NN' if key == 'knn' else paper.METRIC_NAMES.get(c, str(c)) for c in columns]
        return [''] + names, [[str(labels.get(k, k))] + [_fmt(r.get(c)) for c in columns] for k, r in acc.items()]
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


def _plots(results: Mapping[str, Any], config: Mapping[str, Any], folder: Optional[Path]) -> List[Dict[str, Any]]:
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


def _per_class(results: Mapping[str, Any], config: Mapping[str, Any], folder: Optional[Path]) -> Optional[Dict]:
    """The per-class section when the release folder holds its figure (as the analysis plots: the card shows what
    the folder holds), else None."""
    if folder is None or not (folder / PER_CLASS_PNG).is_file():
        return None
    return per_class_section(results, config)


def _weights_dtype(folder: Optional[Path]) -> str:
    from safetensors import safe_open

    if folder is None or not (folder / WEIGHTS_NAME).is_file():
        return 'unknown'
    try:
        with safe_open(str(folder / WEIGHTS_NAME), framework='pt') as f:
            return ', '.join(sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()}))
    except (OSError, ValueError) as e:
        raise CardError(f'{folder / WEIGHTS_NAME} is not a readable safetensors file ({e}).') from e


def released_table(releases: Mapping[str, Tuple[Mapping[str, Any], Mapping[str, Any]]]) -> str:
    """The README's table of released weights: ``{name: (results, config)}`` -> one row per release (each metric
    with its 95 % interval and images) and one row of the paper's numbers per setting they compare with."""
    keys = list(paper.METRICS)
    head = ['weights', 'training'] + [paper.METRIC_NAMES[k] for k in keys]
    lines = ['| ' + ' | '.join(head) + ' |', '| --- | --- |' + ' ---: |' * len(keys)]
    refs: Dict[str, Mapping[str, Any]] = {}
    for name, (results, config) in releases.items():
        rows = {r['key']: r for r in _metric_rows(results)}
        cells = [f"{_fmt(rows[k]['ours'])} ± {_fmt(rows[k]['ci'])} ({'all ' if rows[k]['whole'] else 'first '}"
                 f"{rows[k]['n']:,})" if rows[k]['ours'] is not None else 'not measured yet' for k in keys]
        training = results.get('training') or {}
        attack = _train_attack(training.get('config') or {})
        what = f"{attack}, {training.get('epochs', '?')} epochs" if attack else 'not recorded'
        lines.append(f'| `{name}` | {what} | ' + ' | '.join(cells) + ' |')
        ref = results.get('paper_reference') or {}
        if ref.get('setting'):
            refs[ref['setting']] = ref
    for setting, ref in refs.items():
        cells = [_fmt(ref['metrics'][k]) if k in (ref.get('metrics') or {}) else '-' for k in keys]
        lines.append(f'| paper: {setting} | {paper.PAPER_RECIPE} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines + _twin_table(releases, keys, head))


def _twin_table(releases: Mapping[str, Tuple[Mapping[str, Any], Mapping[str, Any]]], keys: List[str],
                head: List[str]) -> List[str]:
    """FSR minus vanilla for each released twin pair (both in ``releases``), from the stored ``twin`` sections."""
    pairs = [results['twin'] for name, (results, _) in releases.items() if isinstance(results.get('twin'), dict)
             and results['twin'].get('fsr', {}).get('name') == name and results['twin']['vanilla'].get('name') in releases]
    if not pairs:
        return []
    lines = ['', 'FSR minus its vanilla twin (same command, model alone changed), in points, on the first test images '
                 'both were evaluated on, with the paired 95 % interval:', '',
             '| ' + ' | '.join(['FSR - vanilla', 'training'] + head[2:]) + ' |', '| --- | --- |' + ' ---: |' * len(keys)]
    for t in pairs:
        rows = {r['metric']: r for r in t['rows']}
        cells = [f"{rows[k]['gap']:+.2f} ± {_fmt(rows[k]['ci95'])} ({_n_images(rows[k]['subset'])})"
                 if k in rows else 'not measured yet' for k in keys]
        what = f"{t['fsr'].get('epochs', '?')} epochs each"
        lines.append(f"| `{t['fsr']['name']}` - `{t['vanilla']['name']}` | {what} | " + ' | '.join(cells) + ' |')
        if any(r.get('paper_gap') is not None for r in t['rows']):
            cells = [f"{rows[k]['paper_gap']:+.2f}" if rows.get(k, {}).get('paper_gap') is not None else '-' for k in keys]
            lines.append(f'| paper: FSR - vanilla | {paper.PAPER_RECIPE} | ' + ' | '.join(cells) + ' |')
    return lines


def _n_images(subset: str) -> str:
    """'first 2000' -> 'first 2,000'."""
    word, _, n = subset.partition(' ')
    return f'{word} {int(n):,}' if n.isdigit() else subset


_ARCH_NAMES = {'fsr_resnet18': 'ResNet-18 + FSR', 'cifar_resnet18': 'ResNet-18', 'fsr_vgg16': 'VGG16-BN + FSR',
               'cifar_vgg16': 'VGG16-BN', 'fsr_wrn34_10': 'WideResNet-34-10 + FSR', 'cifar_wrn34_10': 'WideResNet-34-10'}


def robustbench_record(results: Mapping[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """The release as a RobustBench ``model_info`` record (its fields, accuracies as percent strings; empty where
    not measured on the whole test set as RobustBench requires, the footnote saying what was measured)."""
    data, measured = results['data'], results['results']
    notes = []

    def whole_set(key: str, name: str) -> str:
        entry = measured.get(key)
        if not isinstance(entry, dict):
            notes.append(f'{name}: not measured yet.')
            return ''
        n, whole = metric_sample(entry, data)
        if whole:
            return f"{entry['accuracy']:.2f}"
        notes.append(f"{name} {entry['accuracy']:.2f} % on the first {n} test images only "
                     f"(± {ci95(entry['accuracy'], n):.2f}, 95 %); RobustBench evaluates all of them.")
        return ''

    clean = whole_set(CLEAN, 'Clean accuracy')
    aa = whole_set(AUTOATTACK, 'AutoAttack (standard)')
    if isinstance(measured.get(AUTOATTACK), dict):
        protocol = _autoattack_protocol(AUTOATTACK, measured[AUTOATTACK], results.get('eps'))
        if not protocol.startswith('standard'):
            aa = ''
            notes.append(f'The AutoAttack run was {protocol}.')
    ref = results.get('paper_reference') or {}
    if ref.get('other_recipe'):
        notes.append(f"Trained with fsr-hub's own recipe, not the paper's: {ref['other_recipe']}.")
    arch = config['architecture']
    return {
        'link': f"https://huggingface.co/{config['hub_id']}",
        'name': 'Feature Separation and Recalibration for Adversarial Robustness' + (
            ' (its vanilla baseline: the same training without FSR)' if arch in VANILLA_TWINS.values() else ''),
        'authors': 'Woo Jae Kim, Yoonki Cho, Junsik Jung, Sung-Eui Yoon',
        'additional_data': False,
        'number_forward_passes': 1,
        'dataset': data.get('dataset', 'cifar10'),
        'venue': 'CVPR 2023',
        'architecture': _ARCH_NAMES.get(arch, arch),
        'eps': _eps_255(results.get('eps')),
        'clean_acc': clean,
        'reported': '',
        'autoattack_acc': aa,
        'footnote': ' '.join(notes),
    }


def _twin(results: Mapping[str, Any], name: str) -> Optional[Mapping[str, Any]]:
    section = results.get('twin')
    if section is None:
        return None
    try:
        check_twin_section(section, name, results)
    except (ValueError, KeyError, TypeError) as e:
        raise CardError(f'results.json twin: {e}') from None
    return section


def render_card(results: Mapping[str, Any], config: Mapping[str, Any], folder: Optional[Path] = None) -> str:
    """The model card (README.md) of a release: huggingface_hub's ModelCard from :data:`TEMPLATE_PATH`.

    ``folder`` (the release folder) supplies the stored weight dtype and the plots present.
    """
    from huggingface_hub import ModelCard

    arch, pcfg = config['architecture'], config['pretrained_cfg']
    tag = pcfg['tag']
    name = release_name(arch, tag)
    training = results.get('training')
    thw = training.get('hardware') if isinstance(training, dict) else None
    size = pcfg.get('input_size') or (3, 32, 32)
    mean, std = pcfg.get('mean') or (0.0,), pcfg.get('std') or (1.0,)
    raw = all(m == 0 for m in mean) and all(v == 1 for v in std)
    card = ModelCard.from_template(
        _card_data(results, config, name), template_path=str(TEMPLATE_PATH),
        name=name, arch=arch, tag=tag, hub_id=config['hub_id'], num_classes=config.get('num_classes'),
        robustbench=robustbench_name(name) if arch in ALL_MODELS else None,
        own=arch in ALL_MODELS,
        model_kwargs=', '.join(f'{k}={v!r}' for k, v in (config.get('model_args') or {}).items()),
        inputs=f'raw RGB pixels in [0, 1], {size[-2]}x{size[-1]}, no normalisation' if raw else
        f'RGB pixels in [0, 1], {size[-2]}x{size[-1]}, normalised with mean {list(mean)} and std {list(std)}',
        fsr_positions=config.get('model_args', {}).get('fsr_positions') or [],
        dataset=_DATASET_NAMES.get(results['data'].get('dataset', 'cifar10'), results['data'].get('dataset')),
        data=results['data'], eps=_eps_255(results.get('eps')), paper=results.get('paper_reference') or {},
        metrics=_metric_rows(results), commands=results.get('commands') or [results.get('command', 'not recorded')],
        masking=results.get('masking_checks'), plots=_plots(results, config, folder),
        per_class=_per_class(results, config, folder),
        cost=results.get('cost') or {}, hardware=results.get('hardware') or {}, timing=results.get('timing') or {},
        training=training, training_hardware=thw.get('device', thw) if isinstance(thw, dict) else thw,
        recipe=describe_recipe(training['config'])
        if isinstance(training, dict) and isinstance(training.get('config'), dict) else None,
        verify_seconds=_verify_seconds(results), twin=_twin(results, name),
        training_yaml=yaml.safe_dump(training['config'], sort_keys=True).rstrip()
        if isinstance(training, dict) and isinstance(training.get('config'), dict) else None,
        weights_dtype=_weights_dtype(folder), sha256=results['model'].get('sha256'), fmt=_fmt)
    return str(card)
