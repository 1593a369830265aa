"""``ribsr export``: a training run's release weights as .safetensors (config inside) and a paper-layout .pth."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a training run's weights (EMA by default) with their config",
        description="Writes the newest checkpoint's weights of a run as .safetensors carrying the network config "
        "(for ribsr.load_model, ribsr upscale and ribsr evaluate), and a .pth with params/params_ema beside it "
        "for the paper's own code.",
    )
    p.add_argument("run", type=Path, help="the run directory (or one checkpoint file of it)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="the .safetensors to write (default: RUN/export/NAME.safetensors); the .pth goes beside it")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="the averaged (default) or trained weights")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ribsr.train.export import export_run

    out, pth = export_run(args.run, args.output, weights=args.weights, overwrite=args.overwrite)
    print(f"wrote {out} and {pth}")
    return 0
