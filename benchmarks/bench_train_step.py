"""Seconds per training step of a recipe, and where a step's time goes (numbers in docs/training.md).

    # median seconds per step (after warm-up steps) of the bundled model's recipe, 2 threads
    python benchmarks/bench_train_step.py configs/local/train_SST_small_x2.yml --threads 2

    # light at batch 16 with 64x64 LR patches (HR 128), data from the small recipe's folders
    python benchmarks/bench_train_step.py configs/local/train_SST_small_x2.yml --preset light \
        --set datasets.train.gt_size=128

    # where the time goes: the PyTorch profiler's table of the timed steps
    python benchmarks/bench_train_step.py configs/local/train_SST_small_x2.yml --profile

Each step is what ``ribsr train`` does per iteration (data, forward, loss, backward, AdamW, schedule,
EMA), run through :class:`ribsr.train.loop.Trainer` in a temporary run directory (no validation).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

import torch

from ribsr.config import preset
from ribsr.train.loop import Trainer
from ribsr.train.options import load_options


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("options")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--preset", default=None, help="replace network_g by a preset's network (e.g. light)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--profile", action="store_true", help="print the profiler's table of the timed steps")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    opts = load_options(args.options, args.overrides)
    if args.preset:
        opts = dataclasses.replace(opts, network=preset(args.preset, scale=opts.scale))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(opts, run_dir, progress=False)
        batches = trainer.batches()
        trainer.model.train()
        times = []

        def step() -> None:
            t0 = time.perf_counter()
            trainer.step(next(batches))
            trainer.iteration += 1
            times.append(time.perf_counter() - t0)

        for _ in range(args.warmup):
            step()
        times.clear()
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.steps):
                    step()
        else:
            for _ in range(args.steps):
                step()
    n_params = sum(p.numel() for p in trainer.model.parameters())
    d = opts.train_data
    print(f"{opts.name}: {n_params} parameters, batch {d.batch_size_per_gpu}, HR patch {d.gt_size} "
          f"(LR {d.gt_size // opts.scale}), {args.threads} threads, torch {torch.__version__}")
    print(f"seconds per step: median {statistics.median(times):.3f} (min {min(times):.3f}, max {max(times):.3f}, "
          f"{len(times)} steps after {args.warmup} warm-up)")
    if args.profile:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
