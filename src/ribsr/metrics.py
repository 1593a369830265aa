"""Image-quality metrics with the conventions of the SR literature (MATLAB / BasicSR).

Both images are first rounded to 8 bits, optionally reduced to the BT.601 luma (Y) channel,
and ``crop_border`` pixels are removed from each side. PSNR uses a peak of 255; SSIM uses an
11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, and only the positions where
the window lies fully inside the image ("valid" filtering); multi-channel SSIM is the mean over
channels.

Accepted inputs (each image independently):

- numpy ``uint8`` arrays, (H, W) or (H, W, C), values 0..255;
- numpy float arrays, (H, W) or (H, W, C), values in [0, 1];
- torch tensors, (H, W), (C, H, W) or (1, C, H, W): ``uint8`` with values 0..255, or float
  with values in [0, 1].

Float values slightly outside [0, 1] (a network's overshoot, up to ``FLOAT_SLACK``) are
clipped; floats further out, other integer dtypes, NaNs and unclear layouts raise
``ValueError`` rather than being guessed at (floats in 0..255 are the usual mistake).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["FLOAT_SLACK", "psnr", "rgb_to_y", "ssim", "to_uint8"]

FLOAT_SLACK = 0.5  # float inputs must lie in [-FLOAT_SLACK, 1 + FLOAT_SLACK]; then clipped to [0, 1]

_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2


def to_uint8(img: Any) -> np.ndarray:
    """An image as a numpy uint8 array, (H, W, C) with C = 1 or more (see the module docstring).

    Floats in [0, 1] are scaled by 255 and rounded half away from zero (as MATLAB's ``im2uint8``).
    """
    if isinstance(img, torch.Tensor):
        t = img.detach()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of shape {tuple(t.shape)}")
            t = t[0]
        if t.ndim == 3:
            t = t.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        elif t.ndim != 2:
            raise ValueError(f"tensors must be (H, W), (C, H, W) or (1, C, H, W), got {tuple(img.shape)}")
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        arr = t.cpu().numpy()
    elif isinstance(img, np.ndarray):
        arr = img
        if arr.ndim == 3 and arr.shape[2] > 4 and arr.shape[0] in (1, 3):
            raise ValueError(
                f"numpy images must be (H, W) or (H, W, C); shape {arr.shape} looks like (C, H, W)"
            )
        if arr.ndim not in (2, 3):
            raise ValueError(f"numpy images must be (H, W) or (H, W, C), got shape {arr.shape}")
    else:
        raise ValueError(f"expected a numpy array or torch tensor, got {type(img).__name__}")

    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W) -> (H, W, 1)
    if arr.size == 0:
        raise ValueError(f"empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"unsupported dtype {arr.dtype}: pass uint8 (0..255) or floats in [0, 1]")
    lo, hi = float(arr.min()), float(arr.max())
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError("image contains NaN")
    if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
        raise ValueError(
            f"float image values span [{lo:.4g}, {hi:.4g}]; floats must be in [0, 1] "
            "(for 0..255 data pass a uint8 array or divide by 255)"
        )
    return np.floor(np.clip(arr.astype(np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma as MATLAB's ``rgb2ycbcr``, on the 0..255 scale, not rounded.

    ``img`` is (H, W, 3) RGB with values 0..255 (any dtype); returns float64 (H, W) in
    [16, 235]: ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects (H, W, 3) RGB, got shape {img.shape}")
    rgb = img.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def _prepare(img1: Any, img2: Any, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 (H, W, C) on the 0..255 scale, converted and cropped."""
    a, b = to_uint8(img1), to_uint8(img2)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape} (as (H, W, C))")
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative integer, got {crop_border!r}")
    h, w, c = a.shape
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {h}x{w} image")
    if y_channel and c == 3:
        a, b = rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]  # (H, W, 1)
    elif y_channel and c != 1:
        raise ValueError(f"y_channel needs RGB or grayscale images, got {c} channels")
    a, b = a.astype(np.float64), b.astype(np.float64)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    return a, b


def psnr(img1: Any, img2: Any, crop_border: int = 0, y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB (peak 255), ``inf`` for identical images.

    Both images are rounded to uint8 first. ``y_channel`` compares the BT.601 Y channel of RGB
    images (grayscale images are used as they are); otherwise the mean squared error is over
    all channels. ``crop_border`` pixels are removed from every side.
    """
    a, b = _prepare(img1, img2, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _gaussian_window() -> np.ndarray:
    x = np.arange(_SSIM_WIN, dtype=np.float64) - (_SSIM_WIN - 1) / 2
    g = np.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two (H, W) float64 maps on the 0..255 scale."""
    g = _gaussian_window()

    def blur(x: np.ndarray) -> np.ndarray:  # (N, H, W) -> (N, H-10, W-10), separable, 'valid'
        x = sliding_window_view(x, _SSIM_WIN, axis=1) @ g  # (N, H-10, W, 11) @ (11,) -> (N, H-10, W)
        return sliding_window_view(x, _SSIM_WIN, axis=2) @ g  # -> (N, H-10, W-10)

    mu1, mu2, e11, e22, e12 = blur(np.stack([a, b, a * a, b * b, a * b]))  # each (H-10, W-10)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq, sigma2_sq, sigma12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu12
    ssim_map = ((2 * mu12 + _SSIM_C1) * (2 * sigma12 + _SSIM_C2)) / (
        (mu1_sq + mu2_sq + _SSIM_C1) * (sigma1_sq + sigma2_sq + _SSIM_C2)
    )
    return float(ssim_map.mean())


def ssim(img1: Any, img2: Any, crop_border: int = 0, y_channel: bool = True) -> float:
    """Structural similarity (mean SSIM), with the same input handling as :func:`psnr`.

    11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, computed only where
    the window fits inside the (cropped) image; multi-channel images average their channels.
    """
    a, b = _prepare(img1, img2, crop_border, y_channel)
    h, w, c = a.shape
    if min(h, w) < _SSIM_WIN:
        raise ValueError(f"SSIM needs at least {_SSIM_WIN}x{_SSIM_WIN} pixels after cropping, got {h}x{w}")
    return float(np.mean([_ssim_channel(a[..., k], b[..., k]) for k in range(c)]))
