"""Argument types for the `conclave` commands: one clear message per bad value."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type accepting integers in [low, high] (no upper bound if None)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if number < low or (high is not None and number > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"{value!r} must be {bounds}")
        return number

    return parse


def non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number >= 0 or math.isinf(number):
        raise argparse.ArgumentTypeError(f"{value!r} must be a finite number >= 0")
    return number


port = int_between(1, 65535)
