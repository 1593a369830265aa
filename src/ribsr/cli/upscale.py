"""``ribsr upscale``: super-resolve image files, folders or globs into an output folder."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ribsr.cli.argtypes import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    add_attention,
    add_device,
    non_negative,
    pixel_count,
    positive,
    tile_size,
    unit_interval,
)
from ribsr.jobs import (
    Job,
    check_output_folder,
    discover,
    output_path,
    prepare_output_folders,
    split_own_outputs,
)

EPILOG = """\
Outputs are written to OUTPUT/{stem}{suffix}.png (with --format same: the input's format and
extension; GIF and other formats become PNG). Folders given with --recursive keep their sub-folder
structure under OUTPUT. Existing outputs are skipped unless --overwrite is given; every image is
written to a temporary file first and renamed into place (SIGTERM or SIGHUP removes it; those a killed
run left are removed by the next run); an output folder that cannot be written is refused before any image.

--tile auto (default) picks the largest tile that fits --max-memory (default: what is free now),
or no tiling when the whole image fits; --tile 0 disables tiling; on an out-of-memory error the
image is retried with smaller tiles. An image whose buffers would take more than --stream-above GiB
(default 1) in memory has its output assembled in a temporary file in the output folder and written
from there a block of rows at a time. --dtype auto is float32 on CPU and bfloat16 (float16 where
bfloat16 is unsupported) on CUDA.

