"""The model card of a release folder: huggingface_hub's :class:`~huggingface_hub.ModelCard` rendered from the
Jinja template :data:`TEMPLATE_PATH` with the folder's results.json and config.json and the plots present, its
metadata (model-index) from :class:`~huggingface_hub.ModelCardData` / :class:`~huggingface_hub.EvalResult`. Its
parts: the metric rows (:mod:`fsr_hub.card_metrics`), the training recipe (:mod:`fsr_hub.card_recipe`) and the
figure sections (:mod:`fsr_hub.card_plots`); the README table and the RobustBench record: :mod:`fsr_hub.card_tables`.

The card is a function of those files (:func:`render_card`); :func:`fsr_hub.release.validate_release` re-renders
it and compares bytes, so every number the card shows comes from results.json.
"""
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import yaml

from .attack_registry import AUTOATTACK, CLEAN
from .card_metrics import PER_CLASS_METRICS, ci95, describe_attack, eps_255, format_number, metric_rows, metric_sample
from .card_plots import (
    PER_CLASS_PNG, PLOT_DETAILS, PLOTS, per_class_section, plot_sections, shown_per_class_section, write_per_class_plot,
)
from .card_recipe import describe_recipe
from .card_tables import released_table, robustbench_record
from .models import ALL_MODELS
from .schemas import report_runs
from .catalog import release_name, robustbench_name
from .twins import check_twin_section
from .weights import WEIGHTS_NAME

__all__ = ['TEMPLATE_PATH', 'PLOTS', 'PLOT_DETAILS', 'PER_CLASS_PNG', 'PER_CLASS_METRICS', 'CardError', 'ci95',
           'describe_attack', 'describe_recipe', 'metric_sample', 'per_class_section', 'write_per_class_plot',
           'released_table', 'render_card', 'robustbench_record']

TEMPLATE_PATH = Path(__file__).parent / 'templates' / 'model_card.md'
_DATASET_NAMES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'svhn': 'SVHN', 'tiny_imagenet': 'Tiny ImageNet'}


class CardError(RuntimeError):
    """A release folder's files cannot be rendered into a card (one-line message naming the file)."""


def _seconds(entries: Sequence[Any]) -> Optional[float]:
    secs = [e['seconds'] for e in entries if isinstance(e, dict) and isinstance(e.get('seconds'), (int, float))]
    return sum(secs) if secs else None


def _verify_seconds(results: Mapping[str, Any]) -> Optional[float]:
    """Attack time summed over the report's stages (a resumed report's stages ran in several runs), the saved
    progress of stages still unfinished included."""
    entries = list((results.get('results') or {}).values()) + [results.get('masking_checks') or {}]
    return _seconds(entries + list((results.get('progress') or {}).values()))


def _unfinished_seconds(results: Mapping[str, Any]) -> Optional[float]:
    """Attack time so far of the stages whose saved progress the report carries (not yet finished)."""
    return _seconds(list((results.get('progress') or {}).values()))


def _describe_hardware(hw: Optional[Mapping[str, Any]]) -> str:
    if not hw:
        return 'hardware not recorded'
    fmt = ', channels_last memory' if hw.get('memory_format') == 'channels_last' else ''
    return f"{hw.get('device') or 'unknown device'}, torch {hw.get('torch') or '?'}, {hw.get('dtype') or '?'}{fmt}"


def _evaluation_hardware(runs: Sequence[Mapping[str, Any]]) -> str:
    """Where the runs that built a report ran: one description, or each with its runs (1-based, oldest first)."""
    groups: List[Tuple[str, List[int]]] = []
    for i, run in enumerate(runs, 1):
        text = _describe_hardware(run.get('hardware'))
        if groups and groups[-1][0] == text:
            groups[-1][1].append(i)
        else:
            groups.append((text, [i]))
    if len(groups) == 1:
        return groups[0][0]
    span = lambda ix: f'run {ix[0]}' if len(ix) == 1 else f'runs {ix[0]}-{ix[-1]}'  # noqa: E731
    return '; '.join(f'{span(ix)}: {text}' for text, ix in groups)


