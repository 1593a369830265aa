"""Argument types shared by the sub-commands (argparse ``type=`` callables with messages naming the value)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """A parser of values of ``kind`` (int or float) that must be > 0."""
    what = "a whole number" if kind is int else "a number"

    def parse(value: str) -> int | float:
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value!r}")
        return v

    return parse
