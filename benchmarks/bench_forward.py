"""Seconds per forward pass of a model on one input size, with and without the allocator tuning.

Each setting runs in its own fresh process (the tuning is process-wide), alternating, ``--processes`` times;
each process times ``--runs`` calls after one untimed call and reports the median.

    python benchmarks/bench_forward.py --model default --scale 2 --size 512 --threads 2 --processes 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_CHILD = """
import json, statistics, sys, time, torch, ribsr
model, scale, size, threads, runs, tuned = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \\
    int(sys.argv[5]), sys.argv[6] == "1"
if tuned and not ribsr.tune_cpu_allocator():
    sys.exit("the allocator tuning did not take (not glibc?)")
torch.set_num_threads(threads)
m = ribsr.load_model(model, scale=scale)
x = torch.rand(1, 3, size, size)
times = []
with torch.inference_mode():
    m(x)
    for _ in range(runs):
        t = time.perf_counter(); m(x); times.append(time.perf_counter() - t)
print(json.dumps(statistics.median(times)))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--processes", type=int, default=3)
    a = p.parse_args()
    results: dict[str, list[float]] = {"plain": [], "tuned allocator": []}
    for _ in range(a.processes):
        for name, flag in (("plain", "0"), ("tuned allocator", "1")):
            args = [a.model, a.scale, a.size, a.threads, a.runs, flag]
            out = subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)], capture_output=True, text=True,
                                 check=True).stdout
            results[name].append(json.loads(out))
    print(f"{a.model} x{a.scale}, {a.size}x{a.size}, {a.threads} threads: median seconds per forward of each process")
    for name, values in results.items():
        print(f"  {name:16s} " + "  ".join(f"{v:.3f}" for v in values) + f"   (median {statistics.median(values):.3f})")


if __name__ == "__main__":
    main()
