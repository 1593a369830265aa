"""Where the CPU time of one forward pass goes: operator-level ``torch.profiler`` tables.

Profiles a ribsr preset (and, with ``--official-root``, the paper's own SST code on the same network,
imported as ``scripts/make_official_fixtures.py`` does) in eval mode under ``inference_mode`` after
``--warmup`` untimed calls, and prints per network the median wall time of ``--runs`` calls, the operator
table (self CPU time) and a summary by kind: the attention kernel, copies (layout changes, window
partitions, casts), convolutions and linear maps, and the pointwise rest.

    python benchmarks/profile_cpu.py --preset light --scale 2 --size 128 --threads 2
    python benchmarks/profile_cpu.py --size 128 --official-root /path/to/paper-code \
        --official-module sst_official.sst_arch
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from ribsr.build import build_model
from ribsr.config import preset

# Operator name -> kind, by substring (first match wins).
KINDS = (
    ("attention", ("scaled_dot_product", "flash_attention", "ribsr::cpu_attention")),
    ("copies", ("copy_", "clone", "_to_copy", "cat", "reflection_pad", "contiguous", "roll", "index_select")),
    ("convolutions and linear maps", ("conv", "addmm", "linear", "mm", "bmm")),
    ("pointwise", ("gelu", "add", "mul", "sigmoid", "layer_norm", "relu", "sub", "div", "pixel_shuffle")),
)


def kind_of(name: str) -> str:
    for kind, needles in KINDS:
        if any(n in name for n in needles):
            return kind
    return "other"


def official_model(root: str, module: str, network_g: dict[str, Any]) -> nn.Module:
    """The paper's SST built from ``network_g`` (its option files' keys)."""
    sys.path.insert(0, root)
    cls = importlib.import_module(module).SST
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in network_g.items() if k in accepted})


def network_g_of(name: str, scale: int) -> dict[str, Any]:
    """The paper's ``network_g`` keys for a ribsr preset."""
    c = preset(name, scale=scale)
    return {
        "dim": c.dim, "window_sizes": list(c.window_sizes), "num_heads": list(c.num_heads), "ranks": list(c.ranks),
        "n_blocks": c.n_blocks, "exp_ratio": c.exp_ratio, "attn_type": c.attn_type, "upscaling_factor": c.scale,
        "upsampler_type": c.upsampler, "intermediate_dim": c.intermediate_dim, "rib_hidden_dim": c.rib_hidden_dim,
        "rib_n_freqs": c.rib_n_freqs, "gate_type": c.gate_type,
    }


def profile_model(label: str, model: nn.Module, x: torch.Tensor, warmup: int, runs: int, rows: int) -> None:
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    by_kind: dict[str, float] = defaultdict(float)
    for e in events:
        by_kind[kind_of(e.key)] += e.self_cpu_time_total
    print(f"== {label}: median {statistics.median(times):.3f} s over {runs} calls "
          f"({', '.join(f'{t:.3f}' for t in times)})")
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
    print(f"{label}: self CPU time by kind (profiled call, {total / 1e6:.3f} s in all)")
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:32s} {us / 1e3:9.1f} ms  {100 * us / total:5.1f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="light")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--size", type=int, default=128, help="input side in pixels")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--attention", default="auto", help="ribsr's attention backend")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rows", type=int, default=15, help="operator rows per table")
    p.add_argument("--official-root", help="directory the paper's code imports from (also profiled when given)")
    p.add_argument("--official-module", default="sst_official.sst_arch")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.rand(1, 3, a.size, a.size)
    ours = build_model(a.preset, scale=a.scale, attention=a.attention)
    profile_model(f"ribsr {a.preset} x{a.scale} {a.size}px ({a.attention})", ours, x, a.warmup, a.runs, a.rows)
    if a.official_root:
        theirs = official_model(a.official_root, a.official_module, network_g_of(a.preset, a.scale))
        theirs.load_state_dict(ours.state_dict())
        profile_model(f"paper's code {a.preset} x{a.scale} {a.size}px", theirs, x, a.warmup, a.runs, a.rows)


if __name__ == "__main__":
    main()
