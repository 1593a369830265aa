"""Synthetic real-world degradations: Real-ESRGAN's second-order model on the CPU, seeded by the caller.

An HR image becomes an LR image through, in order (Wang et al., "Real-ESRGAN", 2021):

1. blur with a random kernel (isotropic/anisotropic Gaussian, generalized Gaussian, plateau, or a sinc),
2. a random resize (up / down / keep, with area, bilinear or bicubic interpolation),
3. Gaussian or Poisson noise (colour or gray),
4. JPEG through a real codec (Pillow's libjpeg),
5. with probability ``second_order_prob``, a second stage: blur (with ``second_blur_prob``), resize, noise,
6. and finally, in random order, [resize to the LR size + sinc filter] and JPEG,

then rounding to 8 bits. Every random number comes from the ``numpy.random.Generator`` the caller passes, in a
fixed order, so the same generator state gives the same bytes. Every range and probability is a field of
:class:`DegradationOptions`, named as in Real-ESRGAN's option files.

Where this differs from Real-ESRGAN's GPU batch implementation (``RealESRGANModel.feed_data``):

- Everything is drawn per image. Real-ESRGAN draws the resize direction, scale and mode, and the choice of Gaussian
  or Poisson noise, once per batch (noise levels and JPEG qualities per image), and then shuffles samples through a
  queue of past batches (``queue_size``) to mix them; per-image draws need no queue.
- JPEG is the real codec at an integer quality drawn uniformly from ``jpeg_range`` (both ends included), not
  DiffJPEG, the differentiable imitation.
- Resizing is OpenCV's (``cv2.resize``): bilinear and bicubic (a = -0.75) are computed as ``F.interpolate``
  computes them without antialiasing; ``area`` averages when shrinking as ``F.interpolate`` does, but interpolates
  bilinearly when enlarging, where ``F.interpolate(mode="area")`` repeats pixels.
- Kernel sizes are drawn from the odd sizes 7 .. ``blur_kernel_size`` (Real-ESRGAN: always 7 .. 21, padding to
  ``blur_kernel_size``; the same with the default 21). Filtering uses the kernel unpadded, which gives the same
  result as the zero-padded one.
- The HR given here is degraded whole (in training: the ``gt_size`` crop); Real-ESRGAN degrades a 400x400 crop and
  crops ``gt_size`` from the result, so its crops see no image border. Borders are reflected (``reflect101``) in
  both.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image
from scipy import fft, special

from ribsr.imresize import imresize
from ribsr.safeyaml import YAMLFileError, read_yaml

__all__ = [
    "DEGRADATION_BLOCK_EXTRA",
    "DEGRADATION_KEYS",
    "KERNEL_TYPES",
    "PRESETS",
    "RESIZE_MODES",
    "BicubicDegradation",
    "Degradation",
    "DegradationError",
    "DegradationOptions",
    "SecondOrderDegradation",
    "circular_lowpass_kernel",
    "degradation_from_option_file",
    "degrade_image",
    "describe",
    "gather_degradation_keys",
    "image_rng",
    "jpeg",
    "load_degradation_options",
    "mixed_kernel",
    "preset",
    "to_jsonable",
    "usm_sharp",
]

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
_CV2_MODES = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
_UPDOWN = ("up", "down", "keep")
_MIN_KERNEL = 7  # the smallest blur kernel Real-ESRGAN draws


class DegradationError(ValueError):
    """Bad degradation options (every problem is listed in ``problems``) or an image the degradation cannot take."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            super().__init__("invalid degradation options:\n" + "\n".join(f"  - {p}" for p in self.problems))


def _f(default: Any, **checks: Any) -> Any:
    """A field whose ``metadata`` holds the checks of each of its values: ``ge``, ``gt``, ``le``, ``choices``,
    ``integer``, and ``n`` (a list of exactly n values)."""
    return field(default=default, metadata=checks)


