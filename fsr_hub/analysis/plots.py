"""The analyses' figures, sized for a model card (800 px wide, labelled axes). matplotlib's object interface only:
no pyplot, no global backend state."""
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..attack_registry import AUTOATTACK, CLEAN, DISPLAY_NAMES, ENSEMBLE
from ..fsr import FEATURE_LABELS
from ..catalog import release_name
from .common import AnalysisError, require, save_figure

__all__ = ['model_label', 'read_eps_curve', 'plot_eps_curves', 'plot_feature_swap', 'plot_knn', 'plot_ib_split',
           'plot_ib_attack', 'plot_per_class']

_WIDTH_IN, _DPI = 8.0, 100
#: the figures' names of the verify attacks: Table 5a calls clean accuracy "Natural"
_METRIC_NAMES = {**DISPLAY_NAMES, CLEAN: 'Natural'}
_MATH_LABELS = {'final': r'$\tilde{f}$ (ours)', 'robust': r'$f^+$', 'non_robust': r'$f^-$',
                'recalibrated': r'$\tilde{f}^-$'}


def _figure(height_in: float):
    require('matplotlib')
    from matplotlib.figure import Figure
    return Figure(figsize=(_WIDTH_IN, height_in), dpi=_DPI)


def model_label(model: Mapping[str, Any]) -> str:
    """A curve's label from a report's ``model`` section: ``arch.tag``, and "(random init)" for random weights."""
    label = release_name(model.get('architecture') or 'model', model.get('tag'))
    return label + (' (random init)' if model.get('random_init') else '')


def read_eps_curve(path: Union[str, Path]) -> Tuple[str, List[float], List[float]]:
    """(label, eps in 1/255, accuracy %) from an eps-curve JSON of ``tools/analyze.py`` or a results.json whose
    ``analysis`` section holds one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AnalysisError(f'cannot read {path}: {e}') from e
    if doc.get('analysis') == 'eps_curve':  # the file tools/analyze.py eps-curve wrote
        section = doc
    else:  # a results.json with the section attached
        section = (doc.get('analysis') or {}).get('eps_curve') if isinstance(doc.get('analysis'), dict) else None
    if not isinstance(section, dict) or not section.get('eps_255'):
        raise AnalysisError(f'{path} has no eps_curve (run `tools/analyze.py eps-curve` first).')
    label = model_label((section if 'model' in section else doc).get('model') or {})
    return label, list(section['eps_255']), list(section['accuracy'])


def plot_eps_curves(curves: Sequence[Tuple[str, Sequence[float], Sequence[float]]], path: Union[str, Path],
                    title: str = 'Robustness vs. perturbation size (PGD-20, CIFAR-10 test)') -> Path:
    """One line per model: accuracy (%) against eps (x/255)."""
    if not curves:
        raise AnalysisError('no eps curve to plot.')
    fig = _figure(4.6)
    ax = fig.add_subplot()
    markers = 'osD^vP*X'
    for i, (label, eps, acc) in enumerate(curves):
        ax.plot(eps, acc, marker=markers[i % len(markers)], linewidth=2, markersize=6, label=label)
    all_eps = sorted({e for _, eps, _ in curves for e in eps})
    ax.set_xticks(all_eps)
    ax.set_xlabel(r'$\epsilon$ ($L_\infty$, in units of 1/255)', fontsize=12)
    ax.set_ylabel('accuracy (%)', fontsize=12)
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=11)
    ax.set_title(title, fontsize=12)
    ax.legend(fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def _grouped_bars(groups: Sequence[str], series: Dict[str, Sequence[float]], xlabel: str, ylabel: str, title: str,
                  path: Union[str, Path]) -> Path:
    fig = _figure(4.4)
    ax = fig.add_subplot()
    n = len(series)
    width = 0.8 / max(n, 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width=width * 0.95, label=name)
        ax.bar_label(bars, labels=[f'{v:.1f}' for v in values], fontsize=9, padding=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=13)
    ax.set_xlabel(xlabel, fontsize=12)
    ax.set_ylabel(ylabel, fontsize=12)
    ax.set_ylim(0, 105)
    ax.tick_params(axis='y', labelsize=11)
    ax.grid(True, axis='y', alpha=0.3)
    ax.set_title(title, fontsize=12)
    ax.legend(fontsize=10, loc='upper left', bbox_to_anchor=(1.01, 1.0))  # beside the axes: bars reach 100 %
    fig.tight_layout()
    return save_figure(fig, path)


def plot_feature_swap(section: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Table 5a as bars: per feature, accuracy on natural images, under the Ensemble and AutoAttack (whichever
    were measured; otherwise every measured attack)."""
    acc = section['accuracy']
    features = list(acc)
    if not features:
        raise AnalysisError('the feature-swap section has no measured feature.')
    measured = [m for m in acc[features[0]]]
    metrics = [m for m in (CLEAN, ENSEMBLE, AUTOATTACK) if m in measured]
    if len([m for m in metrics if m != CLEAN]) == 0:
        metrics = measured
    series = {_METRIC_NAMES.get(m, m): [acc[f][m] for f in features] for m in metrics}
    eps = round(section['eps'] * 255, 2)
    title = f"Final feature replaced (Table 5a), n = {section['n']}, $\\epsilon$ = {eps:g}/255"
    return _grouped_bars([_MATH_LABELS.get(f, FEATURE_LABELS.get(f, f)) for f in features], series,
                         'feature passed on by the FSR module', 'accuracy (%)', title, path)


