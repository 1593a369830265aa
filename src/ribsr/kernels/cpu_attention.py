"""ribsr's exact float32 window-attention kernel for the CPU (``cpu_attention.cpp``), built on first use.

:func:`attention` computes ``softmax(scale q k^T + bias + q_f k_f^T) v`` for every window and head, with the
positional term either as a dense additive bias (shared by all windows) or as low-rank factors (RIB's, never
materialised), in float32, for inference (no gradients). It is what the ``auto`` attention backend takes on
the CPU when it can (:mod:`ribsr.model.attention`).

The C++ source ships with the package and is compiled once per machine and compiler with the system's C++
compiler (``$CXX``, else ``c++``, ``g++`` or ``clang++``; ``-O3 -march=native``; 1.3 s with g++ 12 here) into the
cache folder (:func:`cache_dir`), then loaded with ctypes. Without a compiler, or with
``RIBSR_CPU_KERNEL=0`` in the environment, :func:`available` is False and ``auto`` uses PyTorch's kernels;
``auto`` also leaves builds for CPUs without AVX2/FMA, AVX-512 or NEON alone (:data:`FAST_ISAS`).

To build it ahead of time (a container image, a read-only home later):
``python -c "from ribsr.kernels import cpu_attention; print(cpu_attention.build())"``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from ribsr.files import atomic_write

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_attention.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")
#: Environment variable: ``0`` (or ``false``, ``no``, ``off``) keeps the kernel from being built or used.
ENV_SWITCH = "RIBSR_CPU_KERNEL"
#: Environment variable: the folder compiled kernels are kept in (default: see :func:`cache_dir`).
ENV_DIR = "RIBSR_KERNEL_DIR"
COMPILERS = ("c++", "g++", "clang++")
COMPILE_TIMEOUT_S = 300.0


class KernelUnavailable(RuntimeError):
    """The CPU kernel cannot be used here (no compiler, a failed build, switched off); the message says why."""


class _NoCacheFolder(KernelUnavailable):
    """The cache folder cannot be created."""


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$RIBSR_KERNEL_DIR``, else ``$XDG_CACHE_HOME/ribsr/kernels``, else
    ``~/.cache/ribsr/kernels``."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ribsr" / "kernels"


def switched_off() -> bool:
    """True when ``RIBSR_CPU_KERNEL`` says not to use the kernel."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off")


def compiler() -> list[str] | None:
    """The compiler command: ``$CXX`` (split like a shell word list), else the first of ``c++``, ``g++``,
    ``clang++`` on the PATH; None when there is none."""
    if os.environ.get("CXX", "").strip():
        return shlex.split(os.environ["CXX"])
    for name in COMPILERS:
        found = shutil.which(name)
        if found:
            return [found]
    return None


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the machine and, on Linux, the CPU's model and feature flags."""
    parts = [platform.machine()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                parts.append(line)
                if len(parts) >= 3:
                    break
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def library_path(cxx: list[str], folder: Path | None = None) -> Path:
    """The cached library for compiler ``cxx`` in ``folder`` (default :func:`cache_dir`). Its name carries a hash
    of the source, the flags, the compiler's version and the CPU, so an edited source, another compiler or a home
    folder shared by other machines builds its own."""
    try:
        version = subprocess.run([*cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"the C++ compiler {shlex.join(cxx)} does not run: {e}") from e
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), shlex.join(cxx).encode(), version.encode(),
                 _cpu_signature().encode()):
        digest.update(part)
        digest.update(b"\0")
    return (folder or cache_dir()) / f"cpu_attention-{digest.hexdigest()[:16]}.so"


