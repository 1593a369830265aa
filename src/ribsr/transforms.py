"""The 8 flips and rotations of an image (the dihedral group of the square), for numpy arrays and tensors alike:
self-ensemble at inference (:class:`ribsr.Upscaler`) and flip/rotation augmentation in training."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

__all__ = ["augment_index", "dihedral"]


def dihedral(x: ArrayT, k: int, inverse: bool = False, axes: tuple[int, int] = (-2, -1)) -> ArrayT:
    """One of the 8 flips/rotations of the (row, column) ``axes`` of ``x`` (k = 0..7: bit 2 transpose, then bit 1
    vertical flip, then bit 0 horizontal flip), or its inverse. A numpy array gives a view."""
    if not 0 <= k <= 7:
        raise ValueError(f"k must be from 0 to 7, got {k}")
    rows, cols = axes
    if isinstance(x, np.ndarray):
        def flip(t, axis):
            return np.flip(t, axis)
    else:
        def flip(t, axis):
            return t.flip(axis)
    steps: list[Callable] = []
    if k & 4:
        steps.append(lambda t: t.swapaxes(rows, cols))
    if k & 2:
        steps.append(lambda t: flip(t, rows))
    if k & 1:
        steps.append(lambda t: flip(t, cols))
    for step in reversed(steps) if inverse else steps:
        x = step(x)
    return x


def augment_index(hflip: bool, vflip: bool, transpose: bool) -> int:
    """The ``k`` of :func:`dihedral` for BasicSR's augmentation: flip left-right, then up-down, then transpose
    (each if asked). Flipping columns and then transposing is transposing and then flipping rows."""
    if transpose:
        return 4 | (2 if hflip else 0) | (1 if vflip else 0)
    return (2 if vflip else 0) | (1 if hflip else 0)
