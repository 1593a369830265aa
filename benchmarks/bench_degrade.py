"""Time ribsr.degrade per training sample: the degradation of one HR crop, on one core.

Usage: PYTHONPATH=src taskset -c 0 python benchmarks/bench_degrade.py [--options FILE] [--crop 512]
       [--samples 200] [--scale 4] [--images DIR]

Crops --crop x --crop patches at random places of the images in --images (default: ../shared/datasets/BSD200,
mirrored at the edges where smaller),
degrades each with its own seed (as ribsr train does: a different draw of the pipeline per sample) and prints the
median, mean, 90th percentile and maximum wall time per sample, for Real-ESRGAN's x4plus defaults and, with
--options, for the degradation of that file (an option file or a mapping of degradation keys). Threads of torch,
OpenCV and BLAS are set to one, since training runs the degradation in one data worker per core.
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ribsr.degrade import DegradationOptions, SecondOrderDegradation, load_degradation_options  # noqa: E402
from ribsr.imageio import read_array  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "BSD200"


def crops(folder: Path, size: int, n: int, seed: int) -> list[np.ndarray]:
    """``n`` random ``size`` x ``size`` uint8 RGB crops of the images in ``folder``; an image smaller than ``size``
    is first mirrored at its bottom/right edges to reach it (BSD200's photos are 481x321)."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
    if not paths:
        raise SystemExit(f"no images in {folder}")
    images = []
    for p in paths[:64]:
        img = read_array(p)  # (H, W, 3) uint8
        pad_h, pad_w = max(0, size - img.shape[0]), max(0, size - img.shape[1])
        if pad_h > img.shape[0] - 1 or pad_w > img.shape[1] - 1:
            continue  # would need more than one mirror
        images.append(np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect"))
    if not images:
        raise SystemExit(f"no image in {folder} is at least {size // 2 + 1} pixels on each side")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = images[i % len(images)]
        y = int(rng.integers(0, img.shape[0] - size + 1))
        x = int(rng.integers(0, img.shape[1] - size + 1))
        out.append(np.ascontiguousarray(img[y:y + size, x:x + size]))  # (size, size, 3) uint8
    return out


def time_pipeline(name: str, options: DegradationOptions, hr: list[np.ndarray], scale: int) -> None:
    degradation = SecondOrderDegradation(scale, options)
    degradation(hr[0], np.random.default_rng(10_000))  # warm-up: caches, codec start
    times = []
    for i, patch in enumerate(hr):
        rng = np.random.default_rng(i)
        t0 = time.perf_counter()
        degradation(patch, rng)
        times.append(time.perf_counter() - t0)
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    print(f"{name:<34} median {statistics.median(ms):6.1f} ms  mean {statistics.fmean(ms):6.1f} ms  "
          f"p90 {p90:6.1f} ms  max {ms[-1]:6.1f} ms  ({len(ms)} samples)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--options", type=Path, action="append", default=[],
                        help="option file or degradation mapping (repeatable)")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    hr = crops(args.images, args.crop, args.samples, seed=0)
    print(f"{args.crop}x{args.crop} HR crops of {args.images} at x{args.scale}, one thread, torch {torch.__version__}, "
          f"OpenCV {cv2.__version__}")
    time_pipeline("Real-ESRGAN x4plus defaults", DegradationOptions(), hr, args.scale)
    for path in args.options:
        time_pipeline(path.name, load_degradation_options(path, args.scale), hr, args.scale)


if __name__ == "__main__":
    main()
