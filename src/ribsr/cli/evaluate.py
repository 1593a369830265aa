"""``ribsr evaluate``: PSNR/SSIM on benchmark test sets, printed as the papers' tables."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ribsr.cli.argtypes import add_attention, add_device, non_negative, positive, unit_interval

BICUBIC = "bicubic"

EPILOG = """\
Conventions: HR images are mod-cropped to a multiple of the scale; the LR input is
DATA/LR_bicubic/X<s>/<name>x<s>.png when present (files there that match no HR image are an
error), else MATLAB-style bicubic downscaling of the HR image; SR outputs are rounded to 8 bits;
PSNR/SSIM on the BT.601 Y channel with <scale> border pixels cropped (see --rgb and --crop-border).
Each DATA folder holds HR/ (or the images themselves); its name names the dataset. A folder made by
ribsr degrade holds degradation.json: its LR inputs are the files that names (e.g. LR/X4/<name>x4.png),
all required, and the scale must be the one they were made at.

example: ribsr evaluate --model bicubic --data Set5 Set14 --scale 4
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="PSNR/SSIM of a model (or bicubic) on SR test sets",
        description="Evaluate a model, or bicubic upscaling, on SR test sets (Set5, Set14, ...).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", metavar="MODEL", default=None,
        help=f"checkpoint path or http(s) URL, a bundled model ('default', the default, 'real' or 'escrib'), or "
        f"'{BICUBIC}' "
        "for the bicubic baseline",
    )
    p.add_argument("--denoise", type=unit_interval, default=None, metavar="S",
                   help="blend the bundled default (0) and real (1) models' weights (implies --model real)")
    p.add_argument("--sha256", default=None, metavar="HEX",
                   help="expected SHA-256 of the model file (for a URL: checked before it enters the cache)")
    p.add_argument("--config", metavar="CONFIG", default=None,
                   help="preset name or YAML for checkpoints that carry no configuration")
    p.add_argument("--data", metavar="DIR", nargs="+", required=True, type=Path,
                   help="one or more dataset folders (e.g. .../Set5 .../Set14)")
    p.add_argument("--scale", type=positive(int), default=None,
                   help="upscaling factor: must be the model's (default: the model's; required for bicubic)")
    p.add_argument("--resize-upsampler", action="store_true",
                   help="load weights of another scale by resizing their upsampler to --scale (for fine-tuning/"
                   "experiments: the resized upsampler is untrained)")
    p.add_argument("--crop-border", type=non_negative(int), default=None, metavar="N",
                   help="pixels cropped from each side before measuring (default: the scale)")
    channel = p.add_mutually_exclusive_group()
    channel.add_argument("--y-channel", dest="y_channel", action="store_true", default=True,
                         help="measure on the BT.601 Y channel (default)")
    channel.add_argument("--rgb", dest="y_channel", action="store_false",
                         help="measure on all RGB channels")
    p.add_argument("--self-ensemble", action="store_true",
                   help="average the model over 8 flips/rotations (x8 slower)")
    p.add_argument("--tile", type=non_negative(int), default=None, metavar="N",
                   help="run the model on overlapping N x N tiles (default: whole images)")
    add_device(p, default="cpu")
    add_attention(p)
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--save-images", type=Path, default=None, metavar="OUT",
                   help="write SR images to OUT/<dataset>/X<scale>/<name>.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def lr_description(result: dict[str, Any]) -> str:
    """Where a result's LR came from, for the table: ``file``, ``imresize``, ``mixed``, or
    ``degradation.json (PRESET, seed N)`` for a set made by ribsr degrade."""
    described = result.get("degradation")
    if not described:
        return str(result["lr_source"])
    how = described.get("preset") or ("options file" if described.get("type") == "second_order" else "unnamed")
    seed = described.get("seed")
    return f"degradation.json ({how}{'' if seed is None else f', seed {seed}'})"


def format_table(results: list[dict[str, Any]]) -> str:
    """The results as a plain-text table: dataset, scale, PSNR, SSIM, images, seconds, LR source."""
    w = max([12] + [len(r["dataset"]) for r in results])  # long names (Set14_realesrgan) keep the columns
    header = f"{'dataset':<{w}} {'scale':>5} {'PSNR':>7} {'SSIM':>7} {'images':>6} {'seconds':>8}  LR"
    lines = [header, "-" * len(header)]
    for r in results:
        p = "-" if r["psnr"] is None else f"{r['psnr']:.2f}"
        s = "-" if r["ssim"] is None else f"{r['ssim']:.4f}"
        failed = f" ({len(r['failed'])} failed)" if r["failed"] else ""
        lines.append(
            f"{r['dataset']:<{w}} {'x' + str(r['scale']):>5} {p:>7} {s:>7} {r['images']:>6} "
            f"{r['seconds']:>8.2f}  {lr_description(r)}{failed}"
        )
    return "\n".join(lines)


def _upscaler(args: argparse.Namespace) -> tuple[Any, int]:
    """The upscaler the options ask for, and the scale to evaluate at."""
    from ribsr.evaluate import bicubic_upscaler, model_upscaler

    if args.model == BICUBIC:
        if args.scale is None:
            raise ValueError("--scale is required with --model bicubic")
        if args.self_ensemble or args.tile or args.denoise is not None:
            raise ValueError("--self-ensemble, --tile and --denoise apply to models, not to --model bicubic")
        return bicubic_upscaler(args.scale), args.scale
    from ribsr.checkpoint import resolve_model
    from ribsr.devices import parameter_place
    from ribsr.inference import Upscaler

    model = resolve_model(args.model, config=args.config, scale=args.scale, device=args.device, sha256=args.sha256,
                          progress=not (getattr(args, "quiet", False) or args.no_progress),
                          resize_upsampler=args.resize_upsampler, denoise=args.denoise, attention=args.attention)
    # Whole images unless --tile is given; Upscaler falls back to tiles (with a warning) only when
    # memory runs out.
    device, dtype = parameter_place(model)
    runner = Upscaler(model, tile=args.tile or 0, self_ensemble=args.self_ensemble, dtype=dtype, device=device)
    scale = runner.scale
    if args.tile:
        print(f"evaluating on {args.tile}x{args.tile} tiles (overlapping, blended)")
    return model_upscaler(model, forward=runner.upscale_tensor), scale


def run(args: argparse.Namespace) -> int:
    from ribsr.devices import resolve_device
    from ribsr.evaluate import evaluate
    from ribsr.files import check_file_writable

    args.device = str(resolve_device(args.device))  # checked before anything is read, bicubic included
    if args.json is not None:  # before any image too: an unwritable path was found only at the end
        try:
            check_file_writable(args.json)
        except OSError as exc:
            raise OSError(f"--json: {exc.strerror if exc.errno and exc.strerror else exc}") from None
    upscale, scale = _upscaler(args)
    results = evaluate(
        upscale, args.data, scale, crop_border=args.crop_border, y_channel=args.y_channel,
        save_dir=args.save_images, progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(format_table(results))
    failed = [(r["dataset"], f["name"], f["error"]) for r in results for f in r["failed"]]
    for dataset, name, error in failed:
        print(f"failed: {dataset}/{name}: {error}", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results}, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0
