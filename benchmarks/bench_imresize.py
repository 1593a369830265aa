"""Time ribsr.imresize on a 2040x1356 RGB uint8 image (a DIV2K-sized frame).

Usage: PYTHONPATH=src python benchmarks/bench_imresize.py [--repeat N] [--threads T]
Prints the median wall time of N runs for x1/2 and x1/4 down and x2 up, numpy and torch input.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ribsr.imresize import imresize


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up: builds and caches the weight matrices
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(1356, 2040, 3), dtype=np.uint8)  # (H, W, C)
    tensor = torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0)  # (1, 3, H, W)
    print(f"image 2040x1356 RGB, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeat}")
    print(f"{'case':<28}{'seconds':>10}")
    for label, scale in (("x1/2 down", 0.5), ("x1/4 down", 0.25), ("x2 up", 2.0)):
        t_np = median_seconds(lambda s=scale: imresize(img, s), args.repeat)
        t_pt = median_seconds(lambda s=scale: imresize(tensor, s), args.repeat)
        print(f"{label + ' (uint8 numpy)':<28}{t_np:>10.3f}")
        print(f"{label + ' (float32 tensor)':<28}{t_pt:>10.3f}")


if __name__ == "__main__":
    main()
