"""ribsr.imresize: bit-exact against the MATLAB-made benchmark LR files, and against a direct port."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ribsr.imresize import _round_clip_, imresize

FAMILIES = {"LR_bicubic": "symmetric", "LR_bicubic_MATLAB": "replicate"}


def _load(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_reproduces_benchmark_lr_files_bit_for_bit(datasets_dir, dataset, family, scale):
    hr_files = sorted((datasets_dir / dataset / "HR").glob("*.png"))
    assert hr_files, f"no HR images in {datasets_dir / dataset / 'HR'}"
    mismatches = []
    for hr_path in hr_files:
        hr = _load(hr_path)
        h, w = hr.shape[:2]
        hr = hr[: h - h % scale, : w - w % scale]  # mod-crop
        lr = _load(datasets_dir / dataset / family / f"X{scale}" / f"{hr_path.stem}x{scale}.png")
        out = imresize(hr, 1 / scale, boundary=FAMILIES[family])
        assert out.dtype == np.uint8
        if out.shape != lr.shape or not np.array_equal(out, lr):
            mismatches.append(hr_path.stem)
    assert not mismatches, f"differ from {family}/X{scale}: {mismatches}"


# ---------------------------------------------------------------- a direct, loop-based port of MATLAB
def _ref_cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def _ref_resize_1d(line: list[float], out_len: int, scale: float, boundary: str) -> list[float]:
    n = len(line)
    width = 4 / scale if scale < 1 else 4
    out = []
    for i in range(1, out_len + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = []
        for j in range(left, left + math.ceil(width) + 2):
            wgt = scale * _ref_cubic(scale * (u - j)) if scale < 1 else _ref_cubic(u - j)
            if boundary == "replicate":
                k = min(max(j, 1), n)
            else:  # mirror: 0 -> 1, -1 -> 2, n + 1 -> n, ...
                k = j
                while k < 1 or k > n:
                    k = 1 - k if k < 1 else 2 * n + 1 - k
            taps.append((wgt, k - 1))
        total = sum(wgt for wgt, _ in taps)
        out.append(sum(wgt / total * line[k] for wgt, k in taps))
    return out


def _ref_round(v: float) -> float:
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def _ref_imresize(img: np.ndarray, out_hw, scales, boundary: str) -> np.ndarray:
    """MATLAB imresize bicubic, one output pixel at a time; float64 or uint8 HW(C) input."""
    x = img.astype(np.float64)
    if x.ndim == 2:
        x = x[:, :, None]

    def resize_rows(a: np.ndarray, n_out: int, scale: float) -> np.ndarray:  # along axis 0
        out = np.empty((n_out, *a.shape[1:]))
        for j in range(a.shape[1]):
            for ch in range(a.shape[2]):
                out[:, j, ch] = _ref_resize_1d(list(a[:, j, ch]), n_out, scale, boundary)
        if img.dtype == np.uint8:
            out = np.clip(np.vectorize(_ref_round)(out), 0, 255)
        return out

    def resize_cols(a: np.ndarray, n_out: int, scale: float) -> np.ndarray:
        return resize_rows(a.transpose(1, 0, 2), n_out, scale).transpose(1, 0, 2)

    if scales[1] < scales[0]:  # MATLAB resizes the axis with the smaller factor first
        x = resize_rows(resize_cols(x, out_hw[1], scales[1]), out_hw[0], scales[0])
    else:
        x = resize_cols(resize_rows(x, out_hw[0], scales[0]), out_hw[1], scales[1])
    x = x.astype(img.dtype)
    return x[:, :, 0] if img.ndim == 2 else x


@pytest.mark.parametrize("boundary", ["symmetric", "replicate"])
@pytest.mark.parametrize(
    "in_hw, kwargs, out_hw",
    [
        ((13, 11), {"scale": 0.5}, (7, 6)),
        ((13, 11), {"scale": 1 / 3}, (5, 4)),
        ((12, 9), {"scale": 0.37}, (5, 4)),
        ((7, 5), {"scale": 2}, (14, 10)),
        ((7, 5), {"scale": 1.7}, (12, 9)),
        ((9, 8), {"size": (4, 13)}, (4, 13)),  # the width grows, the height shrinks: width first
        ((9, 8), {"size": (15, 3)}, (15, 3)),
    ],
)
def test_matches_direct_port(in_hw, kwargs, out_hw, boundary):
    rng = np.random.default_rng(sum(in_hw) + len(boundary))
    img8 = rng.integers(0, 256, size=(*in_hw, 3), dtype=np.uint8)
    out8 = imresize(img8, boundary=boundary, **kwargs)
    assert out8.shape == (*out_hw, 3) and out8.dtype == np.uint8
    if "scale" in kwargs:
        scales = (kwargs["scale"], kwargs["scale"])
    else:
        scales = (out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])
    np.testing.assert_array_equal(out8, _ref_imresize(img8, out_hw, scales, boundary))
    imgf = rng.random(in_hw)
    outf = imresize(imgf, boundary=boundary, **kwargs)
    assert outf.dtype == np.float64
    # Same formula, different summation order: float64 rounding differences only.
    np.testing.assert_allclose(outf, _ref_imresize(imgf, out_hw, scales, boundary), rtol=0, atol=1e-12)


def test_torch_layouts_match_numpy():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    expected = imresize(img, 0.5)  # (9, 12, 3)
    chw = torch.from_numpy(img).permute(2, 0, 1)  # (3, 17, 23)
    out = imresize(chw, 0.5)
    assert out.dtype == torch.uint8 and out.shape == (3, 9, 12)
    np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), expected)
    batch = torch.stack([chw, chw.flip(-1)])  # (2, 3, 17, 23)
    out_b = imresize(batch, 0.5)
    assert out_b.shape == (2, 3, 9, 12)
    np.testing.assert_array_equal(out_b[0].numpy(), out.numpy())
    np.testing.assert_array_equal(out_b[1].numpy(), imresize(chw.flip(-1), 0.5).numpy())
    gray = imresize(torch.from_numpy(img[:, :, 1]), 0.5)  # (H, W)
    np.testing.assert_array_equal(gray.numpy(), expected[:, :, 1])
    # float32 tensors compute in float32: agree with the float64 numpy path to float32 precision.
    f = batch.float() / 255
    out_f = imresize(f, 2.0)
    assert out_f.dtype == torch.float32 and out_f.shape == (2, 3, 34, 46)
    ref = imresize(img.astype(np.float64) / 255, 2.0)
    np.testing.assert_allclose(out_f[0].permute(1, 2, 0).numpy(), ref, rtol=0, atol=1e-5)


def test_float_is_not_clipped_and_uint8_is():
    img = np.zeros((8, 8), dtype=np.float64)
    img[:, 4:] = 1.0  # a step edge: bicubic overshoots on both sides
    out = imresize(img, 2.0)
    assert out.max() > 1.0 and out.min() < 0.0
    out8 = imresize((img * 255).astype(np.uint8), 2.0)
    assert out8.max() == 255 and out8.min() == 0


def test_constant_image_and_identity():
    const = np.full((10, 7, 3), 200, dtype=np.uint8)
    for s in (0.25, 0.5, 1 / 3, 2.0, 3.0):
        assert np.all(imresize(const, s) == 200)
    img = np.random.default_rng(1).integers(0, 256, size=(10, 7), dtype=np.uint8)
    np.testing.assert_array_equal(imresize(img, 1.0), img)
    np.testing.assert_array_equal(imresize(img, np.float32(0.5)), imresize(img, 0.5))  # numpy scalars


def test_integer_dtypes_keep_their_range():
    img16 = (np.random.default_rng(2).random((12, 12)) * 65535).astype(np.uint16)
    out16 = imresize(img16, 0.5)
    assert out16.dtype == np.uint16
    ref = np.clip(np.floor(imresize(img16.astype(np.float64), 0.5, size=None) + 0.5), 0, 65535)
    # Both passes round for uint16, the float path does not: at most one grey level apart.
    assert np.abs(out16.astype(np.int64) - ref).max() <= 1


def test_round_clip_is_half_away_from_zero_and_exact():
    x = torch.tensor([0.5, 1.5, 2.5, 254.5, 0.49999999999999994, 1.4999999999999998, -0.5, -2.5, -2.4,
                      300.0, -7.0], dtype=torch.float64)
    out = _round_clip_(x.clone(), -3, 255)
    assert out.tolist() == [1.0, 2.0, 3.0, 255.0, 0.0, 1.0, -1.0, -3.0, -2.0, 255.0, -3.0]
    assert _round_clip_(x.clone(), 0, 255).tolist()[:6] == [1.0, 2.0, 3.0, 255.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((np.zeros((4, 4)), 0.5), {"boundary": "reflect"}, "boundary"),
        ((np.zeros((4, 4)), -1.0), {}, "scale"),
        ((np.zeros((4, 4)), float("inf")), {}, "scale"),
        ((np.zeros((4, 4)),), {}, "exactly one"),
        ((np.zeros((4, 4)), 0.5), {"size": (2, 2)}, "exactly one"),
        ((np.zeros((4, 4)),), {"size": (2, 0)}, "size"),
        ((np.zeros((4, 4)),), {"size": (2.5, 2)}, "size"),
        ((np.zeros((4, 4, 3, 2)), 0.5), {}, "shape"),
        ((torch.zeros(1, 1, 1, 4, 4), 0.5), {}, "shape"),
        ((np.zeros((4, 4), dtype=bool), 0.5), {}, "dtype"),
        ((torch.zeros(4, 4, dtype=torch.int32), 0.5), {}, "dtype"),
        ((np.zeros((0, 4)), 0.5), {}, "empty"),
        (([[0, 1], [2, 3]], 0.5), {}, "numpy array or torch tensor"),
    ],
)
def test_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        imresize(*args, **kwargs)


@pytest.mark.parametrize("img", [np.zeros((100, 80, 3), np.uint8), torch.zeros(2, 3, 100, 80)], ids=["numpy", "torch"])
@pytest.mark.parametrize("args, kwargs, match", [
    ((1e-9,), {}, r"imresize: scale 1e-09 of an image of shape .* needs 1 x 4,000,000,002 resampling weights on "
                  r"axis \d, more than 16,777,216; when shrinking, the kernel spans 4/scale source pixels"),
    ((1e5,), {}, r"imresize: scale 100000.0 of an image of shape .* gives a 10,000,000x8,000,000 output, which needs "
                 r"about [\d,.]+ GiB of memory; [\d,.]+ GiB is free"),
    ((), {"size": (10**6, 10**6)}, r"imresize: size \(1000000, 1000000\) of .* gives a 1,000,000x1,000,000 output"),
    ((), {"size": (1e6, 1e6)}, r"imresize: size \(1000000.0, 1000000.0\) of .* 1,000,000x1,000,000 output"),
])
def test_a_resize_too_big_is_refused_up_front(img, args, kwargs, match, monkeypatch):
    """These hung or ran out of memory after a long time; now refused before any work."""
    module = importlib.import_module("ribsr.imresize")  # ribsr.imresize is also the function's name

    def no_work(*a, **k):
        raise AssertionError("resized although refused")

    monkeypatch.setattr(module, "_contributions", no_work)
    with pytest.raises(ValueError, match=match):
        imresize(img, *args, **kwargs)


def test_a_strong_shrink_within_the_weight_limit_works():
    assert imresize(np.full((50, 60), 7, np.uint8), 1e-3).tolist() == [[7]]  # 1 x 4002 weights per axis
