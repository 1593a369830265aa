"""``ribsr verify``: load a released-format checkpoint and compare with the paper's recorded output."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

DEFAULT_FIXTURE = Path("../shared/fixtures/official-sst")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check that a released-format checkpoint reproduces the paper's recorded output",
        description=(
            "Loads each case of a fixture folder (cases.json, {case}.pth, {case}_io.pt), runs its input through "
            "every attention path and prints the max abs difference from the paper's code's output."
        ),
    )
    p.add_argument(
        "fixture", nargs="?", type=Path, default=None,
        help="fixture folder (default: $RIBSR_SHARED/fixtures/official-sst or ../shared/fixtures/official-sst)",
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed (default 1e-4)")
    p.add_argument("--attention", nargs="+", default=["reference", "bias", "concat", "auto"],
                   help="attention paths to check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ribsr.checkpoint import load_model

    root = args.fixture
    if root is None:
        shared = os.environ.get("RIBSR_SHARED")
        root = Path(shared) / "fixtures" / "official-sst" if shared else DEFAULT_FIXTURE
    cases_file = root / "cases.json"
    if not cases_file.is_file():
        raise FileNotFoundError(f"no cases.json in fixture folder {root}")
    cases = json.loads(cases_file.read_text())
    worst = 0.0
    print(f"{'case':<16} {'attention':<10} {'max |diff|':>11} {'seconds':>8}")
    for name, case in cases.items():
        io = torch.load(root / f"{name}_io.pt", weights_only=True)
        config = case.get("load_config", case["network_g"])
        for attention in args.attention:
            model = load_model(root / case.get("checkpoint", f"{name}.pth"), config=config, attention=attention)
            start = time.perf_counter()
            with torch.no_grad():
                out = model(io["input"])
            seconds = time.perf_counter() - start
            diff = (out - io["output"]).abs().max().item()
            worst = max(worst, diff)
            print(f"{name:<16} {attention:<10} {diff:>11.2e} {seconds:>8.3f}")
    ok = worst <= args.tolerance
    print(f"{'OK' if ok else 'FAILED'}: worst max abs difference {worst:.2e} (tolerance {args.tolerance:g})")
    return 0 if ok else 1
