"""Planning: how much memory a forward pass costs and which tiles and batches fit a budget.

:class:`MemoryCost` is the straight line ``fixed + per pixel`` of one forward pass (modelled from a network's
descriptor by :func:`modelled_memory_cost`, or measured by :func:`ribsr.memory.measure_memory_cost`);
:func:`image_buffer_bytes` adds an image's own buffers; :func:`plan_tiling` decides, for an (h, w) input, no
tiling or the largest aligned tile and the batch that fit (what :meth:`ribsr.Upscaler.plan` answers).
Nothing here allocates or measures: every function is arithmetic on its arguments.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ribsr.devices import parameter_place
from ribsr.modelinfo import ModelInfo, model_info

log = logging.getLogger(__name__)

GIB = 1024**3

__all__ = [
    "MODELLED_BYTES_PER_PIXEL_PER_CHANNEL", "MemoryCost", "batch_that_fits", "choose_tiling", "fits_untiled",
    "image_buffer_bytes", "modelled_memory_cost", "plan_tiling",
]

# Bytes per input pixel and per feature channel for the modelled (unmeasured) cost. Measured on
# ``light`` x2 on CPU in float32: 2.6-3.8 KB per pixel for 48 channels, i.e. 55-80 per channel
# (docs/upscale.md); 160 leaves a margin of two or more, so the modelled cost is an upper bound.
MODELLED_BYTES_PER_PIXEL_PER_CHANNEL = 160.0


@dataclass(frozen=True)
class MemoryCost:
    """Peak memory of one forward pass as ``fixed_bytes + bytes_per_pixel * (input pixels in a batch)``."""

    fixed_bytes: float
    bytes_per_pixel: float
    method: str

    def bytes_for(self, pixels: float) -> float:
        """Estimated peak bytes of a forward pass over ``pixels`` input pixels."""
        return self.fixed_bytes + self.bytes_per_pixel * pixels


# ---------------------------------------------------------------------- costs
def image_buffer_bytes(h: int, w: int, scale: int, output_in_memory: bool = True) -> float:
    """Memory for one image's buffers outside the network, per the pipeline of :class:`ribsr.Upscaler`:
    float32 input (and its copy), float32 output with the weight sum, and the float and integer
    copies made when the result is encoded (estimate). ``output_in_memory`` False: the output is
    assembled on disk (:meth:`ribsr.Upscaler.upscale_file`) and only the input and an upscaled alpha
    channel are counted."""
    if not output_in_memory:
        return h * w * (4 * 3 * 2 + scale**2 * 4)
    return h * w * (4 * 3 * 2 + scale**2 * (4 * 4 + 4 * 3 + 4))


def modelled_memory_cost(model: nn.Module, info: ModelInfo | None = None) -> MemoryCost:
    """A generous estimate of a model's memory cost from its descriptor, without running it.

    Per input pixel: :data:`MODELLED_BYTES_PER_PIXEL_PER_CHANNEL` times the feature width
    (``info.width``), scaled by the parameter dtype's size. Fixed: twice the largest dense positional
    bias of one attention layer (``info.bias_bytes``), which the CPU attention path builds once per layer.
    A rough model meant to over-estimate; :func:`ribsr.memory.measure_memory_cost` measures.
    """
    info = info or model_info(model)
    _, dtype = parameter_place(model)
    bits = torch.finfo(dtype).bits
    return MemoryCost(float(2 * info.bias_bytes), MODELLED_BYTES_PER_PIXEL_PER_CHANNEL * info.width * bits / 32,
                      "modelled from the configuration")


# ---------------------------------------------------------------------- tiles and batches
def fits_untiled(h: int, w: int, scale: int, align: int, budget_bytes: float, cost: MemoryCost,
                 output_in_memory: bool = True) -> bool:
    """Whether an (h, w) image fits ``budget_bytes`` in one forward pass, by ``cost`` (``output_in_memory``:
    see :func:`image_buffer_bytes`)."""
    hp, wp = -(-h // align) * align, -(-w // align) * align  # the model pads to whole windows
    return image_buffer_bytes(h, w, scale, output_in_memory) + cost.bytes_for(hp * wp) <= budget_bytes


def batch_that_fits(
    h: int, w: int, scale: int, align: int, tile: int, budget_bytes: float, cost: MemoryCost, max_batch: int = 8,
    output_in_memory: bool = True,
) -> int:
    """How many tiles of side ``tile`` (rounded as :func:`ribsr.tiling.tile_layout` rounds it) fit ``budget_bytes``
    in one batch, between 1 and ``max_batch``."""
    tile = max(2 * align, -(-tile // align) * align)
    th, tw = min(tile, -(-h // align) * align), min(tile, -(-w // align) * align)
    avail = budget_bytes - image_buffer_bytes(h, w, scale, output_in_memory) - cost.fixed_bytes
    return int(max(1, min(max_batch, max(avail, 0.0) / cost.bytes_per_pixel // (th * tw))))


def choose_tiling(
    h: int,
    w: int,
    scale: int,
    align: int,
    budget_bytes: float,
    cost: MemoryCost,
    max_batch: int = 8,
    output_in_memory: bool = True,
) -> tuple[int | None, int]:
    """(tile, batch size) whose estimated peak fits ``budget_bytes``: no tiling (None) when the whole
    image fits, else the largest aligned square tile, then as many tiles per batch as still fit.
    Never smaller than ``2 * align`` (the budget may then be exceeded). ``output_in_memory`` False: the
    output is assembled on disk (:func:`image_buffer_bytes`)."""
    buffers = image_buffer_bytes(h, w, scale, output_in_memory) + cost.fixed_bytes
    if fits_untiled(h, w, scale, align, budget_bytes, cost, output_in_memory):
        return None, 1
    avail = budget_bytes - buffers
    pixels = max(avail, 0.0) / cost.bytes_per_pixel
    tile = max(2 * align, int(math.sqrt(pixels)) // align * align)
    if buffers > budget_bytes:  # no tile size can help: the whole input and output are held in memory
        log.warning("memory budget of %.2f GiB is below what this %dx%d image's own buffers (input, output x%d, "
                    "encoding copies) and the model's fixed memory need, about %.2f GiB without any tile; using "
                    "%dx%d tiles anyway", budget_bytes / GIB, w, h, scale, buffers / GIB, tile, tile)
    elif pixels < tile * tile:
        log.warning("memory budget of %.2f GiB is below what one %dx%d tile needs; using that tile anyway",
                    budget_bytes / GIB, tile, tile)
    return tile, batch_that_fits(h, w, scale, align, tile, budget_bytes, cost, max_batch, output_in_memory)


def plan_tiling(
    h: int,
    w: int,
    scale: int,
    align: int,
    budget_bytes: float,
    tile: int | str | None,
    modelled: MemoryCost,
    measured: Callable[[], MemoryCost],
    batch_size: int | None = None,
    tile_cap: int | None = None,
    output_in_memory: bool = True,
) -> tuple[int | None, int]:
    """(tile side or None for no tiling, tiles per batch) for an (h, w) input and ``budget_bytes``.

    ``tile``: ``"auto"`` (no tiling when the image fits even by the generous ``modelled`` cost, else
    :func:`choose_tiling` by the ``measured`` cost, called only then), a side (the batch that fits it), or
    0/None (no tiling). ``batch_size`` overrides the batch; ``tile_cap`` caps the tile (set after an
    out-of-memory error). ``output_in_memory`` False: the output is assembled on disk.
    """
    mem = output_in_memory
    if tile == "auto":
        if fits_untiled(h, w, scale, align, budget_bytes, modelled, mem):
            side, batch = None, 1  # fits even by the generous model: no need to measure
        else:
            side, batch = choose_tiling(h, w, scale, align, budget_bytes, measured(), output_in_memory=mem)
    elif tile:
        side = int(tile)
        batch = batch_size or batch_that_fits(h, w, scale, align, side, budget_bytes, measured(),
                                              output_in_memory=mem)
    else:
        side, batch = None, 1
    if batch_size is not None:
        batch = batch_size
    if tile_cap is not None and (side is None or side > tile_cap):
        side = tile_cap
    return side, batch
