"""``ribsr train``: train an SST or ESC-RIB network from a BasicSR-style option file (alone, or under torchrun)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ribsr.cli.argtypes import positive

EPILOG = """\
The option file is the paper's (BasicSR layout): name, scale, manual_seed, network_g, datasets.train and
datasets.val_*, train, val, logger, path. Relative data paths resolve against the option file's folder.
Every problem in the file is reported at once, before any work starts.

Several processes: torchrun --nproc_per_node N -m ribsr train OPTIONS.yml (DDP: nccl on CUDA, gloo on
CPU; batch_size_per_gpu is per process). SIGINT/SIGTERM finish the current step, save a checkpoint and
exit with 128 + the signal number; --resume auto continues from the newest readable checkpoint. A resumed
run keeps the optimizer and learning-rate schedule of its checkpoint (train.optim_g, optim_d, scheduler,
warmup_iter): options that change them are named in a warning and not used; total_iter is the options'.
A run holds RUN/.lock while it runs: a second ribsr train on the same --run-dir is refused, naming the first.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an SST or ESC-RIB network from a BasicSR-style option file",
        description="Train an SST or ESC-RIB network from the paper's BasicSR-style option file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("options", type=Path, help="the option file (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an option by dotted path, value in YAML (e.g. train.total_iter=1000); repeatable")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="where logs and checkpoints go (default: runs/NAME under the current folder)")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="continue from the newest readable checkpoint of the run directory (auto) or a checkpoint")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (CUDA when available, else CPU; the default), cpu or cuda; each process uses "
                   "cuda:LOCAL_RANK under torchrun, so cuda:N is not taken")
    p.add_argument("--threads", type=positive(int), default=None, metavar="N",
                   help="CPU threads per process (default: torch's default, usually one per core); one thread "
                   "per run pinned to its own core (taskset) is how two runs share a 2-core machine well")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the log file is kept)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ribsr.train.loop import Trainer, TrainingError, TrainingInterrupted, setup_distributed
    from ribsr.train.options import load_options
    from ribsr.train.state import run_dir_lock

    opts = load_options(args.options, args.overrides)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    dist_info = setup_distributed(args.device)
    run_dir = args.run_dir if args.run_dir is not None else Path("runs") / opts.name
    # One run per run directory, for the run's whole life (under DDP rank 0 holds it for all).
    lock = run_dir_lock(run_dir) if dist_info.is_main else contextlib.nullcontext()
    try:
        with lock:
            trainer = Trainer(opts, run_dir, dist_info=dist_info, resume=args.resume,
                              progress=not args.no_progress and sys.stderr.isatty())
            result = trainer.fit()
    except TrainingInterrupted as exc:
        if dist_info.is_main:
            print(f"ribsr train: {exc}; continue with --resume auto", file=sys.stderr)
        return 128 + int(exc.signum)
    except TrainingError as exc:
        print(f"ribsr train: error: {exc}", file=sys.stderr)
        return 1
    finally:
        _leave_group()
    if dist_info.is_main:
        best = ", ".join(f"{k} {v['value']:.4f} (iteration {v['iteration']})" for k, v in result.best.items())
        print(f"trained {opts.name} to iteration {result.iteration} in {run_dir}"
              + (f"; best {best}" if best else "") + (f"; checkpoint {result.checkpoint}" if result.checkpoint else ""))
    return 0


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

