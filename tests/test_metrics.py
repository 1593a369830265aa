"""ribsr.metrics: PSNR/SSIM conventions, cross-checked against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ribsr.metrics import psnr, rgb_to_y, ssim, to_uint8


def _pair(shape=(40, 36, 3), noise=12, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    b = np.clip(a.astype(np.int64) + rng.integers(-noise, noise + 1, size=shape), 0, 255).astype(np.uint8)
    return a, b


def _sk_ssim(a, b, channel_axis=None):
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
        channel_axis=channel_axis,
    )


def test_rgb_to_y_matches_bt601_formula():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [10, 200, 30]]], dtype=np.uint8)
    y = rgb_to_y(rgb)
    expected = [16.0, 235.0, 16 + 65.481, 16 + (65.481 * 10 + 128.553 * 200 + 24.966 * 30) / 255]
    np.testing.assert_allclose(y[0], expected, rtol=0, atol=1e-9)


# skimage filters the whole image (reflect padding) and then drops (win_size - 1) // 2 = 5 pixels
# per side before averaging, which leaves exactly the positions of 'valid' filtering, and its
# truncated Gaussian (truncate=3.5, sigma=1.5) is the same 11-tap window. So the two agree up to
# float64 summation order: tolerance 1e-9 (absolute, on SSIM in [-1, 1] and on PSNR in dB).
@pytest.mark.parametrize("crop", [0, 3])
def test_y_channel_matches_skimage(crop):
    a, b = _pair()
    sl = slice(crop, -crop) if crop else slice(None)
    ya, yb = rgb_to_y(a)[sl, sl], rgb_to_y(b)[sl, sl]
    assert psnr(a, b, crop_border=crop) == pytest.approx(peak_signal_noise_ratio(ya, yb, data_range=255),
                                                          abs=1e-9)
    assert ssim(a, b, crop_border=crop) == pytest.approx(_sk_ssim(ya, yb), abs=1e-9)


def test_rgb_matches_skimage_channel_average():
    a, b = _pair(seed=1)
    af, bf = a[2:-2, 2:-2].astype(np.float64), b[2:-2, 2:-2].astype(np.float64)
    assert psnr(a, b, 2, y_channel=False) == pytest.approx(
        peak_signal_noise_ratio(af, bf, data_range=255), abs=1e-9
    )
    assert ssim(a, b, 2, y_channel=False) == pytest.approx(_sk_ssim(af, bf, channel_axis=-1), abs=1e-9)


def test_grayscale_is_used_as_is():
    a, b = _pair(shape=(30, 30), seed=2)
    expected = peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=255)
    assert psnr(a, b) == pytest.approx(expected, abs=1e-9)
    assert psnr(a[:, :, None], b[:, :, None]) == pytest.approx(expected, abs=1e-9)
    assert ssim(a, b) == pytest.approx(_sk_ssim(a.astype(np.float64), b.astype(np.float64)), abs=1e-9)


def test_psnr_known_value_and_identical():
    a = np.full((16, 16, 3), 100, dtype=np.uint8)
    b = a.copy()
    b[..., :] = 110  # every Y value differs by exactly (65.481 + 128.553 + 24.966) * 10 / 255
    dy = (65.481 + 128.553 + 24.966) * 10 / 255
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / dy**2), abs=1e-9)
    assert psnr(a, b, y_channel=False) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_crop_border_changes_the_compared_region():
    a = np.zeros((20, 20), dtype=np.uint8)
    b = a.copy()
    b[0, :] = 255  # a difference only in the outermost row
    assert psnr(a, b) < 20
    assert psnr(a, b, crop_border=1) == math.inf


def test_float_and_tensor_inputs_are_rounded_to_uint8_first():
    a, b = _pair(seed=3)
    ref_p, ref_s = psnr(a, b, 4), ssim(a, b, 4)
    # Floats in [0, 1] that round back to the same uint8 values give the same numbers.
    af = a / 255 + 0.4 / 255
    bt = torch.from_numpy(b).permute(2, 0, 1).float().div(255) - 0.4 / 255  # (3, H, W)
    assert psnr(af, bt, 4) == ref_p
    assert ssim(af, bt.unsqueeze(0), 4) == ref_s
    assert psnr(torch.from_numpy(a).permute(2, 0, 1), b, 4) == ref_p  # uint8 tensor, CHW
    # Small overshoot of a network's output is clipped, as uint8 saturation would.
    over = af.copy()
    over[0, 0] = 1.2
    np.testing.assert_array_equal(to_uint8(over)[0, 0], [255, 255, 255])


@pytest.mark.parametrize(
    "img, match",
    [
        (np.full((12, 12, 3), 200.0), "floats must be in"),  # 0..255 data in a float array
        (np.full((12, 12, 3), 3, dtype=np.int64), "dtype"),
        (np.full((12, 12), np.nan), "NaN"),
        (np.zeros((3, 12, 12), dtype=np.uint8), "looks like"),
        (np.zeros((2, 12, 12, 3), dtype=np.uint8), "shape"),
        (torch.zeros(2, 3, 12, 12), "batch"),
        ([[0, 1]], "numpy array or torch tensor"),
    ],
)
def test_rejects_ambiguous_input(img, match):
    with pytest.raises(ValueError, match=match):
        to_uint8(img)


def test_rejects_mismatched_or_too_small_images():
    a, b = _pair(shape=(20, 20, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, b[:19])
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, b, crop_border=10)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, b, crop_border=-1)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a, b, crop_border=5)
    with pytest.raises(ValueError, match="channels"):
        psnr(np.zeros((12, 12, 4), np.uint8), np.zeros((12, 12, 4), np.uint8))
