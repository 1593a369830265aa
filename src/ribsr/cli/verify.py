"""``ribsr verify``: load a released-format checkpoint and compare with the paper's recorded output."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

# Searched when no folder is given: the shared released-format fixture, and this repository's own
# reference cases (tests/fixtures/official) when run from the repository root.
DEFAULT_FIXTURES = (Path("../shared/fixtures/official-sst"), Path("tests/fixtures/official"))
# Attention paths checked when --attention is not given; also cpu_kernel where it builds.
DEFAULT_PATHS = ("reference", "bias", "concat")


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
        "fixtures", nargs="*", type=Path,
        help="fixture folders (default: $RIBSR_SHARED/fixtures/official-sst or ../shared/fixtures/official-sst, "
        "and tests/fixtures/official when present)",
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed (default 1e-4)")
    p.add_argument("--attention", nargs="+",
                   help=f"attention paths to check (default: {', '.join(DEFAULT_PATHS)}, and cpu_kernel where "
                   "ribsr's CPU kernel builds)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ribsr.checkpoint import load_model

    folders = list(args.fixtures)
    if not folders:
        shared = os.environ.get("RIBSR_SHARED")
        first = Path(shared) / "fixtures" / "official-sst" if shared else DEFAULT_FIXTURES[0]
        folders = [first] + [p for p in DEFAULT_FIXTURES[1:] if (p / "cases.json").is_file()]
    paths = args.attention or default_paths()
    worst, count, not_finite = 0.0, 0, 0
    print(f"{'case':<24} {'attention':<10} {'max |diff|':>11} {'seconds':>8}")
    for root in folders:
        for name, case in read_cases(root).items():
            io = torch.load(root / f"{name}_io.pt", weights_only=True)
            checkpoint = case.get("checkpoint", f"{name}.pth")
            for attention in paths:
                # a case that loads another case's checkpoint is a scale change: the resizing is asked for
                model = load_model(root / checkpoint, config=case["network_g"], attention=attention,
                                   resize_upsampler=checkpoint != f"{name}.pth")
                start = time.perf_counter()
                with torch.no_grad():
                    out = model(io["input"])
                seconds = time.perf_counter() - start
                diff = (out - io["output"]).abs().max().item()
                if not math.isfinite(diff):  # max() would keep the finite worst: a NaN must fail
                    not_finite += 1
                else:
                    worst = max(worst, diff)
                count += 1
                print(f"{name:<24} {attention:<10} {diff:>11.2e} {seconds:>8.3f}")
    ok = worst <= args.tolerance and not not_finite
    bad = f", {not_finite} with NaN or infinite differences" if not_finite else ""
    print(f"{'OK' if ok else 'FAILED'}: {count} runs{bad}, worst finite max abs difference {worst:.2e} "
          f"(tolerance {args.tolerance:g})")
    return 0 if ok else 1


def default_paths() -> list[str]:
    """The paths checked without --attention: :data:`DEFAULT_PATHS`, and ``cpu_kernel`` where it builds."""
    from ribsr.kernels import cpu_attention

    return [*DEFAULT_PATHS, *(["cpu_kernel"] if cpu_attention.available() else [])]


def read_cases(root: Path) -> dict[str, dict]:
    """The cases of a fixture folder's cases.json: an object of case name -> an object with ``network_g`` (and
    optionally ``checkpoint``); ValueError naming the file otherwise."""
    cases_file = root / "cases.json"
    if not cases_file.is_file():
        raise FileNotFoundError(f"no cases.json in fixture folder {root}")
    try:
        cases = json.loads(cases_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{cases_file}: not valid JSON ({exc})") from None
    if not isinstance(cases, dict):
        raise ValueError(f"{cases_file}: expected an object of case name -> case, got {type(cases).__name__}")
    for name, case in cases.items():
        if not isinstance(case, dict) or not isinstance(case.get("network_g"), dict):
            raise ValueError(f"{cases_file}: case {name!r} must be an object with a network_g object, got {case!r:.80}")
        if not isinstance(case.get("checkpoint", ""), str):
            raise ValueError(f"{cases_file}: case {name!r}: checkpoint must be a file name, got {case['checkpoint']!r}")
    return cases
