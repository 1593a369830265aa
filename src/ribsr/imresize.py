"""MATLAB-compatible bicubic resizing (``imresize(A, scale, 'bicubic')`` with antialiasing).

The standard SR benchmark low-resolution images were made with MATLAB's ``imresize``; this
module reproduces it bit for bit on uint8 images, so that low-resolution inputs, bicubic
baselines and PSNR numbers match the published ones.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import TypeVar

import numpy as np
import torch

__all__ = ["BOUNDARIES", "MAX_WEIGHTS", "imresize"]

# "symmetric": out-of-range source indices are mirrored (..., 2, 1, 1, 2, ...), current MATLAB.
# "replicate": out-of-range source indices are clamped to the edge, older MATLAB (e.g. RCAN's LR files).
BOUNDARIES = ("symmetric", "replicate")

_KERNEL_WIDTH = 4.0  # support of the cubic kernel, in source pixels

# At most this many resampling weights per axis (output pixels x kernel taps; a few float64 arrays of it are
# built): shrinking by s widens the kernel to 4/s source pixels, so that a scale of 1e-9 asked for 4e9 taps.
MAX_WEIGHTS = 1 << 24

Image = TypeVar("Image", np.ndarray, torch.Tensor)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB's ``cubic``."""
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    return (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) + (
        -0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2
    ) * ((absx > 1) & (absx <= 2))


