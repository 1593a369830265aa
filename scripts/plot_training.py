"""Plot a training run's loss and validation PSNR from RUN/metrics.jsonl (the curves in docs/models.md).

    python scripts/plot_training.py /work/runs/SST_small_x2 -o docs/models/x2_curves.png

Iterations logged more than once (a run resumed from a checkpoint older than its last log lines) keep
their last value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """metric name -> {iteration: value}, later lines replacing earlier ones."""
    series: dict[str, dict[int, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        it = int(row.pop("iteration"))
        for key, value in row.items():
            series.setdefault(key, {})[it] = value
    return series


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="run directories, plotted one after the other (x2 then x3 ...)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--metric", default="psnr", help="validation metric to plot (default psnr)")
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(args.runs), 2, figsize=(11, 3.4 * len(args.runs)), squeeze=False)
    for row, run in zip(axes, args.runs, strict=True):
        series = read_metrics(run)
        loss = sorted(series.get("loss", {}).items())
        row[0].plot([i for i, _ in loss], [v for _, v in loss], lw=0.8)
        row[0].set(xlabel="iteration", ylabel="L1 loss (mean over the logged window)", yscale="log",
                   title=f"{run.name}: training loss")
        for key, values in sorted(series.items()):
            if key.startswith("val/") and key.endswith(f"/{args.metric}"):
                pts = sorted(values.items())
                row[1].plot([i for i, _ in pts], [v for _, v in pts], marker="o", ms=3, label=key.split("/")[1])
        row[1].set(xlabel="iteration", ylabel=f"{args.metric.upper()} (dB, Y, EMA weights)",
                   title=f"{run.name}: validation")
        row[1].legend()
        row[1].grid(alpha=0.3)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