def build(cxx: list[str] | None = None, folder: Path | None = None, *, force: bool = False) -> Path:
    """Compile the kernel into ``folder`` (default :func:`cache_dir`) unless it holds it already (or ``force``),
    and return the library's path.

    Raises :class:`KernelUnavailable` without a compiler, or with the compiler's output when the build fails.
    """
    cxx = cxx or compiler()
    if cxx is None:
        raise KernelUnavailable(f"no C++ compiler found (set CXX, or install one of {', '.join(COMPILERS)})")
    path = library_path(cxx, folder)
    if path.is_file() and not force:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _NoCacheFolder(f"cannot create the kernel cache folder {path.parent}: {e} (set {ENV_DIR})") from e
    log.info("building the CPU attention kernel with %s into %s", shlex.join(cxx), path)
    with atomic_write(path) as tmp:
        command = [*cxx, *FLAGS, str(SOURCE), "-o", str(tmp)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            raise KernelUnavailable(f"{shlex.join(command)} did not run: {e}") from e
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()[-2000:]
            raise KernelUnavailable(f"{shlex.join(command)} failed (exit {done.returncode}):\n{output}")
    return path


class _Library:
    """The loaded library and its prototypes."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        self.attention = lib.ribsr_attention_f32
        self.attention.restype = ctypes.c_int
        self.attention.argtypes = [
            ptr, ptr, ptr, ptr, ptr, ptr,  # q, sq, k, sk, v, sv
            ptr, i64, i64,  # bias, sbh, sbn
            ptr, ptr, i64, i64, i64,  # qf, kf, r, sfh, sfn
            ptr, ptr,  # o, so
            i64, i64, i64, i64, ctypes.c_float, ctypes.c_int,  # windows, heads, n, d, scale, threads
        ]
        lib.ribsr_vector_isa.restype = ctypes.c_char_p
        self.isa = lib.ribsr_vector_isa().decode()
        lib.ribsr_max_head_dim.restype = ctypes.c_int
        lib.ribsr_max_key_dim.restype = ctypes.c_int
        self.max_head_dim = int(lib.ribsr_max_head_dim())
        self.max_key_dim = int(lib.ribsr_max_key_dim())
        self.path = path


_lock = threading.Lock()
_loaded: _Library | None = None
_failure: str | None = None


def _library() -> _Library:
    """The kernel, built and loaded on the first call; the first failure is remembered (and logged once)."""
    global _loaded, _failure
    if switched_off():
        raise KernelUnavailable(f"switched off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}")
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None and _failure is None:
            try:
                try:
                    path = build()
                except _NoCacheFolder as e:  # a read-only home, say: build for this process only
                    log.info("%s; building into a temporary folder", e)
                    path = build(folder=Path(tempfile.mkdtemp(prefix="ribsr-kernels-")))
                _loaded = _Library(path)
            except (KernelUnavailable, OSError, AttributeError) as e:
                _failure = str(e)
                log.warning("ribsr's CPU attention kernel is unavailable, using PyTorch's: %s", e)
        if _loaded is None:
            raise KernelUnavailable(_failure or "unknown failure")
        return _loaded


def require() -> None:
    """Build and load the kernel now; :class:`KernelUnavailable` (saying why) where it cannot be."""
    _library()


def available() -> bool:
    """True when the kernel is built (building it now if needed) and not switched off."""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why the kernel cannot be used (None when it can); builds it if that was not tried yet."""
    try:
        _library()
    except KernelUnavailable as e:
        return str(e)
    return None


#: The vector instruction sets the kernel is built for where ``auto`` takes it: on x86 without AVX2 and FMA the
#: build was measured 1.6x slower than PyTorch's masked kernel (``ATEN_CPU_CAPABILITY=default`` on this machine,
#: window 64), with AVX2 1.34x faster, with AVX-512 1.5x faster (docs/benchmarks.md).
FAST_ISAS = ("avx512", "avx2", "neon")


def vector_isa() -> str | None:
    """The vector instructions of the built kernel (``avx512``, ``avx2``, ``neon``, ``generic``); None when it
    cannot be built."""
    try:
        return _library().isa
    except KernelUnavailable:
        return None


def supports(head_dim: int, rank: int = 0) -> bool:
    """True when the kernel is available, built for one of :data:`FAST_ISAS` and takes head width ``head_dim``
    with ``rank`` factor channels (what ``auto`` asks before taking it)."""
    try:
        lib = _library()
    except KernelUnavailable:
        return False
    return lib.isa in FAST_ISAS and 1 <= head_dim <= lib.max_head_dim and head_dim + rank <= lib.max_key_dim


def _strides(t: torch.Tensor) -> ctypes.Array:
    return (ctypes.c_int64 * 3)(*t.stride()[:3])


def _checked(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``t`` as the kernel reads it: float32 on the CPU, of ``shape``, channels contiguous."""
    if t.dtype != torch.float32 or t.device.type != "cpu":
        raise ValueError(f"{name} must be a float32 CPU tensor, got {t.dtype} on {t.device}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} requires a gradient: the CPU kernel computes none (use the concat backend)")
    return t if t.stride(-1) == 1 or t.numel() == 0 else t.contiguous()


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
    scale: float | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """``softmax(scale q k^T + bias + q_f k_f^T) v``: q, k, v (windows, heads, N, D) float32; ``bias``
    (heads, N, N) or None; ``factors`` (q_f, k_f), each (heads, N, R), or None; ``scale`` defaults to
    1/sqrt(D), ``threads`` to ``torch.get_num_threads()``. Returns a new (windows, heads, N, D) tensor.

    Raises :class:`KernelUnavailable` when the kernel cannot be built, ValueError for inputs it does not take.
    """
    lib = _library()
    if q.dim() != 4:
        raise ValueError(f"q must be (windows, heads, N, D), got shape {tuple(q.shape)}")
    windows, heads, n, d = q.shape
    q = _checked("q", q, (windows, heads, n, d))
    k = _checked("k", k, (windows, heads, n, d))
    v = _checked("v", v, (windows, heads, n, d))
    if bias is not None:
        bias = _checked("bias", bias, (heads, n, n))
    rank = 0
    q_f = k_f = None
    if factors is not None:
        q_f, k_f = factors
        rank = q_f.shape[-1] if q_f.dim() == 3 else -1
        q_f = _checked("q_f", q_f, (heads, n, rank))
        k_f = _checked("k_f", k_f, (heads, n, rank))
        if q_f.stride() != k_f.stride():
            q_f, k_f = q_f.contiguous(), k_f.contiguous()
    if not 1 <= d <= lib.max_head_dim or d + rank > lib.max_key_dim:
        raise ValueError(f"the CPU kernel takes head widths 1..{lib.max_head_dim} and head width + rank up to "
                         f"{lib.max_key_dim}, got {d} and {rank}")
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    out = torch.empty((windows, heads, n, d), dtype=torch.float32)
    scale = d**-0.5 if scale is None else float(scale)
    with torch.profiler.record_function("ribsr::cpu_attention"):  # a named span in torch.profiler's tables
        code = lib.attention(
            q.data_ptr(), _strides(q), k.data_ptr(), _strides(k), v.data_ptr(), _strides(v),
            bias.data_ptr() if bias is not None else None,
            bias.stride(0) if bias is not None else 0, bias.stride(1) if bias is not None else 0,
            q_f.data_ptr() if q_f is not None else None, k_f.data_ptr() if k_f is not None else None, rank,
            q_f.stride(0) if q_f is not None else 0, q_f.stride(1) if q_f is not None else 0,
            out.data_ptr(), _strides(out), windows, heads, n, d, scale, threads,
        )
    if code == 2:
        raise MemoryError(f"the CPU attention kernel ran out of memory (N={n}, D={d}, rank {rank})")
    if code != 0:
        raise ValueError(f"the CPU attention kernel refused q {tuple(q.shape)}, rank {rank} (code {code})")
    return out
