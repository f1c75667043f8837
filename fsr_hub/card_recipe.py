"""A training run's recipe in one line of the model card (attack, objective, epochs, optimiser, lr schedule,
precision), from the ``config`` of its ``train_summary.json``.
"""
from typing import Any, Mapping, Optional

from . import paper

__all__ = ['describe_recipe', 'short_recipe', 'train_attack_name']


_TRAIN_ATTACKS = {'fgsm-rs': 'FGSM-RS', 'n-fgsm': 'N-FGSM'}


def _frac255(v: Any) -> str:
    return f'{v * 255:.3g}/255' if isinstance(v, (int, float)) and not isinstance(v, bool) else '?'


def train_attack_name(config: Mapping[str, Any]) -> Optional[str]:
    """The training attack a trainer config names (FGSM-RS, N-FGSM, PGD-k), None when it records none."""
    if not {'steps', 'eps'} <= set(config):
        return None
    steps, attack = config['steps'], config.get('attack')
    if attack in _TRAIN_ATTACKS:
        return _TRAIN_ATTACKS[attack]
    return 'FGSM-RS' if steps == 1 and config.get('random_start') else f'PGD-{steps}'


def short_recipe(config: Mapping[str, Any], epochs: Any) -> Optional[str]:
    """A few words of a trainer config for a table cell: attack, objective unless plain AT, lr schedule, epochs
    (e.g. 'FGSM-RS, cyclic lr, 10 epochs'); None when the config records no attack."""
    attack = train_attack_name(config)
    if attack is None:
        return None
    objective = str(config.get('objective', 'at'))
    parts = [attack]
    if objective == 'adml':
        parts.append('ADML fine-tuning')
    elif objective != 'at':
        parts.append(objective.upper())
    return ', '.join(parts + [f"{config.get('schedule', 'piecewise')} lr", f'{epochs} epochs'])


def describe_recipe(config: Mapping[str, Any]) -> Optional[str]:
    """One line of a trainer config (``train_summary.json``'s ``config``): the training attack, objective and FSR
    loss weights, epochs, optimiser and lr schedule, batch and precision; None when it records no attack."""
    name = train_attack_name(config)
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