def _split_of(row: Mapping[str, Any], split: str) -> str:
    """The dataset split a metric was measured on, as the hub writes slices: ``test``, or ``test[:1000]``."""
    return split if row['whole'] else f"{split}[:{row['n'] if row['n'] is not None else '?'}]"


def _card_data(results: Mapping[str, Any], config: Mapping[str, Any], name: str):
    from huggingface_hub import EvalResult, ModelCardData

    data = results['data']
    dataset = data.get('dataset', 'cifar10')
    split = data.get('split', 'test')
    eps = eps_255(results.get('eps'))

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
    ) for row in metric_rows(results) if row['ours'] is not None]
    # the hub's "use this model" snippet for timm works only for fsr_hub's own architectures (registered with timm)
    library = 'timm' if config.get('architecture') in ALL_MODELS else None
    return ModelCardData(
        model_name=name, eval_results=evals, library_name=library, pipeline_tag='image-classification',
        license=config.get('pretrained_cfg', {}).get('license', 'mit'), datasets=[dataset], metrics=['accuracy'],
        tags=['image-classification', 'timm', 'fsr-hub', 'adversarial-robustness', 'adversarial-training',
              'feature-separation-and-recalibration', 'safetensors'])


def _weights_dtype(folder: Optional[Path]) -> str:
    from safetensors import safe_open

    if folder is None or not (folder / WEIGHTS_NAME).is_file():
        return 'unknown'
    try:
        with safe_open(str(folder / WEIGHTS_NAME), framework='pt') as f:
            return ', '.join(sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()}))
    except (OSError, ValueError) as e:
        raise CardError(f'{folder / WEIGHTS_NAME} is not a readable safetensors file ({e}).') from e


def _twin(results: Mapping[str, Any], name: str) -> Optional[Mapping[str, Any]]:
    section = results.get('twin')
    if section is None:
        return None
    try:
        check_twin_section(section, name, results)
    except (ValueError, KeyError, TypeError) as e:
        raise CardError(f'results.json twin: {e}') from None
    return section


def _pruning(results: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    """The report's ``pruning`` section with the rows of its dense-versus-pruned table (None: not pruned)."""
    section = results.get('pruning')
    if not isinstance(section, dict):
        return None
    ev = section.get('evaluation') or {}
    robust_key = next((k for k in (ev.get('dense') or {}) if k.startswith('pgd') and k.endswith('_acc')), None)
    rows = [(label, (ev.get(key) or {}).get('clean_acc'), (ev.get(key) or {}).get(robust_key))
            for label, key in (('dense', 'dense'), ('pruned', 'pruned'))] if ev else []
    attack = robust_key[:-len('_acc')].upper().replace('PGD', 'PGD-') if robust_key else 'robust'
    return {**section, 'eval_rows': rows, 'eval_attack': attack}


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
    runs = report_runs(results)
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
        data=results['data'], eps=eps_255(results.get('eps')), paper=results.get('paper_reference') or {},
        metrics=metric_rows(results), commands=[r['command'] for r in runs],
        eval_hardware=_evaluation_hardware(runs),
        masking=results.get('masking_checks'), plots=plot_sections(results, config, folder),
        per_class=shown_per_class_section(results, config, folder),
        cost=results.get('cost') or {}, timing=results.get('timing') or {},
        training=training, training_hardware=thw.get('device', thw) if isinstance(thw, dict) else thw,
        recipe=describe_recipe(training['config'])
        if isinstance(training, dict) and isinstance(training.get('config'), dict) else None,
        verify_seconds=_verify_seconds(results), unfinished_seconds=_unfinished_seconds(results),
        twin=_twin(results, name), pruning=_pruning(results),
        training_yaml=yaml.safe_dump(training['config'], sort_keys=True).rstrip()
        if isinstance(training, dict) and isinstance(training.get('config'), dict) else None,
        weights_dtype=_weights_dtype(folder), sha256=results['model'].get('sha256'), fmt=format_number)
    return str(card)