@dataclass(frozen=True)
class DegradationOptions:
    """The parameters of the second-order degradation, with Real-ESRGAN's names and its x4plus defaults.

    Blur (``*2`` for the second stage): ``blur_kernel_size`` the largest kernel (odd, >= 7); ``kernel_list`` and
    ``kernel_prob`` the kernel types and their weights; ``sinc_prob`` the chance of a sinc kernel instead;
    ``blur_sigma`` the Gaussian widths; ``betag_range`` / ``betap_range`` the shape of generalized Gaussian /
    plateau kernels. ``final_sinc_prob``: the chance of the final sinc filter.
    Stages (``*2`` for the second): ``resize_prob`` weights of up/down/keep, ``resize_range`` the scale range,
    ``gaussian_noise_prob`` Gaussian (else Poisson) noise, ``noise_range`` its sigma (of 255),
    ``poisson_scale_range`` the Poisson scale, ``gray_noise_prob`` gray noise, ``jpeg_range`` JPEG quality.
    ``second_order_prob`` (1 in Real-ESRGAN) runs the second stage; ``second_blur_prob`` its blur.
    ribsr's own keys: ``bicubic_prob`` (default 0) is the chance that a sample skips the second-order model: its
    LR is MATLAB-style bicubic downscaling (as the benchmark ``LR_bicubic`` files), JPEG-compressed with chance
    ``bicubic_jpeg_prob`` at a quality drawn from ``jpeg_range``. At 0 nothing extra is drawn, so the samples are
    those of Real-ESRGAN's keys alone.
    """

    blur_kernel_size: int = _f(21, ge=_MIN_KERNEL, le=51, integer=True)
    kernel_list: tuple[str, ...] = _f(KERNEL_TYPES, choices=KERNEL_TYPES)
    kernel_prob: tuple[float, ...] = _f((0.45, 0.25, 0.12, 0.03, 0.12, 0.03), ge=0)
    sinc_prob: float = _f(0.1, ge=0, le=1)
    blur_sigma: tuple[float, float] = _f((0.2, 3.0), gt=0, le=100, n=2)
    betag_range: tuple[float, float] = _f((0.5, 4.0), gt=0, le=100, n=2)
    betap_range: tuple[float, float] = _f((1.0, 2.0), gt=0, le=100, n=2)

    blur_kernel_size2: int = _f(21, ge=_MIN_KERNEL, le=51, integer=True)
    kernel_list2: tuple[str, ...] = _f(KERNEL_TYPES, choices=KERNEL_TYPES)
    kernel_prob2: tuple[float, ...] = _f((0.45, 0.25, 0.12, 0.03, 0.12, 0.03), ge=0)
    sinc_prob2: float = _f(0.1, ge=0, le=1)
    blur_sigma2: tuple[float, float] = _f((0.2, 1.5), gt=0, le=100, n=2)
    betag_range2: tuple[float, float] = _f((0.5, 4.0), gt=0, le=100, n=2)
    betap_range2: tuple[float, float] = _f((1.0, 2.0), gt=0, le=100, n=2)

    final_sinc_prob: float = _f(0.8, ge=0, le=1)

    resize_prob: tuple[float, float, float] = _f((0.2, 0.7, 0.1), ge=0, n=3)
    resize_range: tuple[float, float] = _f((0.15, 1.5), gt=0, le=4, n=2)
    gaussian_noise_prob: float = _f(0.5, ge=0, le=1)
    noise_range: tuple[float, float] = _f((1.0, 30.0), ge=0, le=255, n=2)
    poisson_scale_range: tuple[float, float] = _f((0.05, 3.0), ge=0, le=100, n=2)
    gray_noise_prob: float = _f(0.4, ge=0, le=1)
    jpeg_range: tuple[int, int] = _f((30, 95), ge=1, le=100, n=2, integer=True)

    second_order_prob: float = _f(1.0, ge=0, le=1)
    second_blur_prob: float = _f(0.8, ge=0, le=1)
    resize_prob2: tuple[float, float, float] = _f((0.3, 0.4, 0.3), ge=0, n=3)
    resize_range2: tuple[float, float] = _f((0.3, 1.2), gt=0, le=4, n=2)
    gaussian_noise_prob2: float = _f(0.5, ge=0, le=1)
    noise_range2: tuple[float, float] = _f((1.0, 25.0), ge=0, le=255, n=2)
    poisson_scale_range2: tuple[float, float] = _f((0.05, 2.5), ge=0, le=100, n=2)
    gray_noise_prob2: float = _f(0.4, ge=0, le=1)
    jpeg_range2: tuple[int, int] = _f((30, 95), ge=1, le=100, n=2, integer=True)

    # ribsr's keys (not Real-ESRGAN's): a share of plain samples, so that a small network keeps its fidelity on
    # clean LR and learns the commonest real case, a downscaled photo saved as JPEG.
    bicubic_prob: float = _f(0.0, ge=0, le=1)
    bicubic_jpeg_prob: float = _f(1.0, ge=0, le=1)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise DegradationError(problems)

    def problems(self) -> list[str]:
        """Every problem of these options, one line each naming the key (empty when they are valid)."""
        out: list[str] = []
        malformed: set[str] = set()  # fields the cross-field checks below must not read
        for f in fields(self):
            value = getattr(self, f.name)
            bad = _check_field(value, isinstance(f.default, tuple), f.metadata)
            if bad:
                out.append(f"{f.name}: {bad}, got {value!r}")
                malformed.add(f.name)
            elif f.metadata.get("n") == 2 and value[0] > value[1]:  # every pair is a (low, high) range
                out.append(f"{f.name}: the low end exceeds the high end, got {value!r}")
            elif f.name.startswith("resize_range") and not value[0] <= 1 <= value[1]:
                out.append(f"{f.name}: must be (low, high) with low <= 1 <= high (down: low..1, up: 1..high), "
                           f"got {value!r}")
        for suffix in ("", "2"):  # cross-field checks, on the well-formed fields only
            size = getattr(self, f"blur_kernel_size{suffix}")
            if f"blur_kernel_size{suffix}" not in malformed and size % 2 == 0:
                out.append(f"blur_kernel_size{suffix}: must be odd, got {size}")
            kinds, weights = getattr(self, f"kernel_list{suffix}"), getattr(self, f"kernel_prob{suffix}")
            if f"kernel_list{suffix}" in malformed or f"kernel_prob{suffix}" in malformed:
                pass
            elif not kinds:
                out.append(f"kernel_list{suffix}: must name at least one kernel type")
            elif len(kinds) != len(weights):
                out.append(f"kernel_prob{suffix}: needs one weight per kernel_list{suffix} entry ({len(kinds)}), "
                           f"got {len(weights)}")
            elif sum(weights) <= 0:
                out.append(f"kernel_prob{suffix}: the weights must not all be zero, got {weights!r}")
            if f"resize_prob{suffix}" not in malformed and sum(getattr(self, f"resize_prob{suffix}")) <= 0:
                out.append(f"resize_prob{suffix}: the up/down/keep weights must not all be zero")
        return out

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DegradationOptions:
        """Options from a plain mapping (e.g. a YAML block, lists for tuples); unknown keys and bad values are
        reported together in one :class:`DegradationError` (its ``problems`` start with the key)."""
        if not isinstance(values, Mapping):
            raise DegradationError([f"the degradation options must be a mapping, got {values!r}"])
        known = {f.name for f in fields(cls)}
        problems = [f"{k}: unknown degradation key" for k in values if k not in known]
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        try:
            options = cls(**kwargs)
        except DegradationError as exc:
            problems += exc.problems
        else:
            if not problems:
                return options
        raise DegradationError(problems)

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict (lists for tuples), loadable with :meth:`from_mapping`."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def _check_field(value: Any, is_list: bool, checks: Mapping[str, Any]) -> str | None:
    """What is wrong with a field's value (a list of values if ``is_list``) against its checks, or None."""
    if is_list and not isinstance(value, tuple):
        return "must be a list"
    if "n" in checks and len(value) != checks["n"]:
        return f"must be a list of {checks['n']} values"
    for v in value if is_list else (value,):
        if "choices" in checks:
            if v not in checks["choices"]:
                return f"must name {', '.join(checks['choices'])}"
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "must hold finite numbers"
        if checks.get("integer") and not isinstance(v, int):
            return "must hold integers"
        if "ge" in checks and v < checks["ge"]:
            return f"must be >= {checks['ge']}"
        if "gt" in checks and v <= checks["gt"]:
            return f"must be > {checks['gt']}"
        if "le" in checks and v > checks["le"]:
            return f"must be <= {checks['le']}"
    return None


