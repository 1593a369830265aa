"""Upscaling whole images with a super-resolution network.

Windowed attention makes every output pixel depend on the whole image, so an image that does not
fit in memory is cut into overlapping tiles whose outputs are blended with smooth weights
(:func:`tiled_forward`). Tile sizes and the tile grid are multiples of the model's alignment unit
(the least common multiple of its window sizes, which is the largest window for every published
preset), so each tile is cut into the same attention windows as the whole image would be.
:class:`Upscaler` wraps it all: device and dtype, tile size chosen to fit a memory budget, retry
with smaller tiles when memory runs out, 8-fold self-ensemble, and PIL/numpy/tensor images.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ribsr.imageio import DecodedImage, from_array, from_pil, to_array, to_pil
from ribsr.model.sst import DEFAULT_BIAS_CACHE_BYTES

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # called with (tiles done, tiles in total)
ImageT = TypeVar("ImageT")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
GIB = 1024**3
# Share of a --max-memory budget given to the model's cache of dense positional biases.
BIAS_CACHE_SHARE = 0.25


# ---------------------------------------------------------------------- device, dtype, geometry
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``/None: float32 on CPU; on CUDA bfloat16 where supported, else float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def model_geometry(model: nn.Module) -> tuple[int, int]:
    """(scale, alignment) of a model: its ``config.scale`` and the lcm of ``config.window_sizes``."""
    config = getattr(model, "config", None)
    scale = getattr(config, "scale", None)
    windows = getattr(config, "window_sizes", None)
    if not isinstance(scale, int) or not windows:
        raise ValueError(
            f"{type(model).__name__} has no config.scale / config.window_sizes; "
            "pass scale= and align= explicitly"
        )
    return scale, math.lcm(*(int(w) for w in windows))


def _model_place(model: nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of a model's parameters (those of ``x`` for a model without any)."""
    p = next(iter(model.parameters()), None)
    return (p.device, p.dtype) if p is not None else (x.device, x.dtype)


