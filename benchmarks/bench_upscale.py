"""Tiling fidelity and throughput checks for ``ribsr upscale`` (numbers quoted in docs/upscale.md).

    # PSNR of tiled vs untiled output on every Set14 image (random-init network: tiling fidelity
    # does not need trained weights)
    python benchmarks/bench_upscale.py fidelity --preset light --scale 2 --tile 128 --overlap 64

    # the same with the bundled (trained) model, at the smallest tile the CLI allows (2 x its 16-px alignment)
    python benchmarks/bench_upscale.py fidelity --model default --scale 2 --tile 32 --overlap 16

    # a synthetic 2000x2000 photo-like input for the memory check
    python benchmarks/bench_upscale.py make-input /tmp/big2000.png --size 2000

    # a random-init checkpoint to run the CLI with
    python benchmarks/bench_upscale.py make-model /tmp/light_x2.safetensors --preset light --scale 2
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ribsr
from ribsr.imageio import read_image
from ribsr.tiling import tiled_forward


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.clamp(0, 1).double() - b.clamp(0, 1).double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def fidelity(args: argparse.Namespace) -> int:
    root = Path(args.datasets) / "Set14" / "LR_bicubic" / f"X{args.scale}"
    files = sorted(root.glob("*.png"))
    if not files:
        print(f"no images in {root}", file=sys.stderr)
        return 1
    torch.manual_seed(args.seed)
    if args.model:
        model = ribsr.load_model(args.model, scale=args.scale)
        what = f"{args.model} x{args.scale}"
    else:
        model = ribsr.build_model(args.preset, scale=args.scale).eval()
        what = f"{args.preset} x{args.scale}, random init (seed {args.seed})"
    print(f"{what}, tile {args.tile}, overlap {args.overlap}, {torch.get_num_threads()} threads")
    print(f"{'image':<16}{'size':>10}{'PSNR dB':>10}{'max |diff|':>12}{'untiled s':>11}{'tiled s':>9}")
    worst = math.inf
    for f in files:
        img = read_image(f)
        x = torch.from_numpy(img.rgb).permute(2, 0, 1)[None]  # (1, 3, H, W)
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = model(x)
        t1 = time.perf_counter()
        out = tiled_forward(model, x, args.tile, args.overlap)
        t2 = time.perf_counter()
        p = psnr(out, ref)
        worst = min(worst, p)
        diff = (out.clamp(0, 1) - ref.clamp(0, 1)).abs().max().item()
        w, h = img.size
        print(f"{f.stem:<16}{f'{w}x{h}':>10}{p:>10.2f}{diff:>12.2e}{t1 - t0:>11.1f}{t2 - t1:>9.1f}", flush=True)
    print(f"minimum PSNR {worst:.2f} dB over {len(files)} images")
    return 0 if worst >= 50 else 1


def make_input(args: argparse.Namespace) -> int:
    src = Path(args.datasets) / "Set14" / "HR" / "baboon.png"
    with Image.open(src) as im:
        big = im.convert("RGB").resize((args.size, args.size), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 4, (args.size, args.size, 3))  # some fine detail
    arr = np.clip(np.asarray(big, np.float32) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(args.output)
    print(f"wrote {args.output} ({args.size}x{args.size})")
    return 0


def make_model(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    path = ribsr.save_model(ribsr.build_model(args.preset, scale=args.scale), args.output)
    print(f"wrote {path} (random-init {args.preset} x{args.scale})")
    return 0


def main() -> int:
    default_datasets = os.environ.get("RIBSR_DATASETS", str(Path(__file__).resolve().parents[1].parent
                                                               / "shared" / "datasets"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=default_datasets)
    p.add_argument("--seed", type=int, default=0)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fidelity")
    f.add_argument("--preset", default="light")
    f.add_argument("--model", default=None, help="a checkpoint, or 'default' for the bundled model (not --preset)")
    f.add_argument("--scale", type=int, default=2)
    f.add_argument("--tile", type=int, default=128)
    f.add_argument("--overlap", type=int, default=None)
    f.set_defaults(func=fidelity)
    m = sub.add_parser("make-input")
    m.add_argument("output")
    m.add_argument("--size", type=int, default=2000)
    m.set_defaults(func=make_input)
    k = sub.add_parser("make-model")
    k.add_argument("output")
    k.add_argument("--preset", default="light")
    k.add_argument("--scale", type=int, default=2)
    k.set_defaults(func=make_model)
    args = p.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
