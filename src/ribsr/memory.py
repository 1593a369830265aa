"""Memory: how much is free, measuring peaks (CUDA counters or /proc), and measuring what a forward pass costs.

On CUDA peaks come from PyTorch's allocator counters; on Linux CPUs from the process's peak resident
size (``VmHWM`` in ``/proc/self/status``, reset through ``/proc/self/clear_refs``), which counts
allocator slack too. :func:`measure_memory_cost` gives the :class:`ribsr.planning.MemoryCost` that the
planner (:mod:`ribsr.planning`) fits images and tiles into.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ribsr.allocator import malloc_trim
from ribsr.devices import parameter_place
from ribsr.modelinfo import ModelInfo
from ribsr.planning import GIB, MemoryCost, modelled_memory_cost

MIB = 1024**2

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


# ---------------------------------------------------------------------- measuring a network's cost
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
