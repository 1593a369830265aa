"""Tiling: running a network over overlapping tiles whose outputs are blended (sizes: :mod:`ribsr.planning`).

Windowed attention makes every output pixel depend on the whole image, so an image that does not fit in
memory is cut into overlapping tiles whose outputs are blended with smooth weights (:func:`tiled_forward`).
Tile sizes and the tile grid are multiples of the model's alignment unit (:attr:`ModelInfo.multiple_of`,
the least common multiple of its window sizes), so each tile is cut into the same attention windows as
the whole image would be. :func:`ribsr.planning.choose_tiling` picks the tile and batch that fit a memory budget.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ribsr.devices import parameter_place
from ribsr.diskarray import block_rows
from ribsr.modelinfo import model_info

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # called with (tiles done, tiles in total)


# ---------------------------------------------------------------------- layout and blending weights
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


def axis_weights(spans: tuple[tuple[int, int], ...], scale: int) -> list[torch.Tensor]:
    """Blending weights of each span along one axis, in output pixels (1 at the image border, raised
    cosine ramps over the overlaps)."""
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


def _axis_sum(spans: tuple[tuple[int, int], ...], weights: list[torch.Tensor], scale: int) -> torch.Tensor:
    """Sum of the blending weights of all spans along one axis, in output pixels."""
    total = torch.zeros(scale * spans[-1][1])
    for (start, stop), w in zip(spans, weights, strict=True):
        total[scale * start:scale * stop] += w
    return total


# ---------------------------------------------------------------------- tiled forward
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
    out: torch.Tensor | None = None,
    release: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Run ``model`` on ``x`` (B, 3, H, W) through overlapping tiles; returns (B, 3, s*H, s*W) float32.

    ``tile`` None or 0, or a tile covering the image, runs the model on the whole image. Tiles of
    one shape are stacked into batches of ``batch_size``. Tile outputs are blended with separable
    smooth weights (:func:`axis_weights`) over the overlaps. The result lies on ``x``'s device; each
    batch of tiles is moved to the model's device and dtype. ``scale``/``align`` default to the model's
    :func:`ribsr.modelinfo.model_info`.

    ``out``, a zero-filled float32 CPU tensor of the output's shape (for instance one backed by a
    :class:`ribsr.diskarray.DiskArray`), receives the result instead of a new tensor; ``release`` is then
    called after each batch of tiles and each block of rows, to hand the pages touched back to the system.
    The result is the same, bit for bit, either way.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if scale is None or align is None:
        info = model_info(model, scale=scale, multiple_of=align)
        scale, align = info.scale, info.multiple_of
    dev, dtype = parameter_place(model, x.device, x.dtype)
    b, c, h, w = x.shape
    out_shape = (b, c, scale * h, scale * w)
    if out is not None and (tuple(out.shape) != out_shape or out.dtype != torch.float32):
        raise ValueError(f"out must be a float32 tensor of shape {out_shape}, got {tuple(out.shape)} {out.dtype}")

    def run(batch: torch.Tensor) -> torch.Tensor:
        y = model(batch.to(dev, dtype))
        expected = (batch.shape[0], c, scale * batch.shape[2], scale * batch.shape[3])
        if tuple(y.shape) != expected:
            raise ValueError(f"model returned shape {tuple(y.shape)} for input {tuple(batch.shape)}, "
                             f"expected {expected} (is the scale {scale} right?)")
        return y.to(x.device, torch.float32)

    if not tile or (tile >= h and tile >= w):
        if out is None:
            y = torch.cat([run(x[i:i + batch_size]) for i in range(0, b, batch_size)])
        else:
            for i in range(0, b, batch_size):
                out[i:i + batch_size] = run(x[i:i + batch_size])
                if release:
                    release()
            y = out
        if progress:
            progress(1, 1)
        return y

    layout = tile_layout(h, w, tile, overlap, align)
    wy, wx = axis_weights(layout.ys, scale), axis_weights(layout.xs, scale)
    # Work items: (image index, row, column); grouped by tile shape so that batches stack.
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for i in range(b):
        for r, (y0, y1) in enumerate(layout.ys):
            for q, (x0, x1) in enumerate(layout.xs):
                groups.setdefault((y1 - y0, x1 - x0), []).append((i, r, q))
    total = sum(len(items) for items in groups.values())
    if out is None:
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
            if release:
                release()
            if progress:
                progress(done, total)
    # The weights are separable, so their sum over tiles is the outer product of the axis sums;
    # it is 1 up to rounding, dividing by it keeps the result exact where it is not.
    sum_y = _axis_sum(layout.ys, wy, scale).to(x.device)
    sum_x = _axis_sum(layout.xs, wx, scale).to(x.device)
    if release is None:
        return out.div_(sum_y[:, None] * sum_x[None, :])  # weight sum over tiles: (s*H, s*W)
    rows = block_rows(b * c * scale * w * 4)
    for r0 in range(0, scale * h, rows):  # the same division, a block of rows at a time
        out[:, :, r0:r0 + rows].div_(sum_y[r0:r0 + rows, None] * sum_x[None, :])
        release()
    return out
