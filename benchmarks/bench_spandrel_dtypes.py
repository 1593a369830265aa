"""SST through spandrel in float32, bfloat16 and float16 on the CPU: time and largest difference from float32.

Usage (in the spandrel venv, see README.md): .venv-spandrel/bin/python benchmarks/bench_spandrel_dtypes.py
    [--model PATH] [--size N] [--repeat R] [--threads T]
--model defaults to the bundled x2 model; a preset name (e.g. light) uses that preset with random weights.
Prints, per dtype, the median wall time of R calls of the descriptor on an N x N random image and the
max |output - float32 output|.
"""

from __future__ import annotations

import argparse
import statistics
import time

import spandrel
import torch

import ribsr
from ribsr.assets import default_model_path
from ribsr.config import PRESETS
from ribsr.integrations.spandrel import register


def load(model: str) -> spandrel.ImageModelDescriptor:
    loader = spandrel.ModelLoader()
    if model in PRESETS:
        torch.manual_seed(0)
        return loader.load_from_state_dict(ribsr.build_model(model).state_dict())
    return loader.load_from_file(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_path(2)))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register()
    torch.manual_seed(1)
    x = torch.rand(1, 3, args.size, args.size)
    reference = None
    print(f"{args.model}, {args.size}x{args.size}, {args.threads} threads, torch {torch.__version__}")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        descriptor = load(args.model).to(dtype)
        xd = x.to(dtype)
        out = descriptor(xd)  # warm-up (fills the positional-bias cache)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            descriptor(xd)
            times.append(time.perf_counter() - t0)
        reference = out.float() if reference is None else reference
        diff = (out.float() - reference).abs().max().item()
        print(f"  {str(dtype):15s} median {statistics.median(times):7.3f} s   max |diff vs float32| {diff:.3g}")


if __name__ == "__main__":
    main()
