"""Reference numbers of the FSR paper (Kim et al., CVPR 2023) as data, each with the table it comes from.

Accuracies are percentages on the full CIFAR-10 / SVHN test set under L-inf eps = 8/255 with the paper's
protocol, keyed as the verify report's ``results`` (the columns are declared in :mod:`fsr_hub.attack_registry`):
Tables 1 and 2 (clean, FGSM, PGD-20, PGD-100, C&W, Ensemble), and for ResNet-18 on CIFAR-10 Table 3's AutoAttack
and black-box columns. WideResNet-34-10's results are only in the supplementary material, not reproduced here.

Also here: the recipe of ADML fine-tuning (Lee et al., ICCV 2023) as its official code runs it, and how a trainer
config departs from it (a "reduced" run).
"""
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .attack_registry import (
    AUTOATTACK, DI_FGSM, DISPLAY_NAMES, NATTACK, PAPER_TABLE_3, PAPER_TABLES_1_2, TI_FGSM, names,
)

__all__ = ['PaperReference', 'PAPER', 'PAPER_COST', 'PAPER_RECIPE', 'FAST_RECIPES', 'METRICS', 'METRIC_NAMES',
           'BLACKBOX_METRICS', 'paper_reference', 'split_tag', 'ADML_PAPER', 'ADML_RECIPE', 'ADML_EPOCHS', 'ADML_LR',
           'ADML_WARMUP', 'ADML_BATCH', 'ADML_PGD_STEPS', 'ADML_PGD_STEP', 'ADML_BETA', 'adml_departures',
           'adml_recipe']

PAPER = 'Kim et al., Feature Separation and Recalibration for Adversarial Robustness, CVPR 2023'

#: the columns of Tables 1 and 2, in their order
_WHITEBOX = names(lambda a: a.paper == PAPER_TABLES_1_2)
#: Table 3's black-box columns (TI-FGSM, DI-FGSM, NAttack)
BLACKBOX_METRICS: Tuple[str, ...] = names(lambda a: a.paper == PAPER_TABLE_3 and a.blackbox)
#: Metric keys of the white-box table (Tables 1, 2 and Table 3's AutoAttack), in display order, and their names.
METRICS: Tuple[str, ...] = names(lambda a: a.paper is not None and not a.blackbox)
METRIC_NAMES: Dict[str, str] = {k: DISPLAY_NAMES[k] for k in METRICS}

# (backbone, dataset) -> method -> (clean, FGSM, PGD-20, PGD-100, C&W, Ensemble); Tables 1 (ResNet-18), 2 (VGG16)
_TABLE_1_2 = {
    ('resnet18', 'cifar10'): {
        'at': (85.02, 56.21, 48.22, 46.37, 47.38, 45.51),
        'at_fsr': (81.46, 58.07, 52.47, 51.02, 49.44, 48.34),
        'trades': (86.31, 57.21, 50.74, 49.44, 48.66, 47.89),
        'trades_fsr': (84.49, 58.29, 52.27, 51.28, 49.92, 49.28),
        'mart': (82.73, 56.65, 50.88, 49.15, 47.21, 45.98),
        'mart_fsr': (83.28, 59.55, 54.80, 53.69, 48.98, 48.36),
    },
    ('resnet18', 'svhn'): {
        'at': (91.21, 55.55, 40.85, 37.54, 40.61, 37.41),
        'at_fsr': (91.28, 60.46, 43.94, 39.01, 43.22, 38.81),
        'trades': (90.99, 61.31, 47.12, 43.55, 45.48, 42.99),
        'trades_fsr': (91.39, 68.85, 51.49, 47.50, 46.70, 46.17),
        'mart': (90.50, 58.21, 43.61, 40.43, 42.20, 40.07),
        'mart_fsr': (89.87, 61.06, 46.51, 42.94, 43.89, 42.40),
    },
    ('vgg16', 'cifar10'): {
        'at': (80.56, 53.47, 47.17, 45.58, 45.82, 43.71),
        'at_fsr': (80.06, 54.40, 49.82, 48.82, 47.28, 46.24),
        'trades': (82.44, 53.92, 47.39, 46.20, 44.80, 44.20),
        'trades_fsr': (80.78, 55.48, 49.95, 49.03, 46.28, 45.90),
        'mart': (76.11, 54.86, 51.06, 50.16, 43.53, 43.01),
        'mart_fsr': (79.18, 56.41, 52.69, 52.13, 44.49, 44.20),
    },
    ('vgg16', 'svhn'): {
        'at': (89.59, 54.88, 40.27, 36.90, 39.46, 36.62),
        'at_fsr': (91.44, 65.01, 45.99, 39.07, 43.08, 38.15),
        'trades': (90.48, 61.50, 45.99, 40.00, 42.82, 39.27),
        'trades_fsr': (91.89, 69.25, 54.56, 47.81, 46.66, 44.10),
        'mart': (89.95, 59.03, 42.89, 38.73, 39.12, 37.64),
        'mart_fsr': (90.60, 62.28, 47.17, 42.50, 43.44, 40.73),
    },
}