# ---------------------------------------------------------------------- tiling
@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of an image lie: spans ``(start, stop)`` along each axis, in input pixels."""

    ys: tuple[tuple[int, int], ...]
    xs: tuple[tuple[int, int], ...]
    tile: int  # nominal tile side
    overlap: int  # overlap of neighbouring tiles

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """(y0, y1, x0, x1) of every tile, row by row."""
        return [(y0, y1, x0, x1) for y0, y1 in self.ys for x0, x1 in self.xs]


def _spans(length: int, tile: int, stride: int) -> tuple[tuple[int, int], ...]:
    if length <= tile:
        return ((0, length),)
    spans = []
    start = 0
    while start + tile < length:
        spans.append((start, start + tile))
        start += stride
    spans.append((start, length))  # the last tile starts on the grid and stops at the border
    return tuple(spans)


def tile_layout(h: int, w: int, tile: int, overlap: int | None, align: int) -> TileLayout:
    """The tiles covering an (h, w) image.

    ``tile`` is rounded up to a multiple of ``align`` (at least ``2 * align``); the overlap is the
    smallest multiple of ``align`` that is at least ``overlap`` (default ``align``), at most half
    a tile. Tiles start at multiples of ``align``, so their attention windows coincide with those
    of the whole image; the last tile of a row or column stops at the border (it is smaller, and the
    model pads it exactly as it pads the whole image there).
    """
    if tile <= 0 or align <= 0:
        raise ValueError(f"tile and align must be positive, got tile={tile}, align={align}")
    if overlap is not None and overlap < 0:
        raise ValueError(f"tile overlap must be >= 0, got {overlap}")
    tile = max(2 * align, -(-tile // align) * align)
    want = align if overlap is None else max(overlap, 1)
    ov = min(-(-want // align) * align, (tile // 2) // align * align)
    stride = tile - ov
    return TileLayout(_spans(h, tile, stride), _spans(w, tile, stride), tile, ov)


def _ramp(n: int) -> torch.Tensor:
    """Weights rising smoothly from near 0 to near 1 over ``n`` pixels (half a cosine period, sampled
    at pixel centres); a ramp and its mirror image sum to exactly 1."""
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (0.5 - 0.5 * torch.cos(math.pi * t)).float()


def _axis_weights(spans: tuple[tuple[int, int], ...], scale: int) -> list[torch.Tensor]:
    """Blending weights of each span along one axis, in output pixels."""
    weights = []
    for i, (start, stop) in enumerate(spans):
        w = torch.ones(scale * (stop - start))
        if i > 0:
            n = scale * (spans[i - 1][1] - start)
            w[:n] = _ramp(n)
        if i < len(spans) - 1:
            n = scale * (stop - spans[i + 1][0])
            w[w.numel() - n:] = _ramp(n).flip(0)
        weights.append(w)
    return weights


@torch.no_grad()
def tiled_forward(
    model: nn.Module,
    x: torch.Tensor,
    tile: int | None,
    overlap: int | None = None,
    batch_size: int = 1,
    *,
    scale: int | None = None,
    align: int | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Run ``model`` on ``x`` (B, 3, H, W) through overlapping tiles; returns (B, 3, s*H, s*W) float32.

    ``tile`` None or 0, or a tile covering the image, runs the model on the whole image. Tiles of
    one shape are stacked into batches of ``batch_size``. Tile outputs are blended with separable
    smooth weights (:func:`_ramp`) over the overlaps. The result lies on ``x``'s device; each batch
    of tiles is moved to the model's device and dtype. ``scale``/``align`` default to
    :func:`model_geometry`.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if scale is None or align is None:
        s, a = model_geometry(model)
        scale, align = scale or s, align or a
    dev, dtype = _model_place(model, x)
    b, c, h, w = x.shape
    out_shape = (b, c, scale * h, scale * w)

    def run(batch: torch.Tensor) -> torch.Tensor:
        y = model(batch.to(dev, dtype))
        expected = (batch.shape[0], c, scale * batch.shape[2], scale * batch.shape[3])
        if tuple(y.shape) != expected:
            raise ValueError(f"model returned shape {tuple(y.shape)} for input {tuple(batch.shape)}, "
                             f"expected {expected} (is the scale {scale} right?)")
        return y.to(x.device, torch.float32)

    if not tile or (tile >= h and tile >= w):
        y = torch.cat([run(x[i:i + batch_size]) for i in range(0, b, batch_size)])
        if progress:
            progress(1, 1)
        return y

    layout = tile_layout(h, w, tile, overlap, align)
    wy, wx = _axis_weights(layout.ys, scale), _axis_weights(layout.xs, scale)
    # Work items: (image index, row, column); grouped by tile shape so that batches stack.
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for i in range(b):
        for r, (y0, y1) in enumerate(layout.ys):
            for q, (x0, x1) in enumerate(layout.xs):
                groups.setdefault((y1 - y0, x1 - x0), []).append((i, r, q))
    total = sum(len(items) for items in groups.values())
    out = torch.zeros(out_shape, dtype=torch.float32, device=x.device)
    done = 0
    for items in groups.values():
        for k in range(0, len(items), batch_size):
            chunk = items[k:k + batch_size]
            crops = [x[i, :, slice(*layout.ys[r]), slice(*layout.xs[q])] for i, r, q in chunk]
            ys = run(torch.stack(crops))  # (n, C, s*th, s*tw)
            for (i, r, q), y in zip(chunk, ys, strict=True):
                weight = (wy[r][:, None] * wx[q][None, :]).to(x.device)  # (s*th, s*tw)
                (y0, y1), (x0, x1) = layout.ys[r], layout.xs[q]
                out[i, :, scale * y0:scale * y1, scale * x0:scale * x1] += y.mul_(weight)
            done += len(chunk)
            if progress:
                progress(done, total)
    # The weights are separable, so their sum over tiles is the outer product of the axis sums;
    # it is 1 up to rounding, dividing by it keeps the result exact where it is not.
    sum_y = _axis_sum(layout.ys, wy, scale).to(x.device)
    sum_x = _axis_sum(layout.xs, wx, scale).to(x.device)
    return out.div_(sum_y[:, None] * sum_x[None, :])  # weight sum over tiles: (s*H, s*W)


def _axis_sum(spans: tuple[tuple[int, int], ...], weights: list[torch.Tensor], scale: int) -> torch.Tensor:
    """Sum of the blending weights of all spans along one axis, in output pixels."""
    total = torch.zeros(scale * spans[-1][1])
    for (start, stop), w in zip(spans, weights, strict=True):
        total[scale * start:scale * stop] += w
    return total


# ---------------------------------------------------------------------- memory
@dataclass(frozen=True)
class MemoryCost:
    """Peak memory of one forward pass as ``fixed_bytes + bytes_per_pixel * (input pixels in a batch)``."""

    fixed_bytes: float
    bytes_per_pixel: float
    method: str

    def bytes_for(self, pixels: float) -> float:
        return self.fixed_bytes + self.bytes_per_pixel * pixels


# Bytes per input pixel and per feature channel for the modelled (unmeasured) cost. Measured on
# ``light`` x2 on CPU in float32: 2.6-3.8 KB per pixel for 48 channels, i.e. 55-80 per channel
# (docs/upscale.md); 160 leaves a margin of two or more, so the modelled cost is an upper bound.
MODELLED_BYTES_PER_PIXEL_PER_CHANNEL = 160.0


def modelled_memory_cost(model: nn.Module) -> MemoryCost:
    """A generous estimate of a model's memory cost from its configuration, without running it.

    Per input pixel: :data:`MODELLED_BYTES_PER_PIXEL_PER_CHANNEL` times the feature width
    (``config.dim``), scaled by the parameter dtype's size. Fixed: twice the largest dense positional
    bias of one attention layer, ``heads * ws**4 * 4`` bytes, which the CPU attention path builds
    once per layer. A rough model meant to over-estimate; :func:`measure_memory_cost` measures.
    """
    config = getattr(model, "config", None)
    dim = getattr(config, "dim", 64)
    windows = tuple(getattr(config, "window_sizes", ()) or (1,))
    heads = tuple(getattr(config, "num_heads", ()) or (1,) * len(windows))
    param = next(iter(model.parameters()), None)
    bits = torch.finfo(param.dtype).bits if param is not None else 32
    fixed = 2 * max(h * ws**4 * 4 for ws, h in zip(windows, heads, strict=False))
    return MemoryCost(float(fixed), MODELLED_BYTES_PER_PIXEL_PER_CHANNEL * dim * bits / 32,
                      "modelled from the configuration")


def _proc_status(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    if match is None:
        raise OSError(f"{key} not in /proc/self/status")
    return int(match.group(1)) * 1024


def _release_cpu_memory() -> None:
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _peak_of(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak memory, in bytes above the level before the call, that running ``fn`` takes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    # CPU: the process's peak resident size (VmHWM), reset through /proc/self/clear_refs.
    _release_cpu_memory()
    base = _proc_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    peak = _proc_status("VmHWM") - base
    _release_cpu_memory()
    return float(peak)


@torch.no_grad()
def measure_memory_cost(model: nn.Module, align: int, channels: int = 3) -> MemoryCost:
    """Measure the peak memory of forward passes on two square inputs, ``n`` and ``2n`` pixels wide
    (``n`` the smallest multiple of ``align`` from 64), after a warm-up pass that takes one-time
    allocations out of the numbers, and fit a straight line.

    On CUDA the numbers are PyTorch's allocation counters (exact for tensors); on Linux CPUs they are
    the growth of the process's peak resident size (VmHWM, reset through /proc/self/clear_refs),
    which also counts allocator slack. On ``light`` the line through these two small sizes has a
    steeper slope than the cost of large tiles (3.8 vs 2.6 KB/pixel), so it errs on the safe side.
    Where nothing can be measured (no /proc) the result is :func:`modelled_memory_cost`.
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32

    def forward(p: int) -> Callable[[], Any]:
        return lambda: model(torch.rand(1, channels, p, p, device=device, dtype=dtype))

    side = -(-64 // align) * align  # at least 64 pixels, so that the pixels outweigh the noise
    sizes = (side, 2 * side)
    try:
        _peak_of(forward(side), device)  # warm-up: lazily built kernels and caches
        peaks = [_peak_of(forward(p), device) for p in sizes]
    except OSError:
        return modelled_memory_cost(model)
    pixels = [p * p for p in sizes]
    slope = (peaks[1] - peaks[0]) / (pixels[1] - pixels[0])
    if slope <= 0:  # measurement noise: charge everything to the pixels
        return MemoryCost(0.0, peaks[1] / pixels[1], f"measured on {device.type}")
    fixed = max(0.0, peaks[0] - slope * pixels[0])
    return MemoryCost(fixed, slope, f"measured on {device.type}")


def image_buffer_bytes(h: int, w: int, scale: int) -> float:
    """Memory for one image's buffers outside the network, per the pipeline of :class:`Upscaler`:
    float32 input (and its copy), float32 output with the weight sum, and the float and integer
    copies made when the result is encoded (estimate)."""
    return h * w * (4 * 3 * 2 + scale**2 * (4 * 4 + 4 * 3 + 4))


def available_memory(device: torch.device) -> float:
    """Bytes free for inference now: CUDA free memory, or half of Linux ``MemAvailable`` on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free) * 0.9
    try:
        text = Path("/proc/meminfo").read_text()
        match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
        if match:
            return int(match.group(1)) * 1024 * 0.5
    except OSError:
        pass
    return 4.0 * GIB


def fits_untiled(h: int, w: int, scale: int, align: int, budget_bytes: float, cost: MemoryCost) -> bool:
    """Whether an (h, w) image fits ``budget_bytes`` in one forward pass, by ``cost``."""
    hp, wp = -(-h // align) * align, -(-w // align) * align  # the model pads to whole windows
    return image_buffer_bytes(h, w, scale) + cost.bytes_for(hp * wp) <= budget_bytes


def batch_that_fits(
    h: int, w: int, scale: int, align: int, tile: int, budget_bytes: float, cost: MemoryCost, max_batch: int = 8
) -> int:
    """How many tiles of side ``tile`` (rounded as :func:`tile_layout` rounds it) fit ``budget_bytes``
    in one batch, between 1 and ``max_batch``."""
    tile = max(2 * align, -(-tile // align) * align)
    th, tw = min(tile, -(-h // align) * align), min(tile, -(-w // align) * align)
    avail = budget_bytes - image_buffer_bytes(h, w, scale) - cost.fixed_bytes
    return int(max(1, min(max_batch, max(avail, 0.0) / cost.bytes_per_pixel // (th * tw))))


def choose_tiling(
    h: int,
    w: int,
    scale: int,
    align: int,
    budget_bytes: float,
    cost: MemoryCost,
    max_batch: int = 8,
) -> tuple[int | None, int]:
    """(tile, batch size) whose estimated peak fits ``budget_bytes``: no tiling (None) when the whole
    image fits, else the largest aligned square tile, then as many tiles per batch as still fit.
    Never smaller than ``2 * align`` (the budget may then be exceeded)."""
    if fits_untiled(h, w, scale, align, budget_bytes, cost):
        return None, 1
    avail = budget_bytes - image_buffer_bytes(h, w, scale) - cost.fixed_bytes
    pixels = max(avail, 0.0) / cost.bytes_per_pixel
    tile = max(2 * align, int(math.sqrt(pixels)) // align * align)
    if pixels < tile * tile:
        log.warning("memory budget of %.2f GiB is below what one %dx%d tile needs; using that tile anyway",
                    budget_bytes / GIB, tile, tile)
    return tile, batch_that_fits(h, w, scale, align, tile, budget_bytes, cost, max_batch)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for allocation failures: ``MemoryError``, CUDA OOM, CPU allocator errors."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return any(k in text for k in ("out of memory", "not enough memory", "can't allocate memory",
                                   "cannot allocate memory", "failed to allocate"))


# ---------------------------------------------------------------------- self-ensemble
def _dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """One of the 8 flips/rotations of the last two axes (k = 0..7: bit 2 transpose, bit 1 vertical
    flip, bit 0 horizontal flip), or its inverse."""
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if k & 4:
        steps.append(lambda t: t.transpose(-1, -2))
    if k & 2:
        steps.append(lambda t: t.flip(-2))
    if k & 1:
        steps.append(lambda t: t.flip(-1))
    for step in reversed(steps) if inverse else steps:
        x = step(x)
    return x


# ---------------------------------------------------------------------- Upscaler
class Upscaler:
    """Upscale PIL images, numpy arrays or tensors with a super-resolution model.

    Args:
        model: the network; moved to ``device``/``dtype`` in place and kept for every image.
        tile: ``"auto"`` (default) picks the largest tile that fits the memory budget, or none when
            the whole image fits; ``0``/None never tiles (unless memory runs out); an int is the tile
            side in input pixels (rounded up to a multiple of the alignment unit).
        overlap: minimum overlap of tiles in input pixels (default: one alignment unit).
        batch_size: tiles per forward pass; None: as many as fit the memory budget, at most 8
            (batches of 4 tiles ran 1.4x faster than single tiles on CPU, docs/upscale.md).
        max_memory: memory budget in GiB for one image (network activations, the image's buffers and
            the model's cache of dense positional biases, not the model weights or the PyTorch
            runtime); None: what is free now. When given, a quarter of it (at most the model's
            default) is given to the bias cache (:meth:`ribsr.model.SST.set_bias_cache`) and the
            rest to activations and buffers.
        dtype: ``"auto"`` (float32 on CPU, bfloat16 or float16 on CUDA), ``"float32"``,
            ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
        device: ``"auto"`` (the model's device), ``"cpu"``, ``"cuda"``, ...
        self_ensemble: average the outputs of the 8 flips/rotations of the input (8x slower).
        scale, align: override :func:`model_geometry` for models without a config.

    On an out-of-memory error the image is retried with half the batch, then smaller tiles; the
    smaller setting is kept for later images.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        tile: int | str | None = "auto",
        overlap: int | None = None,
        batch_size: int | None = None,
        max_memory: float | None = None,
        dtype: str | torch.dtype | None = "auto",
        device: str | torch.device | None = "auto",
        self_ensemble: bool = False,
        scale: int | None = None,
        align: int | None = None,
    ) -> None:
        if scale is None or align is None:
            s, a = model_geometry(model)
            scale, align = scale or s, align or a
        if isinstance(tile, str) and tile != "auto":
            raise ValueError(f"tile must be 'auto', None or a number of pixels, got {tile!r}")
        if isinstance(tile, int) and tile < 0:
            raise ValueError(f"tile must be >= 0, got {tile}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_memory is not None and max_memory <= 0:
            raise ValueError(f"max_memory must be a positive number of GiB, got {max_memory}")
        if device is None or str(device) == "auto":
            param = next(iter(model.parameters()), None)
            self.device = param.device if param is not None else resolve_device("auto")
        else:
            self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.scale, self.align = scale, align
        self.tile, self.overlap, self.batch_size = tile, overlap, batch_size
        self.max_memory = max_memory
        self._cache_bytes = 0  # bytes of the budget given to the model's bias cache
        if max_memory is not None and hasattr(self.model, "set_bias_cache"):
            self._cache_bytes = int(min(BIAS_CACHE_SHARE * max_memory * GIB, DEFAULT_BIAS_CACHE_BYTES))
            self.model.set_bias_cache(self._cache_bytes)
        self.self_ensemble = self_ensemble
        self._cost: MemoryCost | None = None
        self._tile_cap: int | None = None  # largest tile side that has not run out of memory

    # ------------------------------------------------------------------ planning
    @property
    def memory_cost(self) -> MemoryCost:
        """The model's measured (or modelled) memory cost; measured once, on first use."""
        if self._cost is None:
            self._cost = measure_memory_cost(self.model, self.align)
            log.debug("memory cost: %.0f bytes + %.0f bytes/pixel (%s)", self._cost.fixed_bytes,
                      self._cost.bytes_per_pixel, self._cost.method)
        return self._cost

    def plan(self, h: int, w: int) -> tuple[int | None, int]:
        """(tile side or None for no tiling, tiles per batch) for an (h, w) input."""
        budget = self.max_memory * GIB - self._cache_bytes if self.max_memory else available_memory(self.device)
        if self.tile == "auto":
            if fits_untiled(h, w, self.scale, self.align, budget, modelled_memory_cost(self.model)):
                tile, batch = None, 1  # fits even by the generous model: no need to measure
            else:
                tile, batch = choose_tiling(h, w, self.scale, self.align, budget, self.memory_cost)
        elif self.tile:
            tile = int(self.tile)
            batch = self.batch_size or batch_that_fits(h, w, self.scale, self.align, tile, budget,
                                                       self.memory_cost)
        else:
            tile, batch = None, 1
        if self.batch_size is not None:
            batch = self.batch_size
        if self._tile_cap is not None and (tile is None or tile > self._tile_cap):
            tile = self._tile_cap
        return tile, batch

    def _smaller(self, h: int, w: int, tile: int | None, batch: int) -> tuple[int | None, int] | None:
        if batch > 1:
            return tile, batch // 2
        side = max(h, w) if tile is None else tile
        if side <= 2 * self.align:
            return None
        return max(2 * self.align, (side // 2) // self.align * self.align), 1

    # ------------------------------------------------------------------ forward
    def _forward(self, x: torch.Tensor, progress: Progress | None) -> torch.Tensor:
        """(B, 3, h, w) -> (B, 3, s*h, s*w) float32, tiled as planned, retrying when out of memory."""
        h, w = x.shape[-2:]
        tile, batch = self.plan(h, w)
        log.debug("upscaling %dx%d: tile %s, batch %d", w, h, tile, batch)
        while True:
            try:
                return self._ensemble(x, tile, batch, progress)
            except (MemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise
                smaller = self._smaller(h, w, tile, batch)
                if smaller is None:
                    raise
                log.warning("out of memory with tile %s, batch %d; retrying with tile %s, batch %d",
                            tile, batch, *smaller)
                del exc
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                _release_cpu_memory()
                tile, batch = smaller
                if tile is not None:
                    self._tile_cap = tile

    def _ensemble(self, x: torch.Tensor, tile: int | None, batch: int,
                  progress: Progress | None) -> torch.Tensor:
        passes = 8 if self.self_ensemble else 1

        def one(k: int) -> torch.Tensor:
            def step(done: int, total: int) -> None:
                if progress:
                    progress(k * total + done, passes * total)

            y = tiled_forward(self.model, _dihedral(x, k), tile, self.overlap, batch,
                              scale=self.scale, align=self.align, progress=step)
            return _dihedral(y, k, inverse=True)

        out = one(0)
        for k in range(1, passes):
            out.add_(one(k))
        return out.div_(passes) if passes > 1 else out

    # ------------------------------------------------------------------ public API
    def upscale_tensor(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """(3, h, w) or (B, 3, h, w) floating tensor in [0, 1] -> same rank, dtype and device,
        ``scale`` times larger, clipped to [0, 1]."""
        if not torch.is_floating_point(x) or x.ndim not in (3, 4) or x.shape[-3] != 3:
            raise ValueError(f"expected a floating (3, H, W) or (B, 3, H, W) tensor, got "
                             f"{tuple(x.shape)} {x.dtype}")
        batch = x if x.ndim == 4 else x[None]
        y = self._forward(batch.float(), progress).clamp_(0, 1)
        return (y if x.ndim == 4 else y[0]).to(x.dtype)

    def upscale_decoded(self, img: DecodedImage, progress: Progress | None = None) -> DecodedImage:
        """Upscale a decoded image: RGB through the model, alpha with bicubic ``imresize``."""
        x = torch.from_numpy(img.rgb).permute(2, 0, 1)[None]  # (H, W, 3) -> (1, 3, H, W)
        y = self._forward(x, progress).clamp_(0, 1)
        rgb = y[0].permute(1, 2, 0).numpy()  # (3, sH, sW) -> (sH, sW, 3), a view
        alpha = None
        if img.alpha is not None:
            from ribsr.imresize import imresize

            alpha = np.clip(np.asarray(imresize(img.alpha, self.scale), dtype=np.float32), 0, 1)
        return img.with_pixels(rgb, alpha)

    def upscale(self, image: ImageT, progress: Progress | None = None) -> ImageT:
        """Upscale a PIL image, a numpy array ((H, W) or (H, W, 1|3|4), uint8/uint16/float) or a
        tensor (see :meth:`upscale_tensor`); returns the same kind.

        Grayscale stays grayscale and alpha is kept (upscaled bicubically). PIL palette and CMYK
        images come back as RGB(A); floats are clipped to [0, 1].
        """
        from PIL import Image

        if isinstance(image, torch.Tensor):
            return self.upscale_tensor(image, progress)  # type: ignore[return-value]
        if isinstance(image, Image.Image):
            return to_pil(self.upscale_decoded(from_pil(image), progress))  # type: ignore[return-value]
        if isinstance(image, np.ndarray):
            channels = 0 if image.ndim == 2 else image.shape[2]
            out = self.upscale_decoded(from_array(image), progress)
            return to_array(out, image.dtype, channels)  # type: ignore[return-value]
        raise TypeError(f"cannot upscale a {type(image).__name__}; pass a PIL image, numpy array or tensor")
