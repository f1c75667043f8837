"""The verify suite's attacks as data: one :class:`AttackSpec` per report key, declared once.

Every other module names an attack through this one: the key constants (:data:`PGD20`, ...), the tuples derived
from the declarations (:data:`ATTACKS`, :data:`ENSEMBLE_ATTACKS`, :data:`STAGE_ORDER`, ...) and :func:`spec`.
FGSM, PGD-20/100 (step eps/10) and C&W-inf (PGD-30 on the margin loss, kappa 50) start at x, as in the original
FSR code; ``transfer``, ``ti_fgsm`` and ``di_fgsm`` are crafted on a source model; ``nattack`` queries outputs
only. A new attack is declared here, and run by its kind's stage (:mod:`fsr_hub.evaluate.stages`; a batch-wise
one through :func:`fsr_hub.evaluate.measure.attack_fn`). Standard library only: the command line reads it early.
"""
import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

__all__ = [
    'AttackSpec', 'EpsFraction', 'Kind', 'REGISTRY', 'SPECS', 'spec', 'names',
    'CLEAN', 'FGSM', 'PGD20', 'PGD100', 'CW', 'ENSEMBLE', 'AUTOATTACK', 'AUTOATTACK_RAND', 'TRANSFER', 'TI_FGSM',
    'DI_FGSM', 'NATTACK', 'MASKING', 'ATTACKS', 'DEFAULT_ATTACKS', 'ENSEMBLE_ATTACKS', 'SOURCE_ATTACKS',
    'BLACKBOX_ATTACKS', 'STAGE_ORDER', 'DEFAULT_SUBSETS', 'WHITEBOX_REFERENCE', 'PAPER_TABLES_1_2', 'PAPER_TABLE_3',
    'DISPLAY_NAMES', 'AUTOATTACK_VERSIONS', 'NATTACK_N',
]

# the report keys
CLEAN, FGSM, PGD20, PGD100, CW = 'clean', 'fgsm', 'pgd20', 'pgd100', 'cw'
ENSEMBLE = 'ensemble'
AUTOATTACK, AUTOATTACK_RAND = 'autoattack', 'autoattack_rand'
TRANSFER, TI_FGSM, DI_FGSM, NATTACK = 'transfer', 'ti_fgsm', 'di_fgsm', 'nattack'
#: the gradient-masking checks: a report section, not an attack, but a stage of the run all the same
MASKING = 'masking_checks'

PAPER_TABLES_1_2 = 'Tables 1, 2'
PAPER_TABLE_3 = 'Table 3'
#: the FSR paper's NAttack protocol (after CAS) runs on 1,000 CIFAR-10 test images (here: the first 1,000)
NATTACK_N = 1000


class Kind(enum.Enum):
    """How the suite measures an entry."""
    BATCH = 'batch-wise attack'
    AUTOATTACK = 'AutoAttack, resumable batch by batch'
    QUERY = 'query-based attack, resumable batch by batch'
    ENSEMBLE = 'per-example combination of other entries'


@dataclass(frozen=True)
class EpsFraction:
    """A parameter worth eps / ``divisor``; ``divisor`` is a number or the name of another parameter."""
    divisor: Union[float, str]