# Table 3: ResNet-18, CIFAR-10, AutoAttack column
_TABLE_3_AUTOATTACK = {
    'at': 44.11, 'at_fsr': 46.41, 'trades': 46.81, 'trades_fsr': 48.45, 'mart': 44.27, 'mart_fsr': 46.55,
}
# Table 3: ResNet-18, CIFAR-10, black-box columns (TI-FGSM, DI-FGSM, NAttack)
_TABLE_3_BLACKBOX = {
    'at': (59.03, 46.56, 39.55), 'at_fsr': (62.53, 50.50, 52.65), 'trades': (59.95, 49.23, 43.45),
    'trades_fsr': (61.45, 50.54, 50.43), 'mart': (59.73, 48.38, 44.68), 'mart_fsr': (62.68, 51.42, 53.76),
}
_TABLE_3_SOURCES = {TI_FGSM: 'Table 3 (from a natural ResNet-50)', DI_FGSM: 'Table 3 (from a natural ResNet-50)',
                    NATTACK: 'Table 3 (1,000 images)'}

#: Table 7: parameters (M) and FLOPs (G, one multiply-add counted as two FLOPs) for 32x32 inputs.
PAPER_COST: Dict[str, Dict[str, Dict[str, float]]] = {
    'resnet18': {'vanilla': {'params_m': 11.17, 'gflops': 1.1133}, 'fsr': {'params_m': 12.43, 'gflops': 1.1535}},
    'vgg16': {'vanilla': {'params_m': 15.25, 'gflops': 0.6299}, 'fsr': {'params_m': 16.52, 'gflops': 0.6701}},
}

#: training methods that are not the paper's -> (the paper's method they are compared with, what they are). The paper
#: trains 100 epochs of PGD-10 (Sec. 4.1); these fast recipes take one attack step per batch, so the paper's numbers
#: stand beside theirs as a different recipe, never as a reproduction.
FAST_RECIPES: Dict[str, Tuple[str, str]] = {
    'fgsmrs': ('at', 'FGSM-RS: one step of 1.25 eps from a uniform random start (Wong et al. 2020)'),
    'fgsmrscyc': ('at', 'FGSM-RS with a cyclic lr (per iteration 0 -> 0.2 -> 0), '
                        'the fast AT recipe of Wong et al. 2020'),
    'nfgsm': ('at', 'N-FGSM: one step of eps from noise U(-2 eps, 2 eps), no projection (de Jorge et al. 2022)'),
}
PAPER_RECIPE = '100 epochs of PGD-10 adversarial training (Sec. 4.1)'