The exit status is 0 when every image was written or skipped, 1 when any failed.
"""


def _gib_or_inf(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GiB, got {value!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: every image; inf: none), got {value}")
    return v


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "upscale",
        help="super-resolve images (files, folders or globs)",
        description="Super-resolve images with an SST or ESC-RIB model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", default="results", metavar="OUT",
                   help="output folder (default: %(default)s)")
    p.add_argument("--model", default=None,
                   help="checkpoint path or http(s) URL, downloaded once into the torch.hub cache, an "
                   ".onnx file from ribsr export-onnx, or a bundled model: 'default' (bicubic-trained, x2/x3/x4; "
                   "the default), 'real' (for downscaled, compressed photos: blur, noise and JPEG; x4) or 'escrib' (an "
                   "ESC-RIB trained like the default; x2)")
    p.add_argument("--denoise", type=unit_interval, default=None, metavar="S",
                   help="blend the bundled default (0) and real (1) models' weights: how much blur, noise and "
                   "JPEG removal (Real-ESRGAN's -dn); implies --model real")
    p.add_argument("--sha256", default=None, metavar="HEX",
                   help="expected SHA-256 of the model file (for a URL: checked before it enters the cache)")
    p.add_argument("--config", default=None,
                   help="network configuration (preset name or YAML/JSON) for checkpoints without one")
    p.add_argument("--scale", type=positive(int), default=None,
                   help="upscaling factor: must be the model's (default: the model's; without --model, the "
                   "bundled model of this scale)")
    p.add_argument("--resize-upsampler", action="store_true",
                   help="load weights of another scale by resizing their upsampler to --scale (for fine-tuning/"
                   "experiments: the resized upsampler is untrained)")
    p.add_argument("--tile", type=tile_size, default="auto", metavar="N",
                   help="tile side in input pixels, 0 for no tiling, or auto (default)")
    p.add_argument("--tile-overlap", type=non_negative(int), default=None, metavar="P",
                   help="minimum tile overlap in input pixels (default: the model's largest window)")
    p.add_argument("--batch-size", type=positive(int), default=None,
                   help="tiles per forward pass (default: as many as fit the memory budget, at most 8)")
    p.add_argument("--max-output-pixels", type=pixel_count, default=DEFAULT_MAX_OUTPUT_PIXELS, metavar="N",
                   help="refuse inputs whose output would have more pixels, checked before decoding "
                   "(default: %(default)s = 16384x16384; 0: no limit)")
    p.add_argument("--max-memory", type=positive(float), default=None, metavar="GB",
                   help="memory budget in GiB for one image's activations and buffers")
    p.add_argument("--stream-above", type=_gib_or_inf, default=None, metavar="GB",
                   help="assemble the output on disk (a temporary file in the output folder) and write it "
                   "a block of rows at a time when the image's buffers would take more than GB GiB in memory "
                   "(default: 1; 0: every image; inf: never); --self-ensemble outputs stay in memory unless given")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    add_device(p)
    add_attention(p)
    p.add_argument("--self-ensemble", action="store_true",
                   help="average the 8 flips/rotations (8x slower, slightly better)")
    p.add_argument("--suffix", default=None, help="added to output names (default: _x{scale})")
    p.add_argument("--format", choices=("png", "same"), default="png", help="output format (default: png)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------- running
def load_model(args: argparse.Namespace, device: str) -> Any:
    """The network for ``--model``/``--config``/``--scale`` (no ``--model``: the bundled model of ``--scale``).

    ``--scale`` must equal the scale of the weights (and of ``--config`` when it states one); the upsampler
    is resized only with ``--resize-upsampler``.
    """
    from ribsr.checkpoint import resolve_model
    from ribsr.hub import fetch, is_url, redact
    from ribsr.onnx import OnnxModel, is_onnx_path

    if is_onnx_path(args.model):  # run by onnxruntime; the file's metadata gives scale and alignment
        if getattr(args, "denoise", None) is not None:
            raise ValueError(f"--denoise blends the bundled default and real models; it does not apply to "
                             f"{redact(args.model)}")
        if args.config is not None:
            raise ValueError(f"--config does not apply to {redact(args.model)}: an ONNX file carries its network")
        if getattr(args, "attention", "auto") != "auto":
            raise ValueError(f"--attention does not apply to {redact(args.model)}: onnxruntime runs its graph")
        local = fetch(args.model, sha256=args.sha256, progress=not getattr(args, "quiet", False))
        try:
            return OnnxModel(local)
        except ValueError as exc:
            if not is_url(args.model):
                raise
            raise ValueError(f"{exc}\n  it is the cached copy of {redact(args.model)}: delete it to download it "
                             f"again (rm {shlex.quote(str(local))})") from None
    return resolve_model(args.model, config=args.config, scale=args.scale, device=device, sha256=args.sha256,
                         progress=not getattr(args, "quiet", False), resize_upsampler=args.resize_upsampler,
                         denoise=getattr(args, "denoise", None), attention=getattr(args, "attention", "auto"))


def too_large(exc: Any, scale: int, limit: int) -> str:
    """The message for an input refused by ``--max-output-pixels`` (``exc``: an ImageTooLargeError)."""
    from ribsr.planning import GIB, image_buffer_bytes

    (w, h), s = exc.size, scale
    return (f"{exc.path}: {w}x{h} upscaled x{s} would be {s * w}x{s * h} ({s * s * w * h / 1e6:,.0f} megapixels), "
            f"more than --max-output-pixels {limit} ({limit / 1e6:,.0f} megapixels); not decoded. Assembling its "
            f"output would take about {12 * s * s * w * h / GIB:,.1f} GiB of disk in the output folder (or "
            f"{image_buffer_bytes(h, w, s) / GIB:,.1f} GiB of memory where --stream-above is above that): raise "
            f"--max-output-pixels to upscale it anyway")


def _err(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ribsr.devices import resolve_device
    from ribsr.imageio import ImageReadError, ImageTooLargeError, read_image
    from ribsr.inference import Upscaler
    from ribsr.memory import is_out_of_memory

    out_dir = Path(args.output)
    check_output_folder(out_dir)
    jobs, problems = discover(args.inputs, args.recursive, out_dir.resolve())
    for message in problems:
        _err(f"error: {message}")
    jobs, own = split_own_outputs(jobs, out_dir, args.suffix)
    if own:
        names = ", ".join(p.name for p in own[:5]) + (f" and {len(own) - 5} more" if len(own) > 5 else "")
        _err(f"note: skipped {len(own)} input(s) in {out_dir} as outputs of an earlier run (named "
             f"<source>{args.suffix or '_x<N>'} beside their source): {names}")
    if not jobs and not own:
        _err("error: no images to upscale")
        return 1
    failed = len(problems)

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    model = load_model(args, str(device))
    upscaler = Upscaler(model, tile=args.tile, overlap=args.tile_overlap, batch_size=args.batch_size,
                        max_memory=args.max_memory, dtype=args.dtype, device=device,
                        self_ensemble=args.self_ensemble, stream_above=args.stream_above)
    if args.scale is not None and upscaler.scale != args.scale:
        raise ValueError(f"--scale {args.scale} asked for, but the model upscales x{upscaler.scale}")
    load_s = time.perf_counter() - t0
    suffix = f"_x{upscaler.scale}" if args.suffix is None else args.suffix
    max_input_pixels = args.max_output_pixels // upscaler.scale**2 if args.max_output_pixels else None

    pending: list[tuple[Job, Path, str]] = []
    used: dict[Path, Path] = {}
    skipped = len(own)
    for job in jobs:
        try:
            dest, pil_format = output_path(job, out_dir, suffix, args.format)
        except ValueError as exc:
            _err(f"error: {exc}")
            failed += 1
            continue
        if dest in used:
            _err(f"error: {job.source}: output {dest} is already the output of {used[dest]}; skipped")
            failed += 1
            continue
        used[dest] = job.source
        if dest.exists() and not args.overwrite:
            _err(f"skipping {job.source}: {dest} exists (use --overwrite)")
            skipped += 1
            continue
        pending.append((job, dest, pil_format))
    for stale in prepare_output_folders([dest for _, dest, _ in pending]):
        _err(f"note: removed {stale}, a temporary file left by an interrupted run")

    done, megapixels = 0, 0.0
    t1 = time.perf_counter()
    with tqdm(total=len(pending), unit="img", disable=None, dynamic_ncols=True) as images:
        for job, dest, pil_format in pending:
            images.set_postfix_str(job.source.name)
            try:
                img = read_image(job.source, max_pixels=max_input_pixels)
                for note in img.notes:
                    _err(f"note: {job.source}: {note}")
                with tqdm(unit="tile", leave=False, disable=None, dynamic_ncols=True) as tiles:

                    def progress(n: int, total: int, bar: Any = tiles) -> None:
                        bar.total = total
                        bar.update(n - bar.n)

                    notes = upscaler.upscale_file(img, dest, pil_format, overwrite=args.overwrite,
                                                  progress=progress)
                for note in notes:
                    _err(f"note: {dest}: {note}")
            except ImageTooLargeError as exc:
                _err(f"error: {too_large(exc, upscaler.scale, args.max_output_pixels)}")
                failed += 1
            except ImageReadError as exc:
                _err(f"error: {exc}")
                failed += 1
            except FileExistsError as exc:
                _err(f"skipping {job.source}: {exc}")
                skipped += 1
            except (OSError, ValueError, MemoryError, RuntimeError) as exc:
                if isinstance(exc, RuntimeError) and not is_out_of_memory(exc):
                    raise
                _err(f"error: {job.source}: {exc}")
                failed += 1
            else:
                done += 1
                width, height = img.size
                megapixels += width * height / 1e6
            images.update(1)
    seconds = time.perf_counter() - t1
    rate = megapixels / seconds if seconds > 0 else 0.0
    print(
        f"{done} image{'s' if done != 1 else ''} upscaled x{upscaler.scale} into {out_dir} "
        f"in {seconds:.1f} s ({megapixels:.2f} input megapixels, {rate:.3g} MP/s; "
        f"model loaded in {load_s:.1f} s); {skipped} skipped, {failed} failed"
    )
    return 1 if failed else 0