@dataclass(frozen=True)
class AttackSpec:
    """One entry of the verify report's ``results``: what it is, how it runs, and where it is shown."""
    name: str  # the report key
    display: str  # its name in tables, cards and figures
    kind: Kind
    #: place in the run order (cheapest first); None: not a stage of its own
    stage: Optional[int] = None
    #: parameters besides eps (recorded in the report); none for clean and AutoAttack, which records its own
    params: Mapping[str, Any] = field(default_factory=dict)
    #: gradient evaluations per image, for deadline estimates (a forward counts 0.4); AutoAttack: its first
    #: sub-attack per clean-correct image, ``robust_cost`` the others per image still robust
    cost: float = 0.0
    robust_cost: float = 0.0
    source: bool = False  # crafted on a source model and evaluated on the model
    ensemble: bool = False  # part of the per-example Ensemble (Eq. 6)
    default: bool = False  # in DEFAULT_ATTACKS
    blackbox: bool = False  # a black-box attack of Table 3: its parameters may be overridden
    paper: Optional[str] = None  # the paper's table with this column
    #: rank as the white-box attack a black-box one is compared with (strongest first); FGSM is too weak
    reference: Optional[int] = None
    subset: Optional[int] = None  # runs on the first n images unless told otherwise
    per_class: bool = False  # shown per class on the model card
    aa_version: Optional[str] = None  # the AutoAttack version

    def __post_init__(self):
        object.__setattr__(self, 'params', MappingProxyType(dict(self.params)))

    def params_at(self, eps: float, overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """The parameters at ``eps``: ``{'eps': eps, **params}`` with ``overrides`` (black-box attacks only)."""
        given = dict(overrides or {})
        if not self.blackbox and given:
            raise ValueError(f'{self.name}: only the black-box attacks ({", ".join(BLACKBOX_ATTACKS)}) take '
                             f'parameter overrides.')
        bad = sorted(set(given) - set(self.params))
        if bad:
            raise ValueError(f'{self.name} has no parameter(s) {bad}; it takes {sorted(self.params)}.')
        if not self.params:
            return {}
        p = {'eps': eps, **self.params, **given}
        for k, v in p.items():
            if isinstance(v, EpsFraction):
                p[k] = eps / (p[v.divisor] if isinstance(v.divisor, str) else v.divisor)
        return p


def _pgd(steps: int, **extra: Any) -> Dict[str, Any]:
    # PGD of the suite: step eps/10, no random start (the key order is the report's)
    return {'alpha': EpsFraction(10), 'steps': steps, 'random_start': False, **extra}


REGISTRY: Tuple[AttackSpec, ...] = (
    AttackSpec(CLEAN, 'Clean', Kind.BATCH, stage=0, cost=0.4, ensemble=True, default=True,
               paper=PAPER_TABLES_1_2, per_class=True),
    AttackSpec(FGSM, 'FGSM', Kind.BATCH, stage=1, params={'steps': 1}, cost=1.4, ensemble=True, default=True,
               paper=PAPER_TABLES_1_2),
    AttackSpec(PGD20, 'PGD-20', Kind.BATCH, stage=4, params=_pgd(20), cost=20.4, ensemble=True,
               default=True, paper=PAPER_TABLES_1_2, reference=3, per_class=True),
    AttackSpec(PGD100, 'PGD-100', Kind.BATCH, stage=7, params=_pgd(100), cost=100.4, ensemble=True,
               default=True, paper=PAPER_TABLES_1_2, reference=2),
    AttackSpec(CW, 'C&W', Kind.BATCH, stage=6, cost=30.4, ensemble=True, default=True, paper=PAPER_TABLES_1_2,
               reference=4, params={'alpha': EpsFraction(10), 'steps': 30, 'kappa': 50.0, 'random_start': False}),
    AttackSpec(ENSEMBLE, 'Ensemble', Kind.ENSEMBLE, paper=PAPER_TABLES_1_2),
    # AutoAttack's costs: see fsr_hub.autoattack.sub_attack_cost
    AttackSpec(AUTOATTACK, 'AutoAttack', Kind.AUTOATTACK, stage=11, cost=100, robust_cost=900 + 1350 + 2000,
               default=True, paper=PAPER_TABLE_3, reference=0, aa_version='standard'),
    AttackSpec(AUTOATTACK_RAND, 'AutoAttack (rand)', Kind.AUTOATTACK, stage=9, cost=2000, robust_cost=2000,
               default=True, reference=1, aa_version='rand'),
    AttackSpec(TRANSFER, 'Transfer (PGD-20)', Kind.BATCH, stage=5,
               params=_pgd(20, attack=f'{PGD20} on source'), cost=20.4, source=True),
    # TI-FGSM as defined in Dong et al. (CVPR 2019): one step of size eps (alpha = eps / steps) with their Gaussian
    # kernel (15x15, radius 3 sigma, the paper's best setting and torchattack's default); no momentum, no input
    # diversity
    AttackSpec(TI_FGSM, 'TI-FGSM (black-box)', Kind.BATCH, stage=2,
               params={'steps': 1, 'kern_len': 15, 'n_sig': 3, 'alpha': EpsFraction('steps')}, cost=1.4,
               source=True, blackbox=True, paper=PAPER_TABLE_3),
    # DI2-FGSM as in Xie et al. (CVPR 2019): p = 0.5; resize to rnd x rnd, rnd uniform in [W, W * 330/299), then
    # zero-pad at a random place to W * 330/299 (their 299 -> [299, 330) -> 330, scaled to CIFAR: 32 -> {32, 33,
    # 34} -> 35, nearest neighbour as in torchattack); step 1/255 and N = min(eps + 4, 1.25 eps) iterations (eps in
    # 0-255 units: 10 at 8/255), no momentum. Its gradients are on 35x35 copies, ~1.2 of a 32x32 one.
    AttackSpec(DI_FGSM, 'DI-FGSM (black-box)', Kind.BATCH, stage=3,
               params={'steps': 10, 'alpha': 1 / 255, 'resize_rate': 330 / 299, 'diversity_prob': 0.5},
               cost=10 * 1.2 + 0.4, source=True, blackbox=True, paper=PAPER_TABLE_3),
    # NAttack's CIFAR-10 settings (authors' code): population 300, sigma 0.1, learning rate 0.02, mean initialised
    # N(0, 0.001^2); at most 40,000 queries per image (the FSR paper's protocol, after CAS)
    AttackSpec(NATTACK, 'NAttack (black-box)', Kind.QUERY, stage=10,
               params={'max_queries': 40_000, 'npop': 300, 'sigma': 0.1, 'lr': 0.02, 'init_std': 0.001},
               blackbox=True, paper=PAPER_TABLE_3, subset=NATTACK_N),
)
#: report key -> its declaration
SPECS: Dict[str, AttackSpec] = {a.name: a for a in REGISTRY}
#: the masking checks' place in the run order: they work on a subset and cost ~2 PGD-100s of it; NAttack on its
#: 1,000 images costs less than AutoAttack on 10,000, more than AutoAttack rand on 1,000
_MASKING_STAGE = 8


def spec(name: str) -> AttackSpec:
    """The declaration of report key ``name``; ValueError for an unknown one."""
    if name not in SPECS:
        raise ValueError(f'Unknown attack {name!r}; choose from {", ".join(SPECS)}.')
    return SPECS[name]


def names(where: Callable[[AttackSpec], bool]) -> Tuple[str, ...]:
    """The report keys whose declaration satisfies ``where``, in declaration order."""
    return tuple(a.name for a in REGISTRY if where(a))


#: every attack of the suite (the Ensemble is computed from them, not run)
ATTACKS = names(lambda a: a.stage is not None)
DEFAULT_ATTACKS = names(lambda a: a.default)
#: the per-example Ensemble is correct under all of these that ran
ENSEMBLE_ATTACKS = names(lambda a: a.ensemble)
#: attacks crafted on a source model (``transfer_model``, ``--transfer-from``) and evaluated on the model
SOURCE_ATTACKS = names(lambda a: a.source)
BLACKBOX_ATTACKS = names(lambda a: a.blackbox)
#: the order stages run in: cheapest first
STAGE_ORDER = tuple(sorted(ATTACKS + (MASKING,), key=lambda s: _MASKING_STAGE if s == MASKING else SPECS[s].stage))
#: first-n subsets applied unless ``subsets`` names the attack: NAttack's protocol (the paper, after CAS)
DEFAULT_SUBSETS: Dict[str, int] = {a.name: a.subset for a in REGISTRY if a.subset is not None}
#: the white-box attacks a black-box attack is compared with, strongest first
WHITEBOX_REFERENCE = tuple(sorted(names(lambda a: a.reference is not None), key=lambda n: SPECS[n].reference))
DISPLAY_NAMES: Dict[str, str] = {a.name: a.display for a in REGISTRY}
#: report key -> the AutoAttack version it holds
AUTOATTACK_VERSIONS: Dict[str, str] = {a.name: a.aa_version for a in REGISTRY if a.aa_version is not None}
