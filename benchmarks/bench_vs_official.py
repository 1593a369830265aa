"""Seconds per forward pass of ribsr vs the paper's own SST code, on the CPU, with the same weights.

The paper's code is *not* part of this repository (see ``scripts/make_official_fixtures.py`` for what
``--official-root`` must hold: its ``SST`` importable, with einops and a ``basicsr`` package or stubs).
Both models get the same random weights (the paper's ``SST`` initialised under ``--seed``, every parameter
plus N(0, 0.02) noise), saved as a released checkpoint (``{'params_ema': state_dict}``) and read by
``ribsr.load_model`` with the paper's ``network_g``. The default network is preset ``light`` at x2,
the ``network_g`` of the paper's options/test/SSTlight_X2.yaml.

For every size: one untimed call of each, then ``--repeats`` alternating timed calls (ours, theirs, ours,
theirs, ...) in ``torch.inference_mode()``, float32, ``--threads`` threads; it prints the medians, the
ratio theirs/ours (> 1: ribsr is faster) and the largest absolute difference of the two outputs. The
paper's attention casts q, k, v to bfloat16 (``--oracle-attention paper``, what it ships), so the outputs
agree only to bfloat16 rounding there; ``--oracle-attention exact`` swaps in the float64 computation the
fixture script uses (slower: for checking agreement, not for timing). Exit status 1 when the difference
exceeds ``--tol``.

    python benchmarks/bench_vs_official.py --official-root /path/to/paper-code \\
        --official-module sst_official.sst_arch --sizes 128 512 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import ribsr
from ribsr.build import resolve_config
from ribsr.config import preset

# network_g of the paper's options/test/SSTlight_X2.yaml (= ribsr preset "light" at x2).
LIGHT_X2: dict[str, Any] = {
    "type": "SST",
    "dim": 48,
    "window_sizes": [8, 16, 32, 16, 32, 64],
    "num_heads": [3, 3, 3, 3, 3, 3],
    "ranks": [16, 16, 16, 24, 24, 24],
    "n_blocks": 5,
    "exp_ratio": 1.5,
    "attn_type": "RIB",
    "rib_hidden_dim": 32,
    "rib_n_freqs": 10,
    "upscaling_factor": 2,
    "upsampler_type": "pixelshuffle_direct",
    "gate_type": "DWC",
}
NOISE_STD = 0.02
FIXTURE_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_official_fixtures.py"


def _fixture_script() -> ModuleType:
    """scripts/make_official_fixtures.py as a module (its oracle import and exact attention)."""
    spec = importlib.util.spec_from_file_location("make_official_fixtures", FIXTURE_SCRIPT)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {FIXTURE_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_weights(sst_cls: type, network_g: dict[str, Any], seed: int) -> torch.nn.Module:
    """The paper's SST for ``network_g`` under ``seed``, every parameter plus N(0, NOISE_STD) noise."""
    torch.manual_seed(seed)
    model = sst_cls(**{k: v for k, v in network_g.items() if k != "type"})
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * NOISE_STD)
    return model.eval()


def time_call(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_size(ours: torch.nn.Module, theirs: torch.nn.Module, size: int, repeats: int,
               oracle_ctx: Callable[[], contextlib.AbstractContextManager[None]]) -> dict[str, Any]:
    """Median seconds of each model on a (1, 3, size, size) input (and every call's), and the max abs difference of
    the outputs."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    with torch.inference_mode(), oracle_ctx():
        out_ours = ours(x)  # warm-up
        out_theirs = theirs(x)
        for _ in range(repeats):
            t, out_ours = time_call(lambda: ours(x))
            times["ours"].append(t)
            t, out_theirs = time_call(lambda: theirs(x))
            times["theirs"].append(t)
    if out_ours.shape != out_theirs.shape:
        raise SystemExit(f"output shapes differ at {size}: ours {tuple(out_ours.shape)}, "
                         f"theirs {tuple(out_theirs.shape)}")
    return {
        "ours": statistics.median(times["ours"]),
        "theirs": statistics.median(times["theirs"]),
        "max_abs_diff": (out_ours - out_theirs).abs().max().item(),
        "ours_all": times["ours"],
        "theirs_all": times["theirs"],
    }


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official-root", type=Path, required=True, help="directory the paper's code is imported from")
    p.add_argument("--official-module", help="module holding the paper's SST (default: the fixture script's list)")
    p.add_argument("--sizes", type=_positive, nargs="+", default=[128, 512], help="input sides (default 128 512)")
    p.add_argument("--threads", type=_positive, default=2, help="torch threads (default 2)")
    p.add_argument("--repeats", type=_positive, default=5, help="timed calls of each model per size (default 5)")
    p.add_argument("--attention", default="auto", help="ribsr attention backend (default auto)")
    p.add_argument("--oracle-attention", choices=("paper", "exact"), default="paper",
                   help="the paper's bfloat16 attention (default) or the float64 one of the fixture script")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--tol", type=float, default=1e-2, help="largest max abs difference accepted (default 1e-2)")
    p.add_argument("--tune-allocator", action="store_true",
                   help="ribsr.tune_cpu_allocator() first, as the ribsr command line does (process-wide: both models)")
    a = p.parse_args()
    if not a.official_root.is_dir():
        raise SystemExit(f"--official-root {a.official_root} is not a directory")

    torch.set_num_threads(a.threads)
    tuned = ribsr.tune_cpu_allocator() if a.tune_allocator else False
    fixtures = _fixture_script()
    sst_cls, attn_cls = fixtures.import_sst(a.official_root, a.official_module)

    config = resolve_config(LIGHT_X2)
    if config != dataclasses.replace(preset("light", 2), name=None):
        print(f"note: the network_g resolves to {config}, not preset light x2")

    theirs = random_weights(sst_cls, LIGHT_X2, a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "light_x2_random.pth"
        torch.save({"params_ema": {k: v.detach().clone() for k, v in theirs.state_dict().items()}}, ckpt)
        ours = ribsr.load_model(ckpt, config=LIGHT_X2, attention=a.attention)

    def oracle_ctx() -> contextlib.AbstractContextManager[None]:
        return fixtures.exact_attention(attn_cls) if a.oracle_attention == "exact" else contextlib.nullcontext()

    print(f"SST light x2 (paper's SSTlight_X2 network_g), float32, CPU, {torch.get_num_threads()} threads, "
          f"{a.repeats} alternating repeats; ribsr attention {a.attention!r}, oracle attention {a.oracle_attention!r}; "
          f"glibc allocator {'tuned' if tuned else 'as it is'}")
    worst = 0.0
    for size in a.sizes:
        r = bench_size(ours, theirs, size, a.repeats, oracle_ctx)
        worst = max(worst, r["max_abs_diff"])
        print(f"  {size:4d}x{size:<4d} ours {r['ours']:8.3f} s   theirs {r['theirs']:8.3f} s   "
              f"theirs/ours {r['theirs'] / r['ours']:5.2f}   max abs diff {r['max_abs_diff']:.2e}")
        print(f"             calls (s): ours {' '.join(f'{t:.3f}' for t in r['ours_all'])}; "
              f"theirs {' '.join(f'{t:.3f}' for t in r['theirs_all'])}")
    if worst > a.tol:
        print(f"outputs DISAGREE: max abs diff {worst:.2e} > --tol {a.tol:g}")
        return 1
    print(f"outputs agree: max abs diff {worst:.2e} <= --tol {a.tol:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
