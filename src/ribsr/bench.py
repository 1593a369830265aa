"""Benchmarks: latency and measured peak memory of the attention paths and of whole networks.

Library code only: the functions return data (``ribsr bench`` prints and plots it).

Peak memory is measured, never estimated, as the increase over what the inputs and parameters already
hold: on CUDA from the caching allocator's peak (``torch.cuda.max_memory_allocated`` minus the
allocated bytes just before the call); on the CPU in a fresh subprocess per case, from the resident
set's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` after one warm-up call) minus
the resident size just before the call. The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
freed blocks go back to the system instead of hiding a later peak. On the CPU ``held_mb`` is what the
case holds between calls (inputs, parameters, kept positional terms, and for a network its cached biases):
the resident size after the warm-up call minus that before the setup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ribsr.devices import DTYPES
from ribsr.kernels import cpu_attention
from ribsr.memory import MIB, peak_bytes, proc_status_bytes
from ribsr.model.attention import AttentionFn, AutoAttention, make_backend
from ribsr.model.positional import RIB, RPB, CacheBudget, FlashBias, NoPE, PositionalScheme, RoPE


@dataclass(frozen=True)
class Timing:
    """How each case is timed and measured.

    ``repeats`` timed calls (median reported) after ``warmup`` untimed ones, stopping early after
    ``max_seconds`` of wall time; ``threads`` CPU threads (None: torch's current number); ``memory``:
    measure peak memory too (on the CPU in a subprocess that may run ``subprocess_timeout`` seconds).
    """

    repeats: int = 5
    warmup: int = 1
    max_seconds: float = 30.0
    threads: int | None = None
    memory: bool = True
    subprocess_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0 or self.max_seconds <= 0 or self.subprocess_timeout <= 0:
            raise ValueError(f"invalid timing settings: {self}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


# Whole networks take longer per call than one attention layer.
MODEL_TIMING = Timing(max_seconds=60.0, subprocess_timeout=900.0)

@dataclass(frozen=True)
class Method:
    """One benchmarked way of computing window attention.

    ``make`` builds the positional scheme from (heads, head_dim, rank, window); ``backend`` names the
    attention path (:func:`ribsr.model.attention.make_backend`). ``keeps_term``: in forward (inference)
    cases the positional term built by the warm-up call is kept between calls, as our network does in
    eval mode; False rebuilds it on every call, as the code being compared against does.
    ``forward_only``: the path computes no gradients (it has no backward cases).
    """

    make: Callable[[int, int, int, int], PositionalScheme]
    backend: str
    keeps_term: bool = True
    forward_only: bool = False


METHODS: dict[str, Method] = {
    "RIB concat": Method(lambda h, d, r, ws: RIB(h, r), "concat"),
    "RIB bias": Method(lambda h, d, r, ws: RIB(h, r), "bias"),
    # q, k, v in bfloat16, as the paper's code computes RIB attention (opt-in: not exact to float32).
    "RIB concat bf16": Method(lambda h, d, r, ws: RIB(h, r), "concat_bf16"),
    "RIB reference": Method(lambda h, d, r, ws: RIB(h, r), "reference"),
    # ribsr's own exact float32 CPU kernel (compiled on first use), what "auto" takes for CPU inference.
    "RIB kernel": Method(lambda h, d, r, ws: RIB(h, r), "cpu_kernel", forward_only=True),
    # As the RPB networks (SwinIR, HAT, PFT) compute it: their forward gathers the (heads, N, N) bias from
    # the table on every call, then materialises the scores (QK^T/sqrt(d) + bias), softmax, times V.
    "RPB naive": Method(lambda h, d, r, ws: RPB(h, ws), "naive", keeps_term=False),
    "RPB mask": Method(lambda h, d, r, ws: RPB(h, ws), "bias"),
    "FlashBias": Method(lambda h, d, r, ws: FlashBias(h, r, ws), "concat"),
    "RoPE": Method(lambda h, d, r, ws: RoPE(h, d), "auto"),
    "NoPE": Method(lambda h, d, r, ws: NoPE(), "auto"),
    "NoPE SDPA": Method(lambda h, d, r, ws: NoPE(), "bias"),  # PyTorch's fused kernel, without a mask
}
MODES = ("forward", "backward")


@dataclass(frozen=True)
class AttentionCase:
    """One attention benchmark: a method at one window size over all windows of an image x image map.

    ``mode`` "backward" times forward + backward (training mode: the positional term is rebuilt on every
    call). "forward" runs in eval mode under no_grad; with ``cache`` (the default) the positional term
    (factors, dense bias, rotation) is built by the warm-up call and kept, as in inference, so it counts as
    held memory, not as the call's peak; without, it is rebuilt on every call. Methods that model other
    networks' code (``Method.keeps_term`` False: RPB naive) rebuild it on every call either way.
    """

    method: str
    window: int
    mode: str = "forward"
    image: int = 128
    heads: int = 3
    head_dim: int = 16
    rank: int = 24
    dtype: str = "float32"
    device: str = "cpu"
    cache: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {list(METHODS)}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "backward" and METHODS[self.method].forward_only:
            raise ValueError(f"method {self.method!r} computes no gradients: it has no backward cases")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        for name in ("window", "image", "heads", "head_dim", "rank"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def windows(self) -> int:
        """How many windows cover the image (padded up to a multiple of the window)."""
        return math.ceil(self.image / self.window) ** 2

    @property
    def tokens(self) -> int:
        return self.window * self.window


def estimate_bytes(case: AttentionCase) -> int:
    """A rough upper estimate of a case's peak memory, used only to skip cases that cannot fit."""
    method = METHODS[case.method]
    backend = method.backend
    with torch.device("meta"):
        pos = method.make(case.heads, case.head_dim, case.rank, case.window)
    w, h, n = case.windows, case.heads, case.tokens
    backward = case.mode == "backward"
    scores = w * h * n * n * 4
    bias = (h * n * n * 4 + n * n * 4) if pos.has_term else 0  # the dense bias (and an RPB gather index)
    small = 16 * w * h * n * (case.head_dim + case.rank) * 4
    # a mask that needs a gradient sends the CPU kernel to a path that keeps the scores too
    if backend in ("reference", "naive") or (backward and pos.has_term and backend == "bias" and case.device == "cpu"):
        return (5 if backward else 3) * scores + bias + small
    if backend in ("bias", "cpu_kernel") or not pos.has_factors:
        return (3 if backward else 2) * bias + small
    return small


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` CPU threads (default: the current number), restored afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    try:
        yield threads or saved
    finally:
        torch.set_num_threads(saved)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _attention_callable(case: AttentionCase) -> tuple[Callable[[], None], str]:
    """A no-argument function running the case once, and the name of the path it takes."""
    device, dtype = torch.device(case.device), DTYPES[case.dtype]
    method = METHODS[case.method]
    pos = method.make(case.heads, case.head_dim, case.rank, case.window).to(device)
    backward = case.mode == "backward"
    pos.train(backward)
    keep = case.cache and method.keeps_term
    if keep:  # keep whatever the scheme builds (the network's shared budget is not in play here)
        pos.bias_budget = CacheBudget(2**62)
    shape = (case.windows, case.heads, case.tokens, case.head_dim)  # (windows, heads, N, D)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=backward) for _ in range(3))
    backend: AttentionFn = make_backend(method.backend)
    with torch.enable_grad() if backward else torch.no_grad():  # the grad mode of the timed calls: auto's choice
        path = backend.choose(q, pos).__name__ if isinstance(backend, AutoAttention) else backend.__name__
    grad = torch.randn(shape, device=device, dtype=dtype) if backward else None

    def attend() -> torch.Tensor:
        q_rot, k_rot = pos.rotate(q, k, case.window)  # as WindowAttention does before every path (RoPE)
        return backend(q_rot, k_rot, v, pos, case.window)

    def run() -> None:
        if not keep:
            pos.clear_cache()
        if backward:
            attend().backward(grad)
            for t in (q, k, v, *pos.parameters()):
                t.grad = None
        else:
            with torch.no_grad():
                attend()

    return run, path.removeprefix("attend_")


def time_callable(
    fn: Callable[[], None], device: torch.device, repeats: int = 5, warmup: int = 1, max_seconds: float = 30.0
) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU seconds of each timed call after ``warmup`` calls.

    Stops early once ``max_seconds`` of wall time are spent. The CPU time (all threads of this process)
    does not grow while the process waits for a core, so on a loaded machine a one-thread run's CPU time
    is the better estimate of its unloaded wall time.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    wall: list[float] = []
    cpu: list[float] = []
    while len(wall) < repeats and (not wall or sum(wall) < max_seconds):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


# ------------------------------------------------------------------------------------------ CPU memory
def _measure_rss_peak(setup: Callable[[], Callable[[], None]]) -> dict[str, float]:
    """In this (fresh) process: RSS before setup, before the call, and the peak during one call (MiB)."""
    gc.collect()
    start = proc_status_bytes("VmRSS")
    fn = setup()
    fn()  # warm-up: one-time allocations (kernels, caches meant to persist) are not part of the call
    gc.collect()
    before = proc_status_bytes("VmRSS")
    peak = peak_bytes(fn, torch.device("cpu"), release=False)  # VmHWM reset to the RSS, minus the RSS
    return {"peak_mb": peak / MIB, "held_mb": (before - start) / MIB}


def _child_main(argv: Sequence[str]) -> None:
    """Entry point of the measuring subprocess: ``python -m ribsr.bench SPEC_JSON OUT_JSON``."""
    spec = json.loads(argv[0])
    torch.set_num_threads(spec.pop("threads"))
    kind = spec.pop("kind")
    if kind == "attention":
        case = AttentionCase(**spec)
        result = _measure_rss_peak(lambda: _attention_callable(case)[0])
    else:
        result = _measure_rss_peak(lambda: _model_callable(**spec))
    Path(argv[1]).write_text(json.dumps(result))


def _measure_in_subprocess(kind: str, spec: dict[str, Any], threads: int, timeout: float) -> dict[str, float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else src
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        payload = json.dumps({"kind": kind, "threads": threads, **spec})
        proc = subprocess.run(
            [sys.executable, "-m", "ribsr.bench", payload, str(out)],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"memory subprocess failed (exit {proc.returncode}): {' | '.join(tail)}")
        return json.loads(out.read_text())


def memory_method(device: str) -> str:
    """How peak memory is measured on this device (stated in every report)."""
    if torch.device(device).type == "cuda":
        return "CUDA caching allocator: max_memory_allocated during the call minus memory_allocated before it"
    return ("fresh subprocess per case: VmHWM during the call (reset after one warm-up call) minus VmRSS "
            "just before it, glibc mmap threshold 64 KiB")


# ------------------------------------------------------------------------------------------ attention
def bench_attention(
    cases: Sequence[AttentionCase],
    timing: Timing = Timing(),
    max_bytes: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Time (median ms) and measure (peak MiB) each case; yields one result dict per case as it finishes.

    ``max_bytes``: cases whose rough estimate exceeds it are skipped (their result says why).
    """
    with _threads(timing.threads) as threads:
        timing = dataclasses.replace(timing, threads=threads)
        yield from (_bench_attention_case(case, timing, max_bytes) for case in cases)


def _bench_attention_case(case: AttentionCase, timing: Timing, max_bytes: int | None) -> dict[str, Any]:
    device = torch.device(case.device)
    result: dict[str, Any] = {
        "method": case.method, "window": case.window, "mode": case.mode, "ms": None, "cpu_ms": None,
        "peak_mb": None, "held_mb": None, "windows": case.windows, "path": None, "runs": 0, "skipped": None,
    }
    estimate = estimate_bytes(case)
    if max_bytes is not None and estimate > max_bytes:
        result["skipped"] = f"estimated {estimate / 2**30:.1f} GiB > limit {max_bytes / 2**30:.1f} GiB"
        return result

    if METHODS[case.method].backend == "cpu_kernel" and not cpu_attention.available():
        result["skipped"] = f"ribsr's CPU kernel is unavailable: {cpu_attention.unavailable_reason()}"
        return result

    def make() -> Callable[[], Any]:
        fn, result["path"] = _attention_callable(case)
        return fn

    return _measure(result, make, device, "attention", dataclasses.asdict(case), timing, digits=3)


def _measure(
    result: dict[str, Any], make: Callable[[], Callable[[], Any]], device: torch.device, kind: str,
    spec: dict[str, Any], timing: Timing, digits: int,
) -> dict[str, Any]:
    """Fill ``result`` with the median wall and CPU ms of ``make()()`` and its peak MiB (CUDA: the
    allocator's peak; CPU: a fresh subprocess running ``kind``/``spec``); out of memory becomes a skip."""
    try:
        fn = make()
        if device.type == "cuda":
            fn()  # warm-up outside the peak window
            result["peak_mb"] = round(peak_bytes(fn, device, release=False) / MIB, digits)
        times, cpu = time_callable(fn, device, timing.repeats, timing.warmup, timing.max_seconds)
        del fn
        result["ms"] = round(1e3 * statistics.median(times), digits)
        result["cpu_ms"] = round(1e3 * statistics.median(cpu), digits)
        result["runs"] = len(times)
        if timing.memory and device.type == "cpu":
            threads = timing.threads or torch.get_num_threads()
            measured = _measure_in_subprocess(kind, spec, threads, timing.subprocess_timeout)
            result["peak_mb"] = round(measured["peak_mb"], digits)
            result["held_mb"] = round(measured["held_mb"], digits)
    except torch.cuda.OutOfMemoryError as exc:
        result["skipped"] = f"out of memory: {str(exc).splitlines()[0]}"
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def attention_cases(
    windows: Sequence[int],
    methods: Sequence[str] | None = None,
    backward: bool = False,
    **fields: Any,
) -> list[AttentionCase]:
    """Every (window, mode, method) case, windows in the given order (forward-only methods: forward cases)."""
    modes = MODES if backward else MODES[:1]
    return [AttentionCase(method=m, window=w, mode=mode, **fields)
            for w in windows for mode in modes for m in (methods or list(METHODS))
            if mode == "forward" or not METHODS[m].forward_only]


# ------------------------------------------------------------------------------------------ whole network
def _model_callable(
    preset: str, scale: int, attn_type: str, lr_size: Sequence[int], batch: int = 1, train: bool = False,
    device: str = "cpu", dtype: str = "float32", attention: str = "auto", bias_cache_bytes: int | None = None,
) -> Callable[[], None]:
    """A no-argument function: one inference (no_grad, eval) or one AdamW step (L1 loss) of the network.

    ``bias_cache_bytes``: the network's budget for dense biases kept between eval calls (None: its default;
    0: rebuilt on every call, as the RPB networks' code does).
    """
    from ribsr.build import build_model

    dev, dt = torch.device(device), DTYPES[dtype]
    model = build_model(preset, scale=scale, attention=attention, attn_type=attn_type).to(dev, dt)
    if bias_cache_bytes is not None:
        model.set_bias_cache(bias_cache_bytes)
    x = torch.rand(batch, 3, *lr_size, device=dev, dtype=dt)
    if not train:
        model.eval()

        def infer() -> None:
            with torch.no_grad():
                model(x)

        return infer
    model.train()
    target = torch.rand(batch, 3, lr_size[0] * scale, lr_size[1] * scale, device=dev, dtype=dt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.l1_loss(model(x), target).backward()
        opt.step()

    return step


def bench_model(
    preset: str,
    attn_types: Sequence[str] = ("RIB",),
    scale: int = 2,
    lr_size: Sequence[int] = (128, 128),
    batch: int = 1,
    train: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
    attention: str = "auto",
    bias_cache_bytes: int | None = None,
    timing: Timing = MODEL_TIMING,
) -> Iterator[dict[str, Any]]:
    """Median latency and peak memory of a whole network per attention type (one result dict each).

    Inference: one no-grad eval forward of a (batch, 3, *lr_size) input, after a warm-up call (so biases
    the network caches in eval mode are built; ``held_mb`` on the CPU is what the warm-up left resident).
    ``train``: one AdamW step on that batch with an L1 loss against a random target.
    ``bias_cache_bytes``: the network's dense-bias budget (None: the default; 0: nothing kept).
    """
    with _threads(timing.threads) as threads:
        timing = dataclasses.replace(timing, threads=threads)
        for attn_type in attn_types:
            spec = dict(preset=preset, scale=scale, attn_type=attn_type, lr_size=list(lr_size), batch=batch,
                        train=train, device=device, dtype=dtype, attention=attention,
                        bias_cache_bytes=bias_cache_bytes)
            yield _bench_model_case(spec, timing)


def _bench_model_case(spec: dict[str, Any], timing: Timing) -> dict[str, Any]:
    dev = torch.device(spec["device"])
    h, w = spec["lr_size"]
    result: dict[str, Any] = {
        "preset": spec["preset"], "scale": spec["scale"], "attn_type": spec["attn_type"],
        "mode": "train" if spec["train"] else "inference", "input": f"{spec['batch']}x3x{h}x{w}",
        "ms": None, "cpu_ms": None, "peak_mb": None, "held_mb": None, "runs": 0, "skipped": None,
    }
    return _measure(result, lambda: _model_callable(**spec), dev, "model", spec, timing, digits=1)


# ------------------------------------------------------------------------------------------ reporting
def environment(device: str, dtype: str, threads: int | None = None) -> dict[str, Any]:
    """What a report must state: device, torch version, threads, dtype, memory method."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    return {
        "device": f"{dev.type}: {name}", "torch": torch.__version__, "threads": threads or torch.get_num_threads(),
        "dtype": dtype, "memory": memory_method(device),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"{os.cpu_count()} logical cores"


def format_table(results: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of result dicts (missing values as ``-``)."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in results]
    return "\n".join(lines)


def plot_attention(results: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Log-log plot of latency and peak memory against window size, one line per method and mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'ribsr[bench]'") from exc
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        series.setdefault((r["method"], r["mode"]), []).append(r)
    colors = {m: f"C{i}" for i, m in enumerate(METHODS)}
    for (method, mode), rows in series.items():
        rows = sorted(rows, key=lambda r: r["window"])
        for ax, key in zip(axes, ("ms", "peak_mb"), strict=True):
            points = [(r["window"], r[key]) for r in rows if r.get(key)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", color=colors.get(method, "k"),
                        linestyle="-" if mode == "forward" else "--", label=f"{method} ({mode})")
    for ax, label in zip(axes, ("median latency (ms)", "peak memory above inputs (MiB)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("window size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":  # the measuring subprocess
    _child_main(sys.argv[1:])
