"""The attack registry: every attack declared once, with everything the suite, the card and the paper table need,
and the tuples derived from it equal to the ones written out before it existed."""
import ast
from pathlib import Path

import pytest

from fsr_hub import attack_registry as R
from fsr_hub import blackbox, card, card_metrics, paper
from fsr_hub.__main__ import ATTACKS as CLI_ATTACKS
from fsr_hub.analysis import TABLE5A_ATTACKS
from fsr_hub.autoattack import AA_KEYS
from fsr_hub.evaluate import (
    ATTACKS, DEFAULT_ATTACKS, DEFAULT_SUBSETS, ENSEMBLE_ATTACKS, PRESETS, SOURCE_ATTACKS, STAGE_ORDER, attack_params,
)

PACKAGE = Path(__file__).resolve().parents[1] / 'fsr_hub'
EPS = 8 / 255


def test_every_attack_is_declared_with_what_the_suite_needs():
    assert len(R.SPECS) == len(R.REGISTRY)  # one declaration per key
    for a in R.REGISTRY:
        assert a.display and R.DISPLAY_NAMES[a.name] == a.display
        if a.kind is R.Kind.ENSEMBLE:
            assert a.stage is None and not a.params
            continue
        assert a.stage is not None
        assert a.cost > 0 or a.kind is R.Kind.QUERY  # NAttack's cost is estimated from its queries
        # parameters recorded in the report: every attack but clean and AutoAttack (which records its own)
        assert bool(a.params_at(EPS)) == (a.name != R.CLEAN and a.kind is not R.Kind.AUTOATTACK)
        assert (a.aa_version is not None) == (a.kind is R.Kind.AUTOATTACK)
    positions = sorted(a.stage for a in R.REGISTRY if a.stage is not None)
    assert positions == sorted(set(positions)) and len(STAGE_ORDER) == len(positions) + 1  # + the masking checks
    assert R.spec(R.PGD20).name == R.PGD20
    with pytest.raises(ValueError, match='Unknown attack'):
        R.spec('pgd7')


def test_derived_tuples_equal_the_literals_they_replace():
    assert R.ATTACKS == ATTACKS == ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'autoattack', 'autoattack_rand',
                                    'transfer', 'ti_fgsm', 'di_fgsm', 'nattack')
    assert R.DEFAULT_ATTACKS == DEFAULT_ATTACKS == ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'autoattack',
                                                    'autoattack_rand')
    assert R.ENSEMBLE_ATTACKS == ENSEMBLE_ATTACKS == ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw')
    assert R.SOURCE_ATTACKS == SOURCE_ATTACKS == ('transfer', 'ti_fgsm', 'di_fgsm')
    assert R.BLACKBOX_ATTACKS == blackbox.BLACKBOX_ATTACKS == ('ti_fgsm', 'di_fgsm', 'nattack')
    assert R.STAGE_ORDER == STAGE_ORDER == ('clean', 'fgsm', 'ti_fgsm', 'di_fgsm', 'pgd20', 'transfer', 'cw',
                                            'pgd100', 'masking_checks', 'autoattack_rand', 'nattack', 'autoattack')
    assert R.DEFAULT_SUBSETS == DEFAULT_SUBSETS == {'nattack': 1000} and R.NATTACK_N == blackbox.NATTACK_N == 1000
    assert R.WHITEBOX_REFERENCE == ('autoattack', 'autoattack_rand', 'pgd100', 'pgd20', 'cw')
    assert R.AUTOATTACK_VERSIONS == AA_KEYS == {'autoattack': 'standard', 'autoattack_rand': 'rand'}
    assert {a.name: a.cost for a in R.REGISTRY if a.kind is R.Kind.BATCH} == {
        'clean': 0.4, 'fgsm': 1.4, 'pgd20': 20.4, 'pgd100': 100.4, 'cw': 30.4, 'transfer': 20.4,
        'ti_fgsm': 1.4, 'di_fgsm': 10 * 1.2 + 0.4}
    assert PRESETS['quick'][0] == PRESETS['cpu'][0] == PRESETS['lease'][0] == TABLE5A_ATTACKS
    assert TABLE5A_ATTACKS == R.ENSEMBLE_ATTACKS + (R.AUTOATTACK,)
    assert paper.METRICS == ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw', 'ensemble', 'autoattack')
    assert paper.METRIC_NAMES == {'clean': 'Clean', 'fgsm': 'FGSM', 'pgd20': 'PGD-20', 'pgd100': 'PGD-100',
                                  'cw': 'C&W', 'ensemble': 'Ensemble', 'autoattack': 'AutoAttack'}
    assert paper.BLACKBOX_METRICS == ('ti_fgsm', 'di_fgsm', 'nattack')
    assert card.PER_CLASS_METRICS == ('clean', 'pgd20')
    assert card_metrics._EXTRA_METRICS == {'autoattack_rand': 'AutoAttack (rand)', 'transfer': 'Transfer (PGD-20)',
                                   'ti_fgsm': 'TI-FGSM (black-box)', 'di_fgsm': 'DI-FGSM (black-box)',
                                   'nattack': 'NAttack (black-box)'}
    assert CLI_ATTACKS == ('pgd20', 'fgsm', 'clean')


