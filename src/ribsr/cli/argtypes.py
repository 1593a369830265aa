"""Argument types shared by the sub-commands (argparse ``type=`` callables with messages naming the value)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _at_least(kind: type[int] | type[float], low: float, strict: bool) -> Callable[[str], int | float]:
    what = "a whole number" if kind is int else "a number"
    bound = f"> {low:g}" if strict else f">= {low:g}"

    def parse(value: str) -> int | float:
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if not (v > low if strict else v >= low):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value!r}")
        return v

    return parse


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """A parser of values of ``kind`` (int or float) that must be > 0."""
    return _at_least(kind, 0, strict=True)


def non_negative(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """A parser of values of ``kind`` (int or float) that must be >= 0."""
    return _at_least(kind, 0, strict=False)


def unit_interval(value: str) -> float:
    """A number from 0 to 1 (``--denoise``)."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {value!r}") from None
    if not 0 <= v <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {value!r}")
    return v


DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N"


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device``, with the same values in every command (resolved by :func:`ribsr.devices.resolve_device`)."""
    p.add_argument("--device", default=default, metavar="DEVICE", help=f"{DEVICE_HELP} (default: {default})")


ATTENTION_HELP = ("attention path: auto (default; exact float32: on the CPU ribsr's own kernel, compiled on first use, "
                  "where a C++ compiler is found), cpu_kernel (that kernel, or an error), concat, bias, reference, "
                  "naive, or concat_bf16 "
                  "(RIB attention in bfloat16 as the paper's code computes it: faster on CPUs with AMX/AVX512-BF16, "
                  "outputs within about 1e-3 of the exact ones)")


# The names of ribsr.model.attention.BACKENDS (spelled out: building the parser must not import torch; a test
# keeps the two equal).
ATTENTION_PATHS = ("auto", "bias", "concat", "concat_bf16", "cpu_kernel", "naive", "reference")


def add_attention(p: argparse.ArgumentParser) -> None:
    """``--attention``: the attention path of the network (:func:`ribsr.model.attention.make_backend`)."""
    p.add_argument("--attention", choices=ATTENTION_PATHS, default="auto", metavar="PATH", help=ATTENTION_HELP)


# --max-output-pixels of upscale, compare and serve: inputs whose output would have more pixels are refused.
DEFAULT_MAX_OUTPUT_PIXELS = 16384 * 16384


def tile_size(value: str) -> int | str:
    """``--tile``: ``auto`` or a side in pixels (0: no tiling)."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of pixels, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"tile must be >= 0, got {n}")
    return n


def pixel_count(value: str) -> int:
    """``--max-output-pixels``: a number of pixels, 0 for no limit (``1e8`` accepted)."""
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, got {value!r}") from None
    if not n >= 0 or n == float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: no limit), got {value}")
    return int(n)