def _check_value(v: Any, checks: Mapping[str, Any]) -> str | None:
    """What is wrong with one value against a field's checks, or None."""
    if "choices" in checks:
        return None if v in checks["choices"] else f"must be one of {', '.join(checks['choices'])}"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "must hold finite numbers"
    if "ge" in checks and v < checks["ge"]:
        return f"must be >= {checks['ge']}"
    if "gt" in checks and v <= checks["gt"]:
        return f"must be > {checks['gt']}"
    if "le" in checks and v > checks["le"]:
        return f"must be <= {checks['le']}"
    return None


# ------------------------------------------------------------------------------------------------- kernels
def _grid(size: int) -> np.ndarray:
    """(size, size, 2) pixel offsets (x, y) from the centre of an odd-sized kernel."""
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def _mahalanobis(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """(size, size) squared Mahalanobis distances d^T S^-1 d of the rotated covariance S = U diag(sx^2, sy^2) U^T."""
    c, s = math.cos(theta), math.sin(theta)
    u = np.array([[c, -s], [s, c]])
    cov = u @ np.diag([sigma_x**2, sigma_y**2]) @ u.T
    grid = _grid(size)
    return np.einsum("hwi,ij,hwj->hw", grid, np.linalg.inv(cov), grid)


def mixed_kernel(rng: np.random.Generator, size: int, kinds: tuple[str, ...], weights: tuple[float, ...],
                 sigma: tuple[float, float], betag: tuple[float, float],
                 betap: tuple[float, float]) -> tuple[np.ndarray, dict[str, Any]]:
    """A random blur kernel (size, size), float32, summing to 1, and its drawn parameters.

    The type is drawn from ``kinds`` with ``weights``; widths from ``sigma`` (isotropic: one width, no rotation;
    anisotropic: two widths and a rotation in [-pi, pi]); the shape ``beta`` of generalized Gaussian (``betag``)
    and plateau (``betap``) kernels from [low, 1] or [1, high] with equal chance, as Real-ESRGAN draws them.
    """
    kind = kinds[_pick(rng, weights)]
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sigma_x = float(rng.uniform(*sigma))
    sigma_y, theta = (sigma_x, 0.0) if iso else (float(rng.uniform(*sigma)), float(rng.uniform(-math.pi, math.pi)))
    d2 = _mahalanobis(size, sigma_x, sigma_y, theta)
    params: dict[str, Any] = {"type": kind, "size": size, "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta}
    if kind.startswith(("generalized", "plateau")):
        low, high = betag if kind.startswith("generalized") else betap
        beta = float(rng.uniform(low, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, high))
        params["beta"] = beta
        kernel = np.exp(-0.5 * d2**beta) if kind.startswith("generalized") else 1.0 / (d2**beta + 1.0)
    else:
        kernel = np.exp(-0.5 * d2)
    return (kernel / kernel.sum()).astype(np.float32), params


def circular_lowpass_kernel(cutoff: float, size: int) -> np.ndarray:
    """The (size, size) sinc kernel of an ideal circular low-pass filter with cutoff ``cutoff`` (radians), sum 1."""
    r = np.hypot(*np.moveaxis(_grid(size), -1, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = cutoff * special.j1(cutoff * r) / (2 * math.pi * r)
    kernel[size // 2, size // 2] = cutoff**2 / (4 * math.pi)  # the limit at r = 0
    return (kernel / kernel.sum()).astype(np.float32)


def _pick(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    """An index drawn with the given (unnormalised) weights, from one uniform number."""
    cum = np.cumsum(weights, dtype=np.float64)
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(weights) - 1)


def _kernel_size(rng: np.random.Generator, largest: int) -> int:
    return int(2 * rng.integers(_MIN_KERNEL // 2, largest // 2 + 1) + 1)  # odd, 7 .. largest


def _blur_kernel(rng: np.random.Generator, o: DegradationOptions, suffix: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Stage ``suffix``'s ('' or '2') blur kernel: a sinc with ``sinc_prob``, else a mixed kernel."""
    size = _kernel_size(rng, getattr(o, f"blur_kernel_size{suffix}"))
    if rng.random() < getattr(o, f"sinc_prob{suffix}"):
        omega = float(rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi))
        return circular_lowpass_kernel(omega, size), {"type": "sinc", "size": size, "omega_c": omega}
    return mixed_kernel(rng, size, getattr(o, f"kernel_list{suffix}"), getattr(o, f"kernel_prob{suffix}"),
                        getattr(o, f"blur_sigma{suffix}"), getattr(o, f"betag_range{suffix}"),
                        getattr(o, f"betap_range{suffix}"))


# ------------------------------------------------------------------------------------------------- operations
def _filter(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 filtered with ``kernel`` (correlation, as conv2d), borders reflected (reflect101).

    A separable (rank-1) kernel, as every isotropic Gaussian is, runs as two 1-D passes; other kernels above 9x9
    through an FFT of the padded image (faster here than OpenCV's own DFT path). All three agree to about 4e-7.
    """
    u, sv, vt = np.linalg.svd(kernel.astype(np.float64))
    if sv[1] <= 1e-7 * sv[0]:
        root = math.sqrt(sv[0])
        return cv2.sepFilter2D(img, -1, (vt[0] * root).astype(np.float32), (u[:, 0] * root).astype(np.float32),
                               borderType=cv2.BORDER_REFLECT_101)
    if kernel.shape[0] <= 9:
        return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    p = kernel.shape[0] // 2
    padded = cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_REFLECT_101)  # (H + 2p, W + 2p, 3)
    shape = (fft.next_fast_len(padded.shape[0], True), fft.next_fast_len(padded.shape[1], True))
    spectrum = fft.rfft2(padded, s=shape, axes=(0, 1), workers=1)
    spectrum *= fft.rfft2(kernel[::-1, ::-1], s=shape, workers=1)[:, :, None]  # correlation = flipped convolution
    out = fft.irfft2(spectrum, s=shape, axes=(0, 1), workers=1)
    h, w = img.shape[:2]
    return np.ascontiguousarray(out[2 * p : 2 * p + h, 2 * p : 2 * p + w], dtype=np.float32)


def _resize(img: np.ndarray, h: int, w: int, mode: str) -> np.ndarray:
    """(H, W, 3) float32 resized to (h, w) with ``mode`` (area, bilinear or bicubic)."""
    h, w = max(1, h), max(1, w)
    if (h, w) == img.shape[:2]:
        return img
    out = cv2.resize(img, (w, h), interpolation=_CV2_MODES[mode])
    return out[:, :, None] if out.ndim == 2 else out


def _gray(img: np.ndarray) -> np.ndarray:
    """(H, W, 1) luma of an RGB image with the weights of torchvision's ``rgb_to_grayscale``."""
    return (0.2989 * img[:, :, 0:1] + 0.587 * img[:, :, 1:2] + 0.114 * img[:, :, 2:3]).astype(np.float32)


def _gaussian_noise(rng: np.random.Generator, img: np.ndarray, sigma: float, gray: bool) -> np.ndarray:
    """``img`` plus Gaussian noise of std ``sigma`` (of 1), the same in all channels if ``gray``, clipped."""
    h, w, c = img.shape
    noise = rng.standard_normal((h, w, 1 if gray else c), dtype=np.float32)
    noise *= np.float32(sigma)
    return np.clip(img + noise, 0.0, 1.0, dtype=np.float32)


def _poisson_noise(rng: np.random.Generator, img: np.ndarray, scale: float, gray: bool) -> np.ndarray:
    """``img`` plus ``scale`` times Poisson noise of its 8-bit quantized copy (gray: of its luma), clipped.

    As Real-ESRGAN: the number of levels ``vals`` is the distinct 8-bit values rounded up to a power of two, and
    the noise is ``Poisson(x * vals) / vals - x``.
    """
    src = _gray(img) if gray else img
    q = np.clip(np.rint(src * 255.0), 0, 255).astype(np.uint8)
    levels = np.count_nonzero(np.bincount(q.ravel(), minlength=256))
    vals = float(2 ** math.ceil(math.log2(max(levels, 1))))
    lut = np.arange(256, dtype=np.float64) / 255.0  # 8-bit level -> its value
    lam = lut[q] * vals
    noise = (rng.poisson(lam) / vals - lut[q]).astype(np.float32)
    noise *= np.float32(scale)
    return np.clip(img + noise, 0.0, 1.0, dtype=np.float32)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """``img`` (H, W, 3), uint8 or float32 in [0, 1], JPEG-compressed with Pillow at ``quality`` and decoded.

    Returns the type it was given (float32 values are clipped and rounded to 8 bits first).
    """
    as_float = img.dtype != np.uint8
    u8 = _to_uint8(img) if as_float else img
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(u8)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("RGB"))
    return out.astype(np.float32) / 255.0 if as_float else out


def usm_sharp(img: np.ndarray, weight: float = 0.5, radius: int = 50, threshold: float = 10) -> np.ndarray:
    """Unsharp masking as BasicSR's ``usm_sharp`` (Real-ESRGAN's ``gt_usm``): float32 (H, W, 3) in [0, 1].

    The residual against a Gaussian blur (``radius`` rounded up to odd, sigma from the size) is added with
    ``weight`` where it exceeds ``threshold`` (of 255), blended through a blurred mask.
    """
    if radius % 2 == 0:
        radius += 1
    blur = cv2.GaussianBlur(img, (radius, radius), 0)
    residual = img - blur
    mask = (np.abs(residual) * 255 > threshold).astype(np.float32)
    soft = cv2.GaussianBlur(mask, (radius, radius), 0)
    if soft.ndim == 2:
        soft = soft[:, :, None]
    sharp = np.clip(img + weight * residual, 0, 1)
    return (soft * sharp + (1 - soft) * img).astype(np.float32)


# ------------------------------------------------------------------------------------------------- pipelines
class Degradation(Protocol):
    """Something that makes an LR image from an HR one with a caller's generator."""

    scale: int

    def __call__(self, hr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """LR uint8 (H // scale, W // scale, 3) of ``hr`` (H, W, 3) and a JSON-ready record of what was drawn."""
        ...


def _as_float(hr: np.ndarray, scale: int) -> np.ndarray:
    """``hr`` checked and as float32 (H, W, 3) in [0, 1]."""
    if not isinstance(hr, np.ndarray) or hr.ndim != 3 or hr.shape[2] != 3:
        shape = getattr(hr, "shape", None)
        raise DegradationError(f"the HR image must be an (H, W, 3) RGB array, got shape {shape}")
    if hr.shape[0] < scale or hr.shape[1] < scale:
        raise DegradationError(f"a {hr.shape[1]}x{hr.shape[0]} (WxH) image is smaller than the scale {scale}")
    if hr.dtype == np.uint8:
        return hr.astype(np.float32) / 255.0
    if hr.dtype not in (np.float32, np.float64):
        raise DegradationError(f"the HR image must be uint8 or float in [0, 1], got {hr.dtype}")
    return np.clip(hr, 0, 1).astype(np.float32)


def _check_scale(scale: Any) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or not 1 <= scale <= 16:
        raise DegradationError(f"scale must be an integer from 1 to 16, got {scale!r}")
    return int(scale)


class SecondOrderDegradation:
    """Real-ESRGAN's second-order degradation at ``scale`` with ``options`` (see the module docstring)."""

    def __init__(self, scale: int, options: DegradationOptions | None = None) -> None:
        self.scale = _check_scale(scale)
        self.options = options if options is not None else DegradationOptions()

    def __repr__(self) -> str:
        return f"SecondOrderDegradation(scale={self.scale})"

    def draw_kernels(self, rng: np.random.Generator) -> dict[str, tuple[np.ndarray | None, dict[str, Any] | None]]:
        """The three kernels of one image (first blur, second blur, final sinc or None), drawn first."""
        o = self.options
        k1 = _blur_kernel(rng, o, "")
        k2 = _blur_kernel(rng, o, "2")
        if rng.random() < o.final_sinc_prob:
            size = _kernel_size(rng, o.blur_kernel_size)
            omega = float(rng.uniform(math.pi / 3, math.pi))
            sinc = (circular_lowpass_kernel(omega, size), {"type": "sinc", "size": size, "omega_c": omega})
        else:
            sinc = (None, None)
        return {"blur1": k1, "blur2": k2, "final_sinc": sinc}

    def __call__(self, hr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """LR uint8 (H // scale, W // scale, 3) of ``hr`` (H, W, 3; uint8, or float in [0, 1]) and the record.

        (Real-ESRGAN's ``gt_usm`` degrades the unsharp-masked HR: pass ``usm_sharp(hr)``.)
        """
        img = _as_float(hr, self.scale)
        o, s = self.options, self.scale
        if o.bicubic_prob > 0 and rng.random() < o.bicubic_prob:  # a plain sample (ribsr's bicubic_prob)
            quality = (int(rng.integers(o.jpeg_range[0], o.jpeg_range[1] + 1))
                       if rng.random() < o.bicubic_jpeg_prob else None)
            lr, plain = BicubicDegradation(s, quality)(hr)
            return lr, {"plain": plain}
        h0, w0 = img.shape[:2]
        kernels = self.draw_kernels(rng)
        record: dict[str, Any] = {"blur1": kernels["blur1"][1]}
        out = _filter(img, kernels["blur1"][0])
        out, record["resize1"] = self._random_resize(rng, out, "", h0, w0)
        out, record["noise1"] = self._random_noise(rng, out, "")
        record["jpeg1"] = q = int(rng.integers(o.jpeg_range[0], o.jpeg_range[1] + 1))
        out = jpeg(out, q)
        second = bool(rng.random() < o.second_order_prob)
        record["second_order"] = second
        if second:
            if rng.random() < o.second_blur_prob:
                out = _filter(out, kernels["blur2"][0])
                record["blur2"] = kernels["blur2"][1]
            else:
                record["blur2"] = None
            out, record["resize2"] = self._random_resize(rng, out, "2", h0, w0)
            out, record["noise2"] = self._random_noise(rng, out, "2")
        # The final resize + sinc and JPEG, in random order.
        sinc, sinc_params = kernels["final_sinc"]
        resize_first = bool(rng.random() < 0.5)
        mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
        q2 = int(rng.integers(o.jpeg_range2[0], o.jpeg_range2[1] + 1))
        record["final"] = {"order": "resize_sinc_jpeg" if resize_first else "jpeg_resize_sinc", "mode": mode,
                           "sinc": sinc_params, "jpeg": q2}
        if not resize_first:
            out = jpeg(out, q2)
        out = _resize(out, h0 // s, w0 // s, mode)
        if sinc is not None:
            out = _filter(out, sinc)
        if resize_first:
            out = jpeg(out, q2)
        return _to_uint8(out), record

    def _random_resize(self, rng: np.random.Generator, img: np.ndarray, suffix: str, h0: int,
                       w0: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Stage 1 scales the image; stage 2 scales the LR size (H0 / scale), as Real-ESRGAN does."""
        o = self.options
        updown = _UPDOWN[_pick(rng, getattr(o, f"resize_prob{suffix}"))]
        low, high = getattr(o, f"resize_range{suffix}")
        factor = {"up": lambda: rng.uniform(1, high), "down": lambda: rng.uniform(low, 1),
                  "keep": lambda: 1.0}[updown]()
        factor = float(factor)
        mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
        if suffix == "":
            h, w = int(img.shape[0] * factor), int(img.shape[1] * factor)
        else:
            h, w = int(h0 / self.scale * factor), int(w0 / self.scale * factor)
        out = _resize(img, h, w, mode)
        return out, {"updown": updown, "scale": factor, "mode": mode, "size": [out.shape[0], out.shape[1]]}

    def _random_noise(self, rng: np.random.Generator, img: np.ndarray,
                      suffix: str) -> tuple[np.ndarray, dict[str, Any]]:
        o = self.options
        gaussian = rng.random() < getattr(o, f"gaussian_noise_prob{suffix}")
        if gaussian:
            sigma = float(rng.uniform(*getattr(o, f"noise_range{suffix}")))
            gray = bool(rng.random() < getattr(o, f"gray_noise_prob{suffix}"))
            return _gaussian_noise(rng, img, sigma / 255.0, gray), {"type": "gaussian", "sigma": sigma, "gray": gray}
        scale = float(rng.uniform(*getattr(o, f"poisson_scale_range{suffix}")))
        gray = bool(rng.random() < getattr(o, f"gray_noise_prob{suffix}"))
        return _poisson_noise(rng, img, scale, gray), {"type": "poisson", "scale": scale, "gray": gray}


class BicubicDegradation:
    """MATLAB-style bicubic downscaling (as the benchmark ``LR_bicubic`` files), then JPEG at ``quality`` if given.

    Draws nothing: the same HR always gives the same LR.
    """

    def __init__(self, scale: int, quality: int | None = None) -> None:
        self.scale = _check_scale(scale)
        if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int)
                                    or not 1 <= quality <= 100):
            raise DegradationError(f"JPEG quality must be an integer from 1 to 100, got {quality!r}")
        self.quality = quality

    def __repr__(self) -> str:
        return f"BicubicDegradation(scale={self.scale}, quality={self.quality})"

    def __call__(self, hr: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """LR uint8 of ``hr`` (H, W, 3; H and W are cropped to multiples of the scale) and its record."""
        s = self.scale
        _as_float(hr, s)  # checks only
        u8 = hr if hr.dtype == np.uint8 else _to_uint8(np.clip(hr, 0, 1))
        u8 = u8[: u8.shape[0] - u8.shape[0] % s, : u8.shape[1] - u8.shape[1] % s]
        lr = imresize(u8, 1 / s)
        if self.quality is not None:
            lr = jpeg(lr, self.quality)
        return lr, {"resize": "matlab_bicubic", "jpeg": self.quality}


# Named degradations of ``ribsr degrade --preset`` (``jpeg<Q>`` for any quality Q works too).
PRESETS: dict[str, Callable[[int], Degradation]] = {
    "clean": lambda s: BicubicDegradation(s),
    "jpeg30": lambda s: BicubicDegradation(s, 30),
    "jpeg50": lambda s: BicubicDegradation(s, 50),
    "jpeg75": lambda s: BicubicDegradation(s, 75),
    "jpeg90": lambda s: BicubicDegradation(s, 90),
    "realesrgan": lambda s: SecondOrderDegradation(s),
}


def preset(name: str, scale: int) -> Degradation:
    """The named degradation at ``scale``: one of :data:`PRESETS`, or ``jpeg<Q>`` (bicubic then JPEG at Q)."""
    if name in PRESETS:
        return PRESETS[name](scale)
    m = re.fullmatch(r"jpeg(\d{1,3})", name)
    if m and 1 <= int(m.group(1)) <= 100:
        return BicubicDegradation(scale, int(m.group(1)))
    raise DegradationError(f"unknown degradation preset {name!r}; choose one of {', '.join(PRESETS)} "
                           "or jpeg<Q> with Q from 1 to 100")


# ------------------------------------------------------------------------------------------------- option files
# Every key of :class:`DegradationOptions`, as Real-ESRGAN's option files name them.
DEGRADATION_KEYS = frozenset(f.name for f in fields(DegradationOptions))
# Keys of a ``degradation`` block as other Real-ESRGAN-style code writes it, besides DEGRADATION_KEYS.
DEGRADATION_BLOCK_EXTRA = ("sf", "gt_size", "use_sharp", "resize_back")


def gather_degradation_keys(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The degradation keys of a training option file (Real-ESRGAN's or ribsr's), where each was found, and the
    problems found gathering them.

    Real-ESRGAN writes the stages' keys at the top level and the kernels' in ``datasets.train``; ribsr also reads
    a ``degradation`` block. Any key may stand in any of the three places, once. Returns ``(values, where,
    problems)``: ``where`` maps each key to its key path (``degradation.jpeg_range``); the problems, each starting
    with a key path, are a key given twice, a ``degradation`` that is not a mapping and an unknown key in it.
    """
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    problems: list[str] = []

    def take(block: Mapping[str, Any], prefix: str) -> None:
        for key, value in block.items():
            if key not in DEGRADATION_KEYS:
                continue
            if key in values:
                problems.append(f"{prefix}{key}: given twice (also as {where[key]})")
            values[key], where[key] = value, f"{prefix}{key}"

    take(data, "")
    block = data.get("degradation")
    if block is not None:
        if not isinstance(block, Mapping):
            problems.append(f"degradation: must be a mapping, got {block!r}")
        else:
            take(block, "degradation.")
            problems += [f"degradation.{key}: unknown degradation key" for key in block
                         if key not in DEGRADATION_KEYS and key not in DEGRADATION_BLOCK_EXTRA]
    datasets = data.get("datasets")
    train_block = datasets.get("train") if isinstance(datasets, Mapping) else None
    if isinstance(train_block, Mapping):
        take(train_block, "datasets.train.")
    return values, where, problems


def _options_at(values: Mapping[str, Any], where: Mapping[str, str]) -> tuple[DegradationOptions | None, list[str]]:
    """:meth:`DegradationOptions.from_mapping` of ``values``, its problems naming each key by its path."""
    try:
        return DegradationOptions.from_mapping(dict(values)), []
    except DegradationError as exc:
        out = []
        for problem in exc.problems:
            key, _, message = problem.partition(": ")
            out.append(f"{where.get(key, key)}: {message}")
        return None, out


def degradation_from_option_file(data: Mapping[str, Any], scale: int | None = None) -> DegradationOptions:
    """The degradation a training option file (Real-ESRGAN's or ribsr's, as a mapping) trains with.

    Keys are gathered as :func:`gather_degradation_keys` does; the rest of the file is not read, except that
    a file that trains on bicubic pairs (``datasets.train.type`` not ``RealESRGANDataset``, and no degradation
    key) is refused. With ``scale``, a ``degradation.sf`` must equal it. Raises :class:`DegradationError` listing
    every problem, each with its key path.
    """
    if not isinstance(data, Mapping):
        raise DegradationError(f"an option file must be a mapping, got {type(data).__name__}")
    values, where, problems = gather_degradation_keys(data)
    block = data.get("degradation")
    if isinstance(block, Mapping):
        if scale is not None and "sf" in block and block["sf"] != scale:
            problems.append(f"degradation.sf: must equal the scale ({scale}), got {block['sf']!r}")
        if block.get("resize_back"):
            problems.append("degradation.resize_back: resizing the LR back to the HR size is not supported")
    if not values and block is None:
        datasets = data.get("datasets")
        train = datasets.get("train") if isinstance(datasets, Mapping) else None
        kind = train.get("type") if isinstance(train, Mapping) else None
        if kind != "RealESRGANDataset":
            problems.append(f"datasets.train.type: the file names no degradation (no degradation key, and "
                            f"datasets.train.type is {kind!r}, not 'RealESRGANDataset')")
    options, bad = _options_at(values, where)
    problems += bad
    if problems or options is None:
        raise DegradationError(problems)
    return options


def _is_option_file(data: Mapping[str, Any]) -> bool:
    return "datasets" in data or "degradation" in data


def load_degradation_options(path: str | Path, scale: int | None = None) -> DegradationOptions:
    """The degradation options of a YAML or JSON file: a training option file (one with a ``datasets`` or
    ``degradation`` key: :func:`degradation_from_option_file`), else a plain mapping of degradation keys.

    Raises FileNotFoundError for a missing file and :class:`DegradationError` naming the file and listing every
    problem (with its key path) for anything else.
    """
    path = Path(path)
    try:
        data = read_yaml(path, what="degradation options file")
    except YAMLFileError as exc:
        raise DegradationError(str(exc)) from None
    if not isinstance(data, Mapping):
        raise DegradationError(f"{path}: must hold a mapping of degradation keys or a training option file, "
                               f"got {type(data).__name__}")
    try:
        if _is_option_file(data):
            return degradation_from_option_file(data, scale)
        return DegradationOptions.from_mapping(data)
    except DegradationError as exc:
        raise DegradationError([f"{path}: {p}" for p in exc.problems]) from None


# ------------------------------------------------------------------------------------------------- test sets
def image_rng(seed: int, name: str) -> np.random.Generator:
    """The generator that degrades the image ``name`` of a test set made with ``seed``.

    It depends on the two only (a stable hash of the name, not its position), so adding, removing or reordering
    other images never changes an image's LR.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DegradationError(f"seed must be a non-negative integer, got {seed!r}")
    key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng(np.random.SeedSequence([int(seed), key]))


def degrade_image(degradation: Degradation, hr: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(HR, LR, record)`` of a uint8 image: the HR mod-cropped (top left) to a multiple of the scale, its LR of
    exactly a scale-th of its size, and what was drawn.

    A grayscale HR, (H, W) or (H, W, 1), is degraded as RGB with three equal channels and its LR is the channel
    mean, (h, w): the pair keeps the HR's channels, as the benchmark sets' LR files do.
    """
    if not isinstance(hr, np.ndarray) or hr.dtype != np.uint8 or hr.ndim not in (2, 3) or (
            hr.ndim == 3 and hr.shape[2] not in (1, 3)):
        raise DegradationError(f"the HR image must be uint8 (H, W), (H, W, 1) or (H, W, 3), got "
                               f"{getattr(hr, 'dtype', type(hr).__name__)} {getattr(hr, 'shape', '')}")
    s = degradation.scale
    if hr.ndim == 3 and hr.shape[2] == 1:
        hr = hr[:, :, 0]
    h, w = hr.shape[:2]
    if h < s or w < s:
        raise DegradationError(f"a {w}x{h} (WxH) image is smaller than the scale {s}")
    hr = np.ascontiguousarray(hr[: h - h % s, : w - w % s])
    gray = hr.ndim == 2
    rgb = np.repeat(hr[:, :, None], 3, axis=2) if gray else hr
    lr, record = degradation(rgb, rng)
    if gray:
        lr = np.clip(np.rint(lr.astype(np.float32).mean(axis=2)), 0, 255).astype(np.uint8)
    if lr.shape[:2] != (hr.shape[0] // s, hr.shape[1] // s):
        raise DegradationError(f"the degradation made a {lr.shape[1]}x{lr.shape[0]} LR of a "
                               f"{hr.shape[1]}x{hr.shape[0]} HR at x{s}")
    return hr, lr, to_jsonable(record)


def describe(degradation: Degradation) -> tuple[str, dict[str, Any]]:
    """``(kind, parameters)`` of a degradation, JSON-ready: ``("second_order", DegradationOptions.to_dict())`` or
    ``("bicubic", {"resize": "matlab_bicubic", "jpeg": quality or None})``."""
    if isinstance(degradation, SecondOrderDegradation):
        return "second_order", degradation.options.to_dict()
    if isinstance(degradation, BicubicDegradation):
        return "bicubic", {"resize": "matlab_bicubic", "jpeg": degradation.quality}
    raise DegradationError(f"cannot describe the degradation {degradation!r}")


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, arrays and tuples as lists, mapping keys as strings."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