#: ADML fine-tuning as its official code runs it (repo Double-Debiased-Adversary); the trainer's ``--objective
#: adml`` defaults to these numbers, and a run that departs from them is labelled reduced (:func:`adml_recipe`)
ADML_PAPER = 'Lee et al., Adversarial Double Machine Learning, ICCV 2023'
ADML_EPOCHS = 10
ADML_LR = 1e-3  # the peak of the per-iteration triangle (SGD momentum 0.9, weight decay 5e-4)
ADML_WARMUP = Fraction(1, 5)  # the peak after 2 of the 10 epochs
ADML_BATCH = 128  # in two halves of 64
ADML_PGD_STEPS = 10
ADML_PGD_STEP = 0.00722  # for eps 8/255, from a uniform random start
ADML_BETA = 2.0  # TRADES / MART weight of the first half
ADML_RECIPE = (f'{ADML_EPOCHS} epochs of ADML fine-tuning of an adversarially trained model: PGD-{ADML_PGD_STEPS} '
               f'(eps 8/255, step {ADML_PGD_STEP}, uniform start), batch {ADML_BATCH} in halves, SGD momentum 0.9, '
               f'weight decay 5e-4, per-iteration lr triangle 0 -> {ADML_LR:g} over 2 epochs, -> 0 over 8')

_BACKBONES = {'fsr_resnet18': ('resnet18', True), 'cifar_resnet18': ('resnet18', False),
              'fsr_vgg16': ('vgg16', True), 'cifar_vgg16': ('vgg16', False)}
_TABLE_OF = {'resnet18': 'Table 1', 'vgg16': 'Table 2'}


@dataclass(frozen=True)
class PaperReference:
    """The paper's numbers for one (architecture, training method, dataset) setting."""
    setting: str
    metrics: Dict[str, float]
    sources: Dict[str, str] = field(default_factory=dict)
    cost: Optional[Dict[str, float]] = None
    cost_source: Optional[str] = None
    #: set when the model was trained with another recipe than the paper's numbers: how the two differ
    other_recipe: Optional[str] = None

    def to_dict(self) -> dict:
        """JSON form, as stored under ``paper_reference`` in a release's results.json."""
        return dict(
            paper=PAPER, setting=self.setting, metrics=dict(self.metrics), sources=dict(self.sources),
            cost=dict(self.cost) if self.cost else None, cost_source=self.cost_source, other_recipe=self.other_recipe)


def table7(architecture: str) -> Optional[Dict[str, Dict[str, float]]]:
    """Table 7's ``{'vanilla': {...}, 'fsr': {...}}`` cost for the backbone of ``architecture``, or None."""
    backbone = _BACKBONES.get(architecture, (None,))[0]
    return PAPER_COST.get(backbone) if backbone else None


def split_tag(tag: str) -> Tuple[str, str]:
    """``'at_cifar10'`` -> ``('at', 'cifar10')``: training method and dataset of a pretrained tag."""
    method, sep, dataset = tag.rpartition('_')
    if not sep or not method:
        raise ValueError(f'Pretrained tag {tag!r} is not of the form <method>_<dataset> (e.g. at_cifar10).')
    return method, dataset


