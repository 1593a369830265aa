"""``ribsr compare``: one HTML report with a before/after viewer per image, and PSNR/SSIM against HR images."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ribsr.cli.argtypes import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    add_device,
    non_negative,
    pixel_count,
    positive,
    tile_size,
    unit_interval,
)
from ribsr.jobs import discover

EPILOG = """\
With one --model the report compares bicubic (left) with it (right); with two, the first (left) with the second
(right). --model takes what ribsr upscale takes (default, real, a checkpoint path or URL, an .onnx file) and
bicubic. The images are embedded in the report as base64 PNG (one file to send around), or written into
--assets-dir and linked relative to the report.

--hr DIR: the ground truth, matched by file stem (baby.png for baby.png, and for the LR naming babyx4.png at x4;
DIR/HR is used when it exists). PSNR and SSIM are computed as ribsr evaluate does: outputs rounded to 8 bits, HR
mod-cropped to the scale, Y channel, a border of SCALE pixels left out. An input without an HR image is named in
the report and on stderr.

The exit status is 0 when every input was compared (and, with --hr, measured), 1 when any was not, 2 for errors
that stop the command (an unreadable model, an output that cannot be written).
"""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare",
        help="an HTML report comparing two upscalers image by image (slider, zoom, PSNR/SSIM)",
        description="Write one HTML file with a before/after slider per image: bicubic vs a model, or two models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="LR image files, folders or glob patterns")
    p.add_argument("--model", action="append", required=True, metavar="MODEL",
                   help="the model to look at (give it twice to compare two): default, real, escrib, bicubic, a "
                   "checkpoint "
                   "path or URL, or an .onnx file")
    p.add_argument("-o", "--output", default="report.html", metavar="REPORT",
                   help="the HTML file to write (default: %(default)s)")
    p.add_argument("--hr", default=None, metavar="DIR", help="folder of HR images: adds PSNR/SSIM (Y channel)")
    p.add_argument("--assets-dir", default=None, metavar="DIR",
                   help="write the images here as PNG files and link them, instead of embedding them")
    p.add_argument("--title", default=None, help="the report's title (default: the two sides' names)")
    p.add_argument("--scale", type=positive(int), default=None,
                   help="upscaling factor (default: the model's; bundled models: x2, or this scale)")
    p.add_argument("--denoise", type=unit_interval, default=None, metavar="S",
                   help="the first model: blend the bundled default (0) and real (1) models (see ribsr upscale)")
    p.add_argument("--denoise-b", type=unit_interval, default=None, metavar="S",
                   help="the same for the second model")
    p.add_argument("--config", default=None,
                   help="network configuration (preset or YAML) for checkpoints without one (both models)")
    p.add_argument("--tile", type=tile_size, default="auto", metavar="N",
                   help="tile side in input pixels, 0 for no tiling, or auto (default)")
    p.add_argument("--tile-overlap", type=non_negative(int), default=None, metavar="P",
                   help="minimum tile overlap in input pixels (default: the model's largest window)")
    p.add_argument("--max-memory", type=positive(float), default=None, metavar="GB",
                   help="memory budget in GiB for one image's activations and buffers")
    p.add_argument("--max-output-pixels", type=pixel_count, default=DEFAULT_MAX_OUTPUT_PIXELS, metavar="N",
                   help="refuse inputs whose output would have more pixels, checked before decoding "
                   "(default: %(default)s = 16384x16384; 0: no limit)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    add_device(p)
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders of INPUT folders")
    p.set_defaults(func=run)


def _sides(args: argparse.Namespace) -> tuple[Any, Any]:
    from ribsr.compare import BICUBIC, Side

    models = args.model
    if len(models) > 2:
        raise ValueError(f"--model is given {len(models)} times ({', '.join(models)}); compare takes one or two")
    if len(models) == 1 and models[0] == BICUBIC:
        raise ValueError("--model bicubic alone compares bicubic with itself: name a model (or a second one)")
    if args.denoise_b is not None and len(models) < 2:
        raise ValueError("--denoise-b is for a second --model")
    options = dict(tile=args.tile, overlap=args.tile_overlap, max_memory=args.max_memory, dtype=args.dtype,
                   device=args.device)
    if len(models) == 1:
        specs = [(BICUBIC, None), (models[0], args.denoise)]
    else:
        specs = [(models[0], args.denoise), (models[1], args.denoise_b)]
    # Networks first, so that bicubic takes their scale.
    loaded: dict[int, Side] = {}
    for i, (spec, denoise) in enumerate(specs):
        if spec != BICUBIC:
            loaded[i] = Side.open(spec, scale=args.scale, denoise=denoise, config=args.config, **options)
    scale = args.scale or next(iter(loaded.values())).scale
    for i, (_spec, denoise) in enumerate(specs):
        if i not in loaded:
            if denoise is not None:
                raise ValueError("--denoise does not apply to bicubic")
            loaded[i] = Side.bicubic(scale)
    before, after = loaded[0], loaded[1]
    if before.scale != after.scale:
        raise ValueError(f"the two models upscale by different factors: {before.label} and {after.label}")
    return before, after


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ribsr.compare import compare_images, write_report

    out = Path(args.output)
    if out.is_dir():
        raise ValueError(f"-o {out} is a folder; name the HTML file to write")
    if args.hr is not None and not Path(args.hr).is_dir():
        raise FileNotFoundError(f"--hr {args.hr}: no such folder")
    jobs, problems = discover(args.inputs, args.recursive, Path(args.assets_dir or out.parent).resolve())
    for message in problems:
        print(f"error: {message}", file=sys.stderr)
    if not jobs:
        print("error: no images to compare", file=sys.stderr)
        return 1
    before, after = _sides(args)
    t0 = time.perf_counter()
    with tqdm(unit="tile", disable=None, dynamic_ncols=True, leave=False) as bar:

        def progress(label: str, done: int, total: int) -> None:
            bar.set_description_str(label, refresh=False)
            if done < bar.n or bar.total != total:
                bar.reset(total=total)
            bar.update(done - bar.n)

        entries = compare_images([job.source for job in jobs], before, after, hr_dir=args.hr,
                                 max_output_pixels=args.max_output_pixels or None,
                                 limit_name="--max-output-pixels", progress=progress)
    title = args.title or f"{before.label} vs {after.label}"
    write_report(entries, out, assets_dir=args.assets_dir, title=title)
    failed = len(problems)
    for e in entries:
        if e.error:
            print(f"error: {e.error}", file=sys.stderr)
            failed += 1
        elif e.problem:
            print(f"error: {e.problem}", file=sys.stderr)
            failed += 1
        for note in e.notes:
            print(f"note: {e.source}: {note}", file=sys.stderr)
        if e.metrics:
            b, a = e.metrics["before"], e.metrics["after"]
            print(f"{e.name}: {before.label} {b['psnr']:.3f} dB / {b['ssim']:.4f}, "
                  f"{after.label} {a['psnr']:.3f} dB / {a['ssim']:.4f}")
    shown = sum(1 for e in entries if not e.error)
    print(f"{out}: {shown} image{'s' if shown != 1 else ''} ({before.label} vs {after.label}) in "
          f"{time.perf_counter() - t0:.1f} s; {failed} with problems")
    return 1 if failed else 0
