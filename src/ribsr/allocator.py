"""Process-wide tuning of the C allocator for CPU inference (glibc on Linux only)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameter numbers of glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

DEFAULT_THRESHOLD_BYTES = 1 << 30


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The process's C library (Linux only; None elsewhere or where it cannot be opened)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def malloc_trim() -> bool:
    """Hand the C heap's free memory back to the system (glibc ``malloc_trim``); False where there is none."""
    trim = getattr(libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def tune_cpu_allocator(threshold_bytes: int = DEFAULT_THRESHOLD_BYTES) -> bool:
    """Let glibc keep freed blocks of up to ``threshold_bytes`` in its heap for reuse; returns whether it took.

    PyTorch allocates CPU tensors with ``malloc``. glibc serves blocks above its mmap threshold (at most 32 MiB
    unless set) with freshly mapped pages, which the kernel zero-fills on first touch, every call again; an SR
    network at full resolution allocates many such blocks per forward pass. Raising the mmap and trim
    thresholds makes freed tensors reusable: the bundled x2 model on a 512x512 input went from 2.5 s to
    1.5 s per forward pass here (docs/models.md). The cost: up to ``threshold_bytes`` of freed memory stays
    with the process instead of going back to the system. A no-op (False) where glibc is not the C library.
    The ``ribsr`` command line calls this at start; library users may call it once in their own process.
    """
    if threshold_bytes < 0:
        raise ValueError(f"threshold_bytes must be >= 0, got {threshold_bytes}")
    mallopt = getattr(libc(), "mallopt", None)
    if mallopt is None:  # not Linux, or musl and others without mallopt
        log.debug("no glibc mallopt: allocator left as it is")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(threshold_bytes, 2**31 - 1)  # mallopt takes an int
    ok = mallopt(_M_MMAP_THRESHOLD, value) == 1 and mallopt(_M_TRIM_THRESHOLD, value) == 1
    log.debug("glibc mmap/trim thresholds %s to %d bytes", "set" if ok else "NOT set", value)
    return ok