def paper_reference(architecture: str, tag: Optional[str]) -> Optional[PaperReference]:
    """The paper's numbers for ``architecture`` trained as ``tag`` (e.g. 'at_cifar10'), or None if not reported.

    A fast recipe's tag (:data:`FAST_RECIPES`, e.g. 'fgsmrs_cifar10') gets the numbers of the paper's method it is
    compared with, with ``other_recipe`` saying that they come from the paper's own, different recipe.
    """
    if architecture not in _BACKBONES or not tag:
        return None
    backbone, with_fsr = _BACKBONES[architecture]
    try:
        method, dataset = split_tag(tag)
    except ValueError:
        return None
    other_recipe = None
    if method in FAST_RECIPES:
        other_recipe = (f'the paper\'s numbers come from {PAPER_RECIPE}; this model was trained with {method} '
                        f'({FAST_RECIPES[method][1]}), a different, much cheaper recipe')
        method = FAST_RECIPES[method][0]
    rows = _TABLE_1_2.get((backbone, dataset), {})
    key = f'{method}_fsr' if with_fsr else method
    if key not in rows:
        return None
    table = _TABLE_OF[backbone]
    metrics = dict(zip(_WHITEBOX, rows[key]))
    sources = {m: table for m in _WHITEBOX}
    if backbone == 'resnet18' and dataset == 'cifar10':
        metrics[AUTOATTACK] = _TABLE_3_AUTOATTACK[key]
        sources[AUTOATTACK] = 'Table 3' + (' and Table 4' if key == 'at_fsr' else '')
        metrics.update(zip(BLACKBOX_METRICS, _TABLE_3_BLACKBOX[key]))
        sources.update(_TABLE_3_SOURCES)
    row_name = f"{method.upper()}{' + FSR' if with_fsr else ''}"
    setting = (f"{row_name}, {'ResNet-18' if backbone == 'resnet18' else 'VGG16'}, "
               f"{'CIFAR-10' if dataset == 'cifar10' else dataset.upper()}, Linf 8/255")
    return PaperReference(
        setting=setting, metrics=metrics, sources=sources,
        cost=PAPER_COST[backbone]['fsr' if with_fsr else 'vanilla'], cost_source='Table 7', other_recipe=other_recipe)


def _adml_attack_departure(config: Mapping[str, Any]) -> Optional[str]:
    attack, steps, alpha = config.get('attack', 'pgd'), config.get('steps'), config.get('alpha')
    if attack != 'pgd' or steps != ADML_PGD_STEPS:
        name = {'fgsm-rs': 'FGSM-RS', 'n-fgsm': 'N-FGSM'}.get(attack, f'PGD-{steps}')
        return f'{name} instead of PGD-{ADML_PGD_STEPS}'
    if config.get('eps') == 8 / 255 and alpha is not None and abs(alpha - ADML_PGD_STEP) > 1e-9:
        return f'PGD step {alpha:.5g} instead of {ADML_PGD_STEP}'
    return None


def adml_departures(config: Mapping[str, Any]) -> List[str]:
    """How a resolved trainer config (``train_summary.json``'s ``config``) departs from :data:`ADML_RECIPE`, one
    phrase each; empty for the paper's recipe."""
    out = []
    if config.get('init_from') is None:
        out.append('no --init-from: trained from a fresh initialisation, not fine-tuned')
    attack = _adml_attack_departure(config)
    if attack:
        out.append(attack)
    if config.get('eps') != 8 / 255:
        out.append(f"eps {config.get('eps')} instead of 8/255")
    if config.get('epochs') != ADML_EPOCHS:
        out.append(f"{config.get('epochs')} epochs instead of {ADML_EPOCHS}")
    if config.get('max_train_images') is not None:
        out.append(f"the first {config['max_train_images']} training images only")
    if config.get('batch_size') != ADML_BATCH:
        out.append(f"batch {config.get('batch_size')} instead of {ADML_BATCH}")
    if config.get('schedule') != 'adml':
        out.append(f"{config.get('schedule')} lr schedule instead of ADML's triangle")
    for key, value in (('lr', ADML_LR), ('momentum', 0.9), ('weight_decay', 5e-4)):
        if config.get(key) != value:
            out.append(f'{key} {config.get(key)} instead of {value:g}')
    if config.get('adml_base') in ('trades', 'mart') and config.get('beta') != ADML_BETA:
        out.append(f"beta {config.get('beta')} instead of {ADML_BETA:g}")
    return out


def adml_recipe(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The recipe record of an ADML run (``train_summary.json``'s ``recipe``): ``label`` is ``'paper'`` for the
    official recipe and ``'reduced'`` for any departure (e.g. the CPU mode: FGSM-RS, fewer epochs, a subset of
    the training set), each listed under ``departures``."""
    departures = adml_departures(config)
    return {'name': 'adml', 'base': config.get('adml_base'), 'paper': ADML_PAPER, 'paper_recipe': ADML_RECIPE,
            'label': 'reduced' if departures else 'paper', 'departures': departures}
