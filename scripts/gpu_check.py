#!/usr/bin/env python3
"""One prepared check for a CUDA GPU machine, within a time budget (default 450 s of 8 minutes).

Steps, each a subprocess with its own timeout (what a step leaves is kept if it times out):

1. ``tests``: ``pytest -m cuda tests/test_cuda.py`` -- the fixture in float32 / bfloat16 / float16 within
   the tolerances stated there, the flash kernel really selected for RIB, the paths' float32 agreement,
   every positional scheme training a step in bfloat16;
2. ``attention``: ``ribsr bench attention`` at windows 96 64 48 32 16 (largest first; JSON rewritten after
   every case), forward and forward+backward, bfloat16, heads 6, head dim 32, rank 32 on a 256x256 map;
3. ``model``: ``ribsr bench model large+ --scale 2 --lr-size 360x640`` (1280x720 output), RIB vs RPB, bfloat16.

Results go to ``$OUT`` (or ``--out``): ``attention_cuda.json``/``.png``, ``model_cuda.json``, the logs of every
step and ``summary.md`` with the verdicts against the targets (RIB flash >= 3x faster than naive RPB at window
64 forward+backward). ``--dry-run`` prints the plan; ``--device cpu --quick`` runs every step at tiny sizes
(the CI test of this script's logic).

Run on the GPU machine from the repository root:  ``python scripts/gpu_check.py``  (needs torch with CUDA,
pytest, and the package importable: ``pip install -e .`` or ``PYTHONPATH=src``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plan(device: str, quick: bool, out: Path) -> list[dict]:
    """The steps: name, command, timeout cap (s), and the minimum time to leave for it."""
    py = sys.executable
    if quick:
        attention = ["--windows", "8", "4", "--image", "16", "--heads", "2", "--head-dim", "8", "--rank", "4",
                     "--repeats", "1", "--warmup", "0", "--no-memory"]
        model = ["light", "--lr-size", "12x12", "--repeats", "1", "--warmup", "0", "--no-memory"]
        dtype, threads = "float32", ["--threads", "1"]  # the CPU's bfloat16 kernels are slow; this checks logic
    else:
        attention = ["--windows", "96", "64", "48", "32", "16", "--image", "256", "--heads", "6", "--head-dim", "32",
                     "--rank", "32", "--repeats", "10", "--warmup", "2", "--max-seconds", "5"]
        model = ["large+", "--lr-size", "360x640", "--repeats", "5", "--warmup", "1", "--max-seconds", "40"]
        dtype, threads = "bfloat16", []
    plot = ["--plot", str(out / "attention_cuda.png")] if importlib.util.find_spec("matplotlib") else []
    return [
        {"name": "tests", "cap": 150, "reserve": 30,
         "cmd": [py, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]},
        {"name": "attention", "cap": 180, "reserve": 60,
         "cmd": [py, "-m", "ribsr", "bench", "attention", "--device", device, "--dtype", dtype, "--backward",
                 *threads, *attention, "--json", str(out / "attention_cuda.json"), *plot]},
        {"name": "model", "cap": 150, "reserve": 60,
         "cmd": [py, "-m", "ribsr", "bench", "model", *model[:1], "--scale", "2", "--attn-type", "RIB", "RPB",
                 "--device", device, "--dtype", dtype, *threads, *model[1:], "--json", str(out / "model_cuda.json")]},
    ]


def run_steps(steps: list[dict], out: Path, budget: float) -> list[dict]:
    """Run the steps in order, each within min(cap, what the budget leaves after later steps' reserves)."""
    deadline = time.monotonic() + budget
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    records = []
    for i, step in enumerate(steps):
        later = sum(s["reserve"] for s in steps[i + 1:])
        timeout = min(step["cap"], deadline - time.monotonic() - later)
        record = {"name": step["name"], "cmd": " ".join(step["cmd"]), "timeout_s": round(timeout)}
        if timeout < 10:
            record.update(status="not run (time budget spent)", seconds=0)
            records.append(record)
            continue
        log = out / f"{step['name']}.log"
        start = time.monotonic()
        with open(log, "w") as f:
            try:
                rc = subprocess.run(step["cmd"], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=timeout).returncode
                record["status"] = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                record["status"] = f"timed out after {timeout:.0f} s (partial results kept)"
        record["seconds"] = round(time.monotonic() - start, 1)
        record["log_tail"] = log.read_text(errors="replace").strip().splitlines()[-15:]
        records.append(record)
        print(f"[gpu_check] {step['name']}: {record['status']} in {record['seconds']} s", flush=True)
    return records


def verdicts(out: Path) -> list[str]:
    """Target checks from the benchmark JSON that exists."""
    lines = []
    path = out / "attention_cuda.json"
    if path.is_file():
        rows = json.loads(path.read_text())["results"]
        by = {(r["method"], r["window"], r["mode"]): r for r in rows}
        windows = sorted({r["window"] for r in rows}, reverse=True)
        ws = 64 if 64 in windows else windows[0]
        for mode in ("backward", "forward"):
            rib, naive = by.get(("RIB concat", ws, mode)), by.get(("RPB naive", ws, mode))
            if rib and naive and rib["ms"] and naive["ms"]:
                speedup = naive["ms"] / rib["ms"]
                target = " (target >= 3x: " + ("MET" if speedup >= 3 else "NOT MET") + ")" if mode == "backward" else ""
                lines.append(f"- window {ws} {mode}: RPB naive {naive['ms']} ms / RIB concat {rib['ms']} ms = "
                             f"{speedup:.2f}x{target}; peak {naive['peak_mb']} vs {rib['peak_mb']} MiB")
            else:
                lines.append(f"- window {ws} {mode}: RIB concat or RPB naive missing or skipped")
    path = out / "model_cuda.json"
    if path.is_file():
        rows = {r["attn_type"]: r for r in json.loads(path.read_text())["results"]}
        if rows.get("RIB", {}).get("ms") and rows.get("RPB", {}).get("ms"):
            rib, rpb = rows["RIB"], rows["RPB"]
            lines.append(f"- model {rib['preset']} x{rib['scale']} {rib['input']}: RPB {rpb['ms']} ms / "
                         f"RIB {rib['ms']} ms = {rpb['ms'] / rib['ms']:.2f}x; "
                         f"peak RPB {rpb['peak_mb']} MiB vs RIB {rib['peak_mb']} MiB")
    return lines


def environment_lines() -> list[str]:
    lines = [f"- python {sys.version.split()[0]}"]
    try:
        import torch

        lines.append(f"- torch {torch.__version__}, CUDA {torch.version.cuda}, "
                     f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    except ImportError:
        lines.append("- torch not importable")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --quick: tests the logic)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for CI on the CPU)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--budget-s", type=float, default=450.0, help="total time budget in seconds (default 450)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else ./gpu_check_out)")
    args = p.parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or "gpu_check_out")
    steps = plan(args.device, args.quick, out)
    if args.dry_run:
        for s in steps:
            print(f"{s['name']} (at most {s['cap']} s): {' '.join(s['cmd'])}")
        return 0
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: CUDA is not available (use --device cpu --quick to test the logic)", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    records = run_steps(steps, out, args.budget_s)
    summary = ["# gpu_check summary", "", *environment_lines(),
               f"- total {time.monotonic() - start:.0f} s of a {args.budget_s:.0f} s budget", "", "## Steps", ""]
    for r in records:
        summary.append(f"- {r['name']}: {r['status']} ({r['seconds']} s): `{r['cmd']}`")
    summary += ["", "## Targets", "", *(verdicts(out) or ["- no benchmark results"]), ""]
    for r in records:
        if r.get("log_tail"):
            summary += [f"## {r['name']} (log tail)", "", "```", *r["log_tail"], "```", ""]
    (out / "summary.md").write_text("\n".join(summary))
    (out / "gpu_check.json").write_text(json.dumps({"steps": records}, indent=1))
    print("\n".join(summary))
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