def plot_knn(section: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Table 5b as bars: weighted k-NN accuracy of each feature of adversarial examples, one bar per k."""
    acc = section['accuracy']
    features = list(acc)
    if not features:
        raise AnalysisError('the k-NN section has no measured feature.')
    series = {f'{k}-NN': [acc[f][str(k)] for f in features] for k in section['ks']}
    title = f"Weighted k-NN, PGD-20 examples (Table 5b), n = {section['n_test']}, $\\gamma$ = {section['gamma']:g}"
    return _grouped_bars([_MATH_LABELS.get(f, FEATURE_LABELS.get(f, f)) for f in features], series,
                         'feature of the adversarial example', 'top-1 accuracy (%)', title, path)


def plot_per_class(classes: Sequence[str], series: Mapping[str, Sequence[Optional[float]]], path: Union[str, Path],
                   faded: Sequence[str] = (),
                   title: str = 'Accuracy per class (the per-class table of the card)') -> Path:
    """Per-class accuracy as grouped bars: one group per class, one bar per series (e.g. Clean and PGD-20; before
    and after fine-tuning). Series named in ``faded`` (the start model's) are drawn translucent in the colour of the
    series that follows them; a missing value (a class without images) gets no bar."""
    if not classes or not series:
        raise AnalysisError('no per-class accuracy to plot.')
    fig = _figure(4.6)
    ax = fig.add_subplot()
    n = len(series)
    width = 0.8 / n
    colour = 0
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(classes))]
        fade = name in faded
        ax.bar(xs, [v if v is not None else 0.0 for v in values], width=width * 0.95, label=name,
               color=f'C{colour}', alpha=0.4 if fade else 1.0)
        colour += 0 if fade else 1
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, fontsize=10, rotation=30, ha='right')
    ax.set_ylabel('accuracy (%)', fontsize=12)
    ax.set_ylim(0, 100)
    ax.tick_params(axis='y', labelsize=11)
    ax.grid(True, axis='y', alpha=0.3)
    ax.set_title(title, fontsize=12)
    ax.legend(fontsize=10, loc='upper left', bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_figure(fig, path)


def _bars(ax: Any, names: Sequence[str], values: Sequence[Optional[float]], ylabel: str, title: str,
          fmt: str = '{:.1f}') -> None:
    shown = [v if v is not None else 0.0 for v in values]
    bars = ax.bar(range(len(names)), shown, color=[f'C{i}' for i in range(len(names))])
    ax.bar_label(bars, labels=[fmt.format(v) if v is not None else 'n/a' for v in values], fontsize=9, padding=2)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=11)
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis='y', alpha=0.3)


def _split_panels(fig: Any, section: Mapping[str, Any]) -> None:
    overlap = section.get('fsr_overlap')
    axes = fig.subplots(1, 2 if overlap else 1, squeeze=False)[0]
    acc = section['accuracy']
    _bars(axes[0], ['$Z$', '$Z_r$', '$Z_{nr}$'], [acc['whole'], acc['robust'], acc['non_robust']], 'accuracy (%)',
          f"tail on each part, stage {section['stage']}, n = {section['n']}\n"
          f"robust units: {section['robust_fraction']:.2f} % (batch {section['batch_size']})")
    axes[0].set_ylim(0, 105)
    if overlap:
        edges = overlap['histogram_bins']
        for key, label in (('histogram_ib_robust', 'IB-robust units'), ('histogram_ib_non_robust', 'IB-non-robust')):
            counts = overlap[key]
            total = max(sum(counts), 1)
            axes[1].stairs([100.0 * c / total for c in counts], edges, label=label, linewidth=2)
        axes[1].set_xlabel('FSR mask, mean over H x W per unit', fontsize=10)
        axes[1].set_ylabel('units (%)', fontsize=11)
        mean = {k: 'n/a' if overlap[k] is None else f'{overlap[k]:.3f}' for k in
                ('mean_mask_ib_robust', 'mean_mask_ib_non_robust')}
        axes[1].set_title(f"mean FSR mask: {mean['mean_mask_ib_robust']} on IB-robust,\n"
                          f"{mean['mean_mask_ib_non_robust']} on IB-non-robust units", fontsize=11)
        axes[1].legend(fontsize=9)
        axes[1].grid(True, alpha=0.3)


def plot_ib_split(section: Mapping[str, Any], inverted: Optional[Mapping[str, Any]], path: Union[str, Path]) -> Path:
    """The IB split: the tail's accuracy on Z, Z_r, Z_nr, on FSR models a histogram of FSR's mask on IB-robust vs
    IB-non-robust units, and (when given) a grid of images with the inversions of their Z, Z_r, Z_nr."""
    k = 0 if inverted is None else len(inverted['originals'])
    row = 1.3  # inches per image row: four square images in the middle 60 % of the 8-inch width, and a title
    fig = _figure(3.6 + row * k + 0.3)
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.6, row * k + 0.3]) if k else (fig, None)
    _split_panels(top, section)
    top.subplots_adjust(left=0.09, right=0.98, bottom=0.14, top=0.82, wspace=0.3)
    if bottom is not None:
        titles = ['x', 'inversion of $Z$', 'inversion of $Z_r$', 'inversion of $Z_{nr}$']
        axes = bottom.subplots(k, 4, squeeze=False)
        for i in range(k):
            shown = [inverted['originals'][i]] + [inverted['images'][j][i] for j in range(3)]
            for j, img in enumerate(shown):
                empty = j > 0 and bool(inverted['empty'][j - 1][i])  # the part is all zero: nothing to invert
                shown_img = torch.ones_like(img) if empty else img.clamp(0, 1)
                axes[i][j].imshow(shown_img.permute(1, 2, 0).numpy(), interpolation='nearest')
                if empty:
                    axes[i][j].text(0.5, 0.5, 'all zero', ha='center', va='center', fontsize=9,
                                    transform=axes[i][j].transAxes)
                axes[i][j].set_xticks([])
                axes[i][j].set_yticks([])
                if i == 0:
                    axes[i][j].set_title(titles[j], fontsize=10)
        bottom.subplots_adjust(left=0.2, right=0.8, bottom=0.01, top=1 - 0.3 / (row * k + 0.3), wspace=0.05,
                               hspace=0.05)
    return save_figure(fig, path)


def plot_ib_attack(section: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """The L2 attacks: success rate per attack, and the mean L2 distortion of the successes."""
    results = section['results']
    names = [section['labels'][a].split(' ')[0] for a in results]
    fig = _figure(3.8)
    axes = fig.subplots(1, 2)
    _bars(axes[0], names, [r['success_rate'] for r in results.values()], 'success rate (%)',
          f"L2 attacks, n = {section['n']}")
    axes[0].set_ylim(0, 105)
    _bars(axes[1], names, [r['mean_l2'] for r in results.values()], 'mean L2 of the successes',
          'distortion (pixels in [0, 1])', fmt='{:.3f}')
    fig.tight_layout()
    return save_figure(fig, path)
