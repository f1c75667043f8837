"""Argument types shared by the command-line tools (``tools/*.py``): one parser per kind of value."""
import argparse
from fractions import Fraction
from typing import Tuple

__all__ = ['number', 'int_tuple']


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