def test_parameters_equal_the_ones_written_out_before_in_the_report_order():
    expected = {
        'clean': {},
        'fgsm': {'eps': EPS, 'steps': 1},
        'pgd20': {'eps': EPS, 'alpha': EPS / 10, 'steps': 20, 'random_start': False},
        'pgd100': {'eps': EPS, 'alpha': EPS / 10, 'steps': 100, 'random_start': False},
        'cw': {'eps': EPS, 'alpha': EPS / 10, 'steps': 30, 'kappa': 50.0, 'random_start': False},
        'autoattack': {}, 'autoattack_rand': {},
        'transfer': {'eps': EPS, 'alpha': EPS / 10, 'steps': 20, 'random_start': False, 'attack': 'pgd20 on source'},
        'ti_fgsm': {'eps': EPS, 'steps': 1, 'kern_len': 15, 'n_sig': 3, 'alpha': EPS},
        'di_fgsm': {'eps': EPS, 'steps': 10, 'alpha': 1 / 255, 'resize_rate': 330 / 299, 'diversity_prob': 0.5},
        'nattack': {'eps': EPS, 'max_queries': 40_000, 'npop': 300, 'sigma': 0.1, 'lr': 0.02, 'init_std': 0.001},
    }
    for name, params in expected.items():
        got = attack_params(name, EPS)
        assert got == params and list(got) == list(params), name
        assert list(R.spec(name).params_at(EPS).items()) == list(params.items()), name
    # TI-FGSM's step follows its steps unless given; black-box attacks alone take overrides
    assert attack_params('ti_fgsm', 0.1, {'steps': 4})['alpha'] == 0.1 / 4
    assert list(attack_params('ti_fgsm', 0.1, {'alpha': 0.5})) == ['eps', 'steps', 'kern_len', 'n_sig', 'alpha']
    assert blackbox.TI_FGSM == {'steps': 1, 'kern_len': 15, 'n_sig': 3}
    assert blackbox.BLACKBOX_PARAMS == {'ti_fgsm': blackbox.TI_FGSM, 'di_fgsm': blackbox.DI_FGSM,
                                        'nattack': blackbox.NATTACK}
    for params_at in (attack_params, lambda name, eps, o: R.spec(name).params_at(eps, o)):
        with pytest.raises(ValueError, match=r"ti_fgsm has no parameter\(s\) \['x'\]; it takes \['alpha', "):
            params_at('ti_fgsm', EPS, {'x': 1})
        with pytest.raises(ValueError, match='only the black-box attacks'):
            params_at('cw', EPS, {'steps': 5})


def _string_constants(path: Path):
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def test_each_attack_name_is_written_in_at_most_two_modules():
    """The declaration and at most one table: everything else names attacks through the registry."""
    strings = {p.relative_to(PACKAGE).as_posix(): _string_constants(p) for p in PACKAGE.rglob('*.py')}
    for name in R.SPECS:
        modules = sorted(m for m, s in strings.items() if name in s)
        assert 'attack_registry.py' in modules and len(modules) <= 2, (name, modules)


def test_the_registry_is_pure_data():
    """The command line reads it before torch is needed: standard library only."""
    tree = ast.parse((PACKAGE / 'attack_registry.py').read_text())
    imported = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {'enum', 'dataclasses', 'types', 'typing'}, imported
