"""Memory: what a forward pass costs, how much is free, and measuring peaks (CUDA counters or /proc).

On CUDA peaks come from PyTorch's allocator counters; on Linux CPUs from the process's peak resident
size (``VmHWM`` in ``/proc/self/status``, reset through ``/proc/self/clear_refs``), which counts
allocator slack too. :class:`MemoryCost` is the straight line ``fixed + per pixel`` that the tiling
planner (:mod:`ribsr.tiling`) fits images and tiles into.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ribsr.allocator import malloc_trim
from ribsr.devices import parameter_place
from ribsr.modelinfo import ModelInfo, model_info

GIB = 1024**3
MIB = 1024**2

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


# ---------------------------------------------------------------------- /proc and the allocators
def proc_status_bytes(key: str) -> int:
    """A size field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes; OSError where absent."""
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    if match is None:
        raise OSError(f"{key} not in /proc/self/status")
    return int(match.group(1)) * 1024


def reset_peak_rss() -> None:
    """Reset the process's peak resident size (``VmHWM``) to the current resident size."""
    Path("/proc/self/clear_refs").write_text("5")


def release_cpu_memory() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc ``malloc_trim``)."""
    gc.collect()
    malloc_trim()


def peak_bytes(fn: Callable[[], Any], device: torch.device, release: bool = True) -> float:
    """Peak memory, in bytes above the level just before the call, that running ``fn`` takes.

    CUDA: the caching allocator's peak minus the allocated bytes before. CPU: ``VmHWM`` minus ``VmRSS``
    (OSError where there is no ``/proc``). ``release`` first empties the CUDA cache / trims the C heap,
    so that memory freed earlier is not reused unseen; without it only garbage is collected (CPU).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if release:
            torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    if release:
        release_cpu_memory()
    else:
        gc.collect()
    base = proc_status_bytes("VmRSS")
    reset_peak_rss()
    fn()
    peak = proc_status_bytes("VmHWM") - base
    if release:
        release_cpu_memory()
    return float(peak)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for allocation failures: ``MemoryError``, CUDA OOM, CPU allocator errors."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return any(k in text for k in ("out of memory", "not enough memory", "can't allocate memory",
                                   "cannot allocate memory", "failed to allocate"))


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


# ---------------------------------------------------------------------- a network's cost
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
    A rough model meant to over-estimate; :func:`measure_memory_cost` measures.
    """
    info = info or model_info(model)
    _, dtype = parameter_place(model)
    bits = torch.finfo(dtype).bits
    return MemoryCost(float(2 * info.bias_bytes), MODELLED_BYTES_PER_PIXEL_PER_CHANNEL * info.width * bits / 32,
                      "modelled from the configuration")


@torch.no_grad()
def measure_memory_cost(model: nn.Module, align: int, channels: int = 3, info: ModelInfo | None = None) -> MemoryCost:
    """Measure the peak memory of forward passes on two square inputs, ``n`` and ``2n`` pixels wide
    (``n`` the smallest multiple of ``align`` from 64), after a warm-up pass that takes one-time
    allocations out of the numbers, and fit a straight line.

    On ``light`` the line through these two small sizes has a steeper slope than the cost of large tiles
    (3.8 vs 2.6 KB/pixel), so it errs on the safe side. Where nothing can be measured (no /proc) the
    result is :func:`modelled_memory_cost` (of ``info``, default :func:`ribsr.modelinfo.model_info`).
    """
    device, dtype = parameter_place(model)

    def forward(p: int) -> Callable[[], Any]:
        return lambda: model(torch.rand(1, channels, p, p, device=device, dtype=dtype))

    side = -(-64 // align) * align  # at least 64 pixels, so that the pixels outweigh the noise
    sizes = (side, 2 * side)
    try:
        peak_bytes(forward(side), device)  # warm-up: lazily built kernels and caches
        peaks = [peak_bytes(forward(p), device) for p in sizes]
    except OSError:
        return modelled_memory_cost(model, info)
    pixels = [p * p for p in sizes]
    slope = (peaks[1] - peaks[0]) / (pixels[1] - pixels[0])
    if slope <= 0:  # measurement noise: charge everything to the pixels
        return MemoryCost(0.0, peaks[1] / pixels[1], f"measured on {device.type}")
    fixed = max(0.0, peaks[0] - slope * pixels[0])
    return MemoryCost(fixed, slope, f"measured on {device.type}")
