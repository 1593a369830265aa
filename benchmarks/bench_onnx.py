"""onnxruntime against PyTorch on the CPU: one network, one input, both engines in one process (numbers in
docs/benchmarks.md).

    # light x2, random weights, 128x128 input, 2 threads, median of 5 timed calls each after one warm-up
    python benchmarks/bench_onnx.py --preset light --scale 2 --size 128 --threads 2 --runs 5

The network is exported twice (``ribsr.onnx.export_onnx``): with standard ONNX operators and with
onnxruntime's fused attention (``fused_attention=True``). The timed calls are interleaved (PyTorch, ONNX
standard, ONNX fused, PyTorch, ...) so that a change of machine load hits all engines alike. Peak memory
is measured in a fresh subprocess per engine: the increase of the resident high-water mark (``VmHWM``)
over the resident size before the model is loaded, for loading plus one call (weights, onnxruntime's
session and arena, the call's activations).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import ribsr
from ribsr.memory import proc_status_bytes
from ribsr.onnx import OnnxModel, export_onnx

ENGINES = ("pytorch", "onnx-standard", "onnx-fused")


def build(args: argparse.Namespace) -> ribsr.SST:
    torch.manual_seed(args.seed)
    return ribsr.build_model(args.preset, scale=args.scale).eval()


def load(engine: str, args: argparse.Namespace, folder: Path) -> torch.nn.Module:
    if engine == "pytorch":
        return build(args)
    return OnnxModel(folder / f"{engine}.onnx", threads=args.threads)


def memory_child(args: argparse.Namespace) -> int:
    """(subprocess) Print the peak resident increase of loading ``args.engine`` and one call, in bytes."""
    torch.set_num_threads(args.threads)
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    base = proc_status_bytes("VmRSS")
    model = load(args.engine, args, Path(args.folder))
    with torch.inference_mode():
        model(x)
    print(proc_status_bytes("VmHWM") - base)
    return 0


def peak_mib(engine: str, args: argparse.Namespace, folder: Path) -> float:
    cmd = [sys.executable, __file__, "--memory-child", "--engine", engine, "--folder", str(folder),
           "--preset", args.preset, "--scale", str(args.scale), "--size", str(args.size),
           "--threads", str(args.threads), "--seed", str(args.seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="light")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--size", type=int, default=128, help="input side in pixels (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5, help="timed calls per engine (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip the peak memory subprocesses")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        return memory_child(args)

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build(args)
        export_s = {}
        for engine, fused in (("onnx-standard", False), ("onnx-fused", True)):
            t0 = time.perf_counter()
            export_onnx(model, folder / f"{engine}.onnx", fused_attention=fused)
            export_s[engine] = time.perf_counter() - t0
        models = {engine: (model if engine == "pytorch" else load(engine, args, folder)) for engine in ENGINES}
        x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
        times: dict[str, list[float]] = {e: [] for e in ENGINES}
        outputs = {}
        with torch.inference_mode():
            for engine, m in models.items():  # warm-up (and the outputs to compare)
                outputs[engine] = m(x)
            for _ in range(args.runs):
                for engine, m in models.items():
                    t0 = time.perf_counter()
                    m(x)
                    times[engine].append(time.perf_counter() - t0)
        peaks = {} if args.no_memory else {e: peak_mib(e, args, folder) for e in ENGINES}

    print(f"{args.preset} x{args.scale}, random weights (seed {args.seed}), input 1x3x{args.size}x{args.size}, "
          f"float32, {args.threads} threads, torch {torch.__version__}, onnxruntime {_ort_version()}; "
          f"median of {args.runs} calls after one warm-up")
    print(f"{'engine':<15}{'median ms':>10}{'min ms':>8}{'max ms':>8}{'vs PyTorch':>11}{'peak MiB':>10}"
          f"{'max |diff|':>12}")
    results = {}
    ref = statistics.median(times["pytorch"])
    for engine in ENGINES:
        med = statistics.median(times[engine])
        diff = (outputs[engine] - outputs["pytorch"]).abs().max().item()
        peak = peaks.get(engine)
        results[engine] = {"median_ms": med * 1e3, "runs_ms": [t * 1e3 for t in times[engine]],
                           "peak_mib": peak, "max_abs_diff": diff, "export_s": export_s.get(engine)}
        peak_text = f"{peak:>10.0f}" if peak is not None else f"{'-':>10}"
        print(f"{engine:<15}{med * 1e3:>10.0f}{min(times[engine]) * 1e3:>8.0f}{max(times[engine]) * 1e3:>8.0f}"
              f"{med / ref:>10.2f}x{peak_text}{diff:>12.1e}")
    print("export s: " + ", ".join(f"{e} {s:.1f}" for e, s in export_s.items()))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in
                                                  ("json", "memory_child", "engine", "folder")},
                                         "torch": torch.__version__, "onnxruntime": _ort_version(),
                                         "results": results}, indent=2))
    return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    sys.exit(main())
