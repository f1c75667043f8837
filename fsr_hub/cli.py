"""Argument types and flags shared by the command-line tools (``tools/*.py``): one parser per kind of value, one
set of FSR flags (``--fsr-*``) for every tool that builds a model by name, and how a long-running tool is stopped."""
import argparse
import contextlib
import json
import signal
import threading
from fractions import Fraction
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

__all__ = ['number', 'int_tuple', 'comma_list', 'positions', 'add_fsr_arguments', 'fsr_model_args', 'fsr_flags',
           'agreed_model_args', 'interruptible']

#: ``--fsr-*`` flag destinations, which are also the ``fsr_hub.models.create`` keyword arguments they set
FSR_FLAGS = ('fsr_positions', 'fsr_tau', 'fsr_hidden', 'fsr_separation', 'fsr_recalibration')


def number(text: str) -> float:
    """A float written as a decimal or a fraction: ``0.5``, ``8/255``."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f'not a number: {text!r} (write e.g. 0.03 or 8/255)') from None


def int_tuple(text: str) -> Tuple[int, ...]:
    """Comma-separated integers: ``75,90`` -> (75, 90)."""
    try:
        return tuple(int(v) for v in text.split(',') if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list]:
    """An argument type for a comma list of ``kind`` values: ``comma_list(int)('5,20')`` -> [5, 20]."""
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(',') if v.strip()]
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f'not a comma list of {kind.__name__}: {text!r}') from None
    return parse


def positions(text: str) -> list:
    """Comma-separated FSR positions: feature-module names, or integers as indices into ``feature_info``:
    ``layer3,layer4`` -> ['layer3', 'layer4'], ``-1`` -> [-1]; ``''`` -> [] (no FSR: an fsr_hub architecture's
    vanilla twin)."""
    out: list = []
    for v in (s.strip() for s in text.split(',')):
        if v:
            out.append(int(v) if v.lstrip('-').isdigit() else v)
    return out


def add_fsr_arguments(parser: argparse.ArgumentParser, prefix: str = '') -> None:
    """The ``--fsr-*`` flags: FSR after chosen feature stages of any timm CNN (``fsr_hub.add_fsr``), or other
    positions / settings for fsr_hub's own architectures. Unset flags stay None (the constructor's default)."""
    g = parser.add_argument_group(
        'FSR on any timm CNN (e.g. --model resnet50 --fsr-positions layer3,layer4); a flag not given keeps the '
        "model's own value")
    g.add_argument('--fsr-positions', type=positions, default=None, metavar='M1,M2',
                   help="feature_info module names (or indices) FSR follows; '' for none (an fsr_hub model's "
                        'vanilla twin)')
    g.add_argument('--fsr-tau', type=number, default=None, help='Gumbel-sigmoid temperature of the FSR mask (0.1)')
    g.add_argument('--fsr-hidden', type=int, default=None, help='channels of the separation/recalibration nets (64)')
    g.add_argument('--fsr-separation', action=argparse.BooleanOptionalAction, default=None,
                   help='the separation net (ablation: --no-fsr-separation)')
    g.add_argument('--fsr-recalibration', action=argparse.BooleanOptionalAction, default=None,
                   help='the recalibration net (ablation: --no-fsr-recalibration)')


def fsr_model_args(args: Union[argparse.Namespace, Mapping[str, Any]]) -> Dict[str, Any]:
    """The ``create`` keyword arguments of the ``--fsr-*`` flags that were given (an empty dict: none)."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return {k: values[k] for k in FSR_FLAGS if values.get(k) is not None}


def fsr_flags(model_args: Mapping[str, Any]) -> List[str]:
    """The ``--fsr-*`` flags that give ``model_args`` back through :func:`fsr_model_args` (e.g. a release's
    config.json ``model_args`` handed to ``tools/verify.py``); a key that no flag sets is a ValueError."""
    other = sorted(set(model_args) - set(FSR_FLAGS))
    if other:
        raise ValueError(f'model_args {other} have no --fsr-* flag (flags exist for {", ".join(FSR_FLAGS)}).')
    flags: List[str] = []
    for key in FSR_FLAGS:  # the flags' own order, so equal model_args give equal commands
        if key not in model_args:
            continue
        value, flag = model_args[key], '--' + key.replace('_', '-')
        if isinstance(value, bool):
            flags.append(flag if value else f'--no-{flag[2:]}')
        elif key == 'fsr_positions':
            names = [value] if isinstance(value, (str, int)) else value
            flags.append(f'{flag}={",".join(str(v) for v in names)}')  # '=': '-1' is not read as an option
        else:
            flags.append(f'{flag}={value!r}')
    return flags


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as a JSON file gives them back


def agreed_model_args(given: Mapping[str, Any], recorded: Optional[Mapping[str, Any]], where: str) -> Dict[str, Any]:
    """The model arguments of a run: ``recorded`` (e.g. a train summary's ``model_args``) when there is a record,
    else ``given`` (the flags). Flags given beside a record must repeat its values (ValueError naming ``where``)."""
    if recorded is None:
        return dict(given)
    if not isinstance(recorded, Mapping):
        raise ValueError(f'{where}: model_args must be a JSON object, not {type(recorded).__name__}.')
    recorded = _plain(dict(recorded))
    differ = {k: v for k, v in _plain(dict(given)).items() if recorded.get(k, '<not set>') != v}
    if differ:
        theirs = {k: recorded.get(k, '<not set>') for k in differ}
        raise ValueError(f'the flags {differ} differ from the model_args of {where} ({theirs}); drop the flags to '
                         f'use the recorded ones.')
    return recorded


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f'signal {signum}')


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt inside the block (the tool then saves and exits), also when the
    process was started with SIGINT ignored, as a shell's background job is; the handlers before are restored.
    A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
