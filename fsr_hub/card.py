"""The model card of a release folder: huggingface_hub's :class:`~huggingface_hub.ModelCard` rendered from the
Jinja template :data:`TEMPLATE_PATH` with the folder's results.json and config.json and the plots present
(:data:`PLOTS`), the card's metadata (model-index) from :class:`~huggingface_hub.ModelCardData` /
:class:`~huggingface_hub.EvalResult`.

The card is a function of those files (:func:`render_card`); :func:`fsr_hub.release.validate_release` re-renders
it and compares bytes, so every number the card shows comes from results.json.
"""
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from . import paper
from .models import ALL_MODELS
from .releases import release_name
from .weights import WEIGHTS_NAME

__all__ = ['TEMPLATE_PATH', 'PLOTS', 'PLOT_DETAILS', 'CardError', 'describe_attack', 'render_card']

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
_EXTRA_METRICS = {'autoattack_rand': 'AutoAttack (rand)', 'transfer': 'Transfer (PGD-20)',
                  'ti_fgsm': 'TI-FGSM (black-box)', 'di_fgsm': 'DI-FGSM (black-box)', 'nattack': 'NAttack (black-box)'}
_SOURCE_ATTACKS = ('transfer', 'ti_fgsm', 'di_fgsm')
_DATASET_NAMES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'svhn': 'SVHN', 'tiny_imagenet': 'Tiny ImageNet'}


class CardError(RuntimeError):
    """A release folder's files cannot be rendered into a card (one-line message naming the file)."""


def describe_attack(key: str, entry: Mapping[str, Any]) -> str:
    """Short protocol of one verify-report attack entry, e.g. ``'20 steps, step eps/10, no random start'``, with
    the source of a transfer attack and the subset when the attack ran on the first n images only."""
    p = entry.get('params') or {}
    if key == 'ensemble':
        attacks = entry.get('attacks') or []
        return f"per example: correct under all of {', '.join(attacks)}" if attacks else ''
    bits = []
    if key.startswith('autoattack'):
        bits.append(str(entry.get('implementation', '')))
    elif key == 'nattack':
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


def _fmt(v: Any, nd: int = 2) -> str:
    return f'{v:.{nd}f}' if isinstance(v, (int, float)) and not isinstance(v, bool) else 'not measured'


def _cell(v: Any) -> str:
    """A number of a section's own table, 4 significant digits (percentages, L2 distances, mask means); None is a
    quantity with nothing to average (e.g. the L2 of an attack that never succeeded): n/a."""
    return f'{v:.4g}' if isinstance(v, (int, float)) and not isinstance(v, bool) else 'n/a'


def _eps_255(eps: Any) -> str:
    return f'{round(eps * 255)}/255' if isinstance(eps, (int, float)) else 'unknown'


def _metric_rows(results: Mapping[str, Any]) -> List[Dict[str, Any]]:
    measured = results['results']
    ref = results.get('paper_reference') or {}
    pm, ps = ref.get('metrics') or {}, ref.get('sources') or {}
    keys = list(paper.METRICS) + [k for k in _EXTRA_METRICS if k in measured]
    return [dict(key=k, name=paper.METRIC_NAMES.get(k) or _EXTRA_METRICS[k],
                 ours=(measured.get(k) or {}).get('accuracy'), paper=pm.get(k), source=ps.get(k, '-'),
                 protocol=describe_attack(k, measured[k]) if k in measured else '') for k in keys]


def _card_data(results: Mapping[str, Any], config: Mapping[str, Any], name: str):
    from huggingface_hub import EvalResult, ModelCardData

    data = results['data']
    dataset = data.get('dataset', 'cifar10')
    eps = _eps_255(results.get('eps'))
    evals = [EvalResult(
        task_type='image-classification', task_name='Image Classification', dataset_type=dataset,
        dataset_name=_DATASET_NAMES.get(dataset, dataset), dataset_split=data.get('split', 'test'),
        metric_type='accuracy', metric_value=row['ours'], metric_config=row['key'], verified=False,
        metric_name='clean accuracy' if row['key'] == 'clean' else f"robust accuracy, {row['name']}, Linf {eps}",
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


def _weights_dtype(folder: Optional[Path]) -> str:
    from safetensors import safe_open

    if folder is None or not (folder / WEIGHTS_NAME).is_file():
        return 'unknown'
    try:
        with safe_open(str(folder / WEIGHTS_NAME), framework='pt') as f:
            return ', '.join(sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()}))
    except (OSError, ValueError) as e:
        raise CardError(f'{folder / WEIGHTS_NAME} is not a readable safetensors file ({e}).') from e


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
        own=arch in ALL_MODELS,
        model_kwargs=', '.join(f'{k}={v!r}' for k, v in (config.get('model_args') or {}).items()),
        inputs=f'raw RGB pixels in [0, 1], {size[-2]}x{size[-1]}, no normalisation' if raw else
        f'RGB pixels in [0, 1], {size[-2]}x{size[-1]}, normalised with mean {list(mean)} and std {list(std)}',
        fsr_positions=config.get('model_args', {}).get('fsr_positions') or [],
        dataset=_DATASET_NAMES.get(results['data'].get('dataset', 'cifar10'), results['data'].get('dataset')),
        data=results['data'], eps=_eps_255(results.get('eps')), paper=results.get('paper_reference') or {},
        metrics=_metric_rows(results), command=results.get('command', 'not recorded'),
        masking=results.get('masking_checks'), plots=_plots(results, config, folder),
        cost=results.get('cost') or {}, hardware=results.get('hardware') or {}, timing=results.get('timing') or {},
        training=training, training_hardware=thw.get('device', thw) if isinstance(thw, dict) else thw,
        training_yaml=yaml.safe_dump(training['config'], sort_keys=True).rstrip()
        if isinstance(training, dict) and isinstance(training.get('config'), dict) else None,
        weights_dtype=_weights_dtype(folder), sha256=results['model'].get('sha256'), fmt=_fmt)
    return str(card)