def _contributions(
    in_length: int, out_length: int, scale: float, boundary: str, antialiasing: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based source indices, both (out_length, P), as MATLAB's ``contributions``."""
    kernel_width = _KERNEL_WIDTH
    shrink = scale < 1 and antialiasing
    if shrink:
        kernel_width = kernel_width / scale
    x = np.arange(1, out_length + 1, dtype=np.float64)  # 1-based output coordinates
    u = x / scale + 0.5 * (1 - 1 / scale)  # their positions in source coordinates (1-based)
    left = np.floor(u - kernel_width / 2)
    p = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(p, dtype=np.float64)[None, :]  # (out, P), 1-based
    dist = u[:, None] - indices
    weights = scale * _cubic(scale * dist) if shrink else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    idx = indices.astype(np.int64) - 1  # 0-based
    if boundary == "symmetric":
        # aux = [0, 1, ..., n-1, n-1, ..., 0]; index = aux[i mod 2n]
        aux = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
        idx = aux[np.mod(idx, 2 * in_length)]
    else:
        idx = np.clip(idx, 0, in_length - 1)
    keep = np.any(weights != 0, axis=0)  # drop taps that are zero for every output
    return weights[:, keep], idx[:, keep]


@lru_cache(maxsize=64)
def _weight_matrix(
    in_length: int,
    out_length: int,
    scale: float,
    boundary: str,
    antialiasing: bool,
    dtype: torch.dtype,
    device: str,
) -> torch.Tensor:
    """Sparse (out_length, in_length) matrix whose rows hold the resampling weights."""
    weights, idx = _contributions(in_length, out_length, scale, boundary, antialiasing)
    n_out, n_taps = weights.shape
    rows = np.repeat(np.arange(n_out), n_taps)
    coords = torch.from_numpy(np.stack([rows, idx.ravel()]))
    values = torch.from_numpy(weights.ravel()).to(dtype)
    # Mirrored/clamped taps can hit the same source pixel twice: coalesce() adds them.
    mat = torch.sparse_coo_tensor(coords, values, (out_length, in_length), check_invariants=True)
    return mat.coalesce().to(device)


def _resize_axis(
    x: torch.Tensor,
    axis: int,
    out_length: int,
    scale: float,
    boundary: str,
    antialiasing: bool,
    int_range: tuple[int, int] | None,
) -> torch.Tensor:
    """Resample ``x`` along ``axis``; round half away from zero and clip when ``int_range`` is set."""
    mat = _weight_matrix(x.shape[axis], out_length, scale, boundary, antialiasing, x.dtype, str(x.device))
    moved = x.movedim(axis, 0)
    rest = moved.shape[1:]
    flat = moved.reshape(moved.shape[0], -1)  # (in_length, everything else)
    out = torch.sparse.mm(mat, flat)  # (out_length, everything else)
    if int_range is not None:
        out = _round_clip_(out, *int_range)
    return out.reshape(out_length, *rest).movedim(0, axis)


def _round_clip_(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Clip to [lo, hi] and round half away from zero (MATLAB's ``round``), in place where possible.

    Clipping first is equivalent because the bounds are integers. The fraction is compared with
    0.5 exactly, avoiding the rounding error of ``floor(x + 0.5)``.
    """
    x.clamp_(lo, hi)
    sign = None
    if lo < 0:
        sign = torch.sign(x)
        x.abs_()
    whole = torch.floor(x)
    x.sub_(whole).ge_(0.5)  # x is now 1.0 where the fraction is >= 0.5, else 0.0
    whole.add_(x)
    return whole if sign is None else whole.mul_(sign)


def _output_size(
    in_size: tuple[int, int], scale: float | None, size: tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Output (h, w) and per-axis scale factors, following MATLAB's rules."""
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not scale > 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale!r}")
        scale = float(scale)
        out = (math.ceil(in_size[0] * scale), math.ceil(in_size[1] * scale))
        return out, (scale, scale)
    try:
        out = tuple(int(s) for s in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"size must be a pair of positive integers (h, w), got {size!r}") from None
    if len(out) != 2 or min(out) <= 0 or any(int(s) != s for s in size):  # type: ignore[union-attr]
        raise ValueError(f"size must be a pair of positive integers (h, w), got {size!r}")
    return out, (out[0] / in_size[0], out[1] / in_size[1])  # type: ignore[return-value]


def _check_cost(shape: tuple[int, ...], axes: tuple[int, int], out_size: tuple[int, int],
                scales: tuple[float, float], antialiasing: bool, itemsize: int, device: torch.device,
                asked: str) -> None:
    """Raise ValueError naming ``asked`` (the scale or size given) before any work when the resize cannot be
    done: more memory than is free for the input, the intermediate and the output (``itemsize`` bytes a sample),
    or more than :data:`MAX_WEIGHTS` weights on an axis."""
    rest = math.prod(shape) // (shape[axes[0]] * shape[axes[1]])  # channels, images
    order = sorted(range(2), key=lambda k: scales[k])
    mid = [shape[axes[0]], shape[axes[1]]]
    mid[order[0]] = out_size[order[0]]
    pixels = shape[axes[0]] * shape[axes[1]] + mid[0] * mid[1] + out_size[0] * out_size[1]
    need = pixels * rest * itemsize
    if need > 1 << 28:  # 256 MiB; below, not worth asking the system (imresize runs once per training sample)
        from ribsr.memory import available_memory

        free = available_memory(device)
        if need > free:
            raise ValueError(f"imresize: {asked} of an image of shape {shape} gives a "
                             f"{out_size[0]:,}x{out_size[1]:,} output, which needs about {need / 2**30:,.1f} GiB of "
                             f"memory; {free / 2**30:,.1f} GiB is free")
    for k in range(2):
        widened = scales[k] < 1 and antialiasing
        taps = math.ceil(_KERNEL_WIDTH / scales[k] if widened else _KERNEL_WIDTH) + 2
        if out_size[k] * taps > MAX_WEIGHTS:
            why = ("; when shrinking, the kernel spans 4/scale source pixels: use a larger scale (or resize in steps)"
                   if widened else "")
            raise ValueError(f"imresize: {asked} of an image of shape {shape} needs {out_size[k]:,} x {taps:,} "
                             f"resampling weights on axis {axes[k]}, more than {MAX_WEIGHTS:,}{why}")


def imresize(
    img: Image,
    scale: float | None = None,
    boundary: str = "symmetric",
    *,
    size: tuple[int, int] | None = None,
    antialiasing: bool = True,
) -> Image:
    """Resize an image as MATLAB's ``imresize(img, scale, 'bicubic')`` does.

    Args:
        img: a numpy array, (H, W) or (H, W, C), or a torch tensor, (H, W), (C, H, W) or
            (B, C, H, W). Unsigned/signed integer arrays (e.g. uint8) and uint8 tensors are
            rounded (half away from zero) and clipped to their dtype's range after each of the
            two passes, as MATLAB does, and keep their dtype. Floating-point input keeps its dtype
            and is neither rounded nor clipped.
        scale: the resize factor (< 1 shrinks); the output size is ``ceil(scale * input size)``.
        boundary: ``"symmetric"`` mirrors out-of-range source pixels (current MATLAB, the EDSR
            ``LR_bicubic`` files) and ``"replicate"`` repeats the edge pixel (older MATLAB, the
            RCAN ``LR_bicubic_MATLAB`` files).
        size: the output ``(height, width)`` instead of ``scale``; each axis then uses its own
            factor ``out / in`` and the axis with the smaller factor is resized first.
        antialiasing: widen the kernel by ``1/scale`` when shrinking (MATLAB's default).

    Returns:
        The resized image, of the same kind, layout and dtype as ``img``. Computation is in
        float64 for integer and float64 input, float32 otherwise.

    Raises:
        ValueError: for bad arguments, and before any work when the resize cannot be done: a shrink
            so strong that an axis needs more than :data:`MAX_WEIGHTS` resampling weights (a scale
            of 1e-9), or an output that would not fit the memory free (a scale of 1e5, a size of
            1e6 x 1e6); the message names the scale or size given.
    """
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {list(BOUNDARIES)}, got {boundary!r}")
    if isinstance(img, np.ndarray):
        if img.ndim not in (2, 3):
            raise ValueError(f"numpy images must be (H, W) or (H, W, C), got shape {img.shape}")
        is_float = np.issubdtype(img.dtype, np.floating)
        if img.dtype == np.bool_ or not (is_float or np.issubdtype(img.dtype, np.integer)):
            raise ValueError(f"unsupported image dtype {img.dtype}; use an integer or float array")
        h_axis, w_axis = 0, 1
        info = None if is_float else np.iinfo(img.dtype)
        work_np = np.float64 if (not is_float or img.dtype == np.float64) else np.float32
        y = torch.from_numpy(img.astype(work_np))  # astype copies: writable, contiguous
    elif isinstance(img, torch.Tensor):
        if img.ndim not in (2, 3, 4):
            raise ValueError(
                f"tensors must be (H, W), (C, H, W) or (B, C, H, W), got shape {tuple(img.shape)}"
            )
        is_float = img.dtype.is_floating_point
        if not (is_float or img.dtype == torch.uint8):
            raise ValueError(f"unsupported tensor dtype {img.dtype}; use uint8 or a float dtype")
        h_axis, w_axis = img.ndim - 2, img.ndim - 1
        info = None if is_float else torch.iinfo(img.dtype)
        y = img.to(torch.float64 if (not is_float or img.dtype == torch.float64) else torch.float32)
    else:
        raise ValueError(f"img must be a numpy array or torch tensor, got {type(img).__name__}")
    int_range = None if info is None else (int(info.min), int(info.max))

    in_size = (img.shape[h_axis], img.shape[w_axis])
    if min(in_size) == 0:
        raise ValueError(f"cannot resize an empty image of shape {tuple(img.shape)}")
    out_size, scales = _output_size(in_size, scale, size)
    asked = f"scale {scale!r}" if scale is not None else f"size {size!r}"
    _check_cost(tuple(img.shape), (h_axis, w_axis), out_size, scales, antialiasing, y.element_size(), y.device,
                asked)

    # MATLAB resizes the axis with the smaller factor first; on a tie, the height first.
    order = sorted(range(2), key=lambda k: scales[k])
    axes = (h_axis, w_axis)
    for k in order:
        y = _resize_axis(y, axes[k], out_size[k], scales[k], boundary, antialiasing, int_range)

    if isinstance(img, np.ndarray):
        out_dtype = torch.from_numpy(np.empty(0, dtype=img.dtype)).dtype  # torch's twin of img.dtype
        return y.to(out_dtype).contiguous().numpy()
    return y.to(img.dtype).contiguous()
