"""What release folders are summarised as outside their cards: the project README's table of released weights
(:func:`released_table`, with FSR minus vanilla for each twin pair) and RobustBench's ``model_info`` record of a
release (:func:`robustbench_record`).
"""
from typing import Any, Dict, List, Mapping, Tuple

from . import paper
from .attack_registry import AUTOATTACK, CLEAN
from .card_metrics import autoattack_protocol, ci95, eps_255, format_number, metric_rows, metric_sample
from .card_recipe import short_recipe
from .models import VANILLA_TWINS
from .twins import paper_gaps

__all__ = ['released_table', 'robustbench_record']


def released_table(releases: Mapping[str, Tuple[Mapping[str, Any], Mapping[str, Any]]]) -> str:
    """The README's table of released weights: ``{name: (results, config)}`` -> one row per release (each metric
    with its 95 % interval and images) and one row of the paper's numbers per setting they compare with."""
    keys = list(paper.METRICS)
    head = ['weights', 'training'] + [paper.METRIC_NAMES[k] for k in keys]
    lines = ['| ' + ' | '.join(head) + ' |', '| --- | --- |' + ' ---: |' * len(keys)]
    refs: Dict[str, Mapping[str, Any]] = {}
    for name, (results, config) in releases.items():
        rows = {r['key']: r for r in metric_rows(results)}
        cells = [f"{format_number(rows[k]['ours'])} ± {format_number(rows[k]['ci'])} "
                 f"({'all ' if rows[k]['whole'] else 'first '}{rows[k]['n']:,})"
                 if rows[k]['ours'] is not None else 'not measured yet' for k in keys]
        training = results.get('training') or {}
        what = _pruned_from(results) or short_recipe(training.get('config') or {}, training.get('epochs', '?')) \
            or 'not recorded'
        lines.append(f'| `{name}` | {what} | ' + ' | '.join(cells) + ' |')
        ref = results.get('paper_reference') or {}
        if ref.get('setting'):
            refs[ref['setting']] = ref
    for setting, ref in refs.items():
        cells = [format_number(ref['metrics'][k]) if k in (ref.get('metrics') or {}) else '-' for k in keys]
        lines.append(f'| paper: {setting} | {paper.PAPER_RECIPE} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines + _twin_table(releases, keys, head))


def _pruned_from(results: Mapping[str, Any]) -> str:
    """A pruned release's training column: how it was pruned and from what ('' for a trained model)."""
    pruning = results.get('pruning')
    if not isinstance(pruning, dict):
        return ''
    method = 'MAD' if pruning.get('criterion') == 'mad' else 'magnitude'
    zeros = (pruning.get('sparsity') or {}).get('prunable_sparsity')
    source = (pruning.get('source') or {}).get('release') or 'dense weights'
    epochs = (pruning.get('finetune') or {}).get('epochs', '?')
    reduced = ', reduced run' if pruning.get('mode') == 'reduced' else ''
    share = f' to {format_number(100 * zeros)} % zeros (conv / linear)' if isinstance(zeros, (int, float)) else ''
    return f'{method} pruning of `{source}`{share}, {epochs} MART epochs{reduced}'


def _twin_table(releases: Mapping[str, Tuple[Mapping[str, Any], Mapping[str, Any]]], keys: List[str],
                head: List[str]) -> List[str]:
    """FSR minus vanilla for each released twin pair (both in ``releases``), from the stored ``twin`` sections."""
    pairs = [results['twin'] for name, (results, _) in releases.items()
             if isinstance(results.get('twin'), dict) and results['twin'].get('fsr', {}).get('name') == name
             and results['twin']['vanilla'].get('name') in releases]
    if not pairs:
        return []
    lines = ['', 'FSR minus its vanilla twin (same command, model alone changed), in points, on the first test images '
                 'both were evaluated on, with the paired 95 % interval:', '',
             '| ' + ' | '.join(['FSR - vanilla', 'training'] + head[2:]) + ' |',
             '| --- | --- |' + ' ---: |' * len(keys)]
    paper_rows: List[str] = []
    for t in pairs:
        rows = {r['metric']: r for r in t['rows']}
        cells = [f"{rows[k]['gap']:+.2f} ± {format_number(rows[k]['ci95'])} ({_n_images(rows[k]['subset'])})"
                 if k in rows else 'not measured yet' for k in keys]
        what = f"{t['fsr'].get('epochs', '?')} epochs each"
        lines.append(f"| `{t['fsr']['name']}` - `{t['vanilla']['name']}` | {what} | " + ' | '.join(cells) + ' |')
        row = _paper_gap_row(releases[t['fsr']['name']][0], releases[t['vanilla']['name']][0], keys)
        if row and row not in paper_rows:
            paper_rows.append(row)
    return lines + paper_rows


def _paper_gap_row(fsr: Mapping[str, Any], vanilla: Mapping[str, Any], keys: List[str]) -> str:
    """The paper's FSR - vanilla row for a pair ('' when the paper has no metric of both): every metric it reports
    for both, measured here or not."""
    gaps = paper_gaps(fsr, vanilla)
    if not gaps:
        return ''
    cells = [f'{gaps[k]:+.2f}' if k in gaps else '-' for k in keys]
    setting = (vanilla.get('paper_reference') or {}).get('setting')
    label = f'paper: FSR - vanilla ({setting})' if setting else 'paper: FSR - vanilla'
    return f'| {label} | {paper.PAPER_RECIPE} | ' + ' | '.join(cells) + ' |'


def _n_images(subset: str) -> str:
    """'first 2000' -> 'first 2,000'."""
    word, _, n = subset.partition(' ')
    return f'{word} {int(n):,}' if n.isdigit() else subset


_ARCH_NAMES = {'fsr_resnet18': 'ResNet-18 + FSR', 'cifar_resnet18': 'ResNet-18',
               'fsr_vgg16': 'VGG16-BN + FSR', 'cifar_vgg16': 'VGG16-BN',
               'fsr_wrn34_10': 'WideResNet-34-10 + FSR', 'cifar_wrn34_10': 'WideResNet-34-10'}


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
        protocol = autoattack_protocol(AUTOATTACK, measured[AUTOATTACK], results.get('eps'))
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
        'eps': eps_255(results.get('eps')),
        'clean_acc': clean,
        'reported': '',
        'autoattack_acc': aa,
        'footnote': ' '.join(notes),
    }
