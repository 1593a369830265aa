"""``ribsr degrade``: paired LR test sets made reproducibly from HR images (a real-world benchmark of one's own)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ribsr.cli.argtypes import non_negative, positive

DEFAULT_PRESET = "realesrgan"

EPILOG = """\
Writes OUT/HR/<name>.png (the HR image cropped at the top left to a multiple of the scale, so that
HR and LR are aligned, as in the benchmark sets), OUT/LR/X<s>/<name>x<s>.png (its LR: exactly a
scale-th of the cropped HR) and OUT/degradation.json (the options, and per image its source, sizes
and every parameter drawn). `ribsr evaluate --data OUT` then reads the LR from the files it names.

The degradation is --preset (default: realesrgan, Real-ESRGAN's second-order degradation with its
x4plus options; clean: MATLAB bicubic, as LR_bicubic; jpeg<Q>, e.g. jpeg50: bicubic, then JPEG at
quality Q) or --options FILE: a YAML/JSON file that is a training option file (Real-ESRGAN's or
ribsr's: the degradation keys are read from its top level, its degradation block and
datasets.train) or a plain mapping of degradation keys (unset keys keep Real-ESRGAN's defaults).

Each image's random numbers come from (--seed, a hash of its name) alone: the same command gives
the same bytes, and adding, removing or reordering images never changes another image's LR.
Grayscale HR images are degraded as RGB with equal channels and their LR is the channel mean
(grayscale), as the benchmark sets keep grayscale images grayscale. Alpha is dropped, 16-bit
images are rounded to 8 bits, EXIF orientation is applied.

An output folder that already holds a set (HR/, LR/X<s>/ or degradation.json) is refused unless
--overwrite is given; with it, images there that this run would not replace are refused too (they
would pair with nothing). Files are written atomically. Exit status: 0 when every image was written,
1 when any failed (degradation.json then lists those written), 2 for bad arguments.

examples:
  ribsr degrade photos/ -o mybench --scale 4
  ribsr degrade ../shared/datasets/Set14/HR -o Set14_jpeg50 --scale 4 --preset jpeg50
  ribsr degrade photos/ -o mybench_mine --scale 4 --options configs/local/finetune_SST_small_real_x4.yml --seed 1
  ribsr evaluate --data mybench --scale 4
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "degrade",
        help="make a paired LR test set from HR images (seeded, with the parameters drawn in a JSON)",
        description="Make a paired HR/LR test set from HR images with a synthetic degradation, reproducibly.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="HR", help="HR image files, folders (their images) or glob patterns")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT",
                   help="the test set's folder (HR/, LR/X<s>/, degradation.json)")
    p.add_argument("--scale", required=True, type=positive(int), help="downscaling factor (e.g. 4)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--preset", default=None, metavar="NAME",
                     help=f"{DEFAULT_PRESET} (default), clean, jpeg30, jpeg50, jpeg75, jpeg90 or jpeg<Q>")
    how.add_argument("--options", type=Path, default=None, metavar="FILE",
                     help="YAML/JSON degradation options: a training option file or a mapping of degradation keys")
    p.add_argument("--seed", type=non_negative(int), default=0, help="seed of every image's draws (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing set in OUT")
    p.set_defaults(func=run)
    return p


def _degradation(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The degradation the arguments ask for, and its preset name (None for --options)."""
    from ribsr.degrade import SecondOrderDegradation, load_degradation_options, preset

    if args.options is not None:
        return SecondOrderDegradation(args.scale, load_degradation_options(args.options, args.scale)), None
    name = args.preset or DEFAULT_PRESET
    return preset(name, args.scale), name


def _listing(paths: list[Path]) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _image_files(folder: Path) -> list[Path]:
    from ribsr.jobs import walk_images

    return list(walk_images(folder)) if folder.is_dir() else []


def check_existing(out: Path, scale: int, names: set[str], overwrite: bool) -> None:
    """Raise ValueError when ``out`` already holds a test set and not ``overwrite``; with ``overwrite``, when its
    HR/ or LR/X<scale>/ holds images this run would not replace (they would pair with nothing)."""
    hr_dir, lr_dir, described = out / "HR", out / "LR" / f"X{scale}", out / "degradation.json"
    if not overwrite:
        taken = [str(d) for d in (hr_dir, lr_dir) if d.is_dir() and any(d.iterdir())]
        taken += [str(described)] if described.exists() else []
        if taken:
            raise ValueError(f"{out} already holds a test set ({', '.join(taken)} not empty); use --overwrite to "
                             "replace it, or another -o")
        return
    expected = {f"{n}.png" for n in names} | {f"{n}x{scale}.png" for n in names}
    stray = [p for d in (hr_dir, lr_dir) for p in _image_files(d) if p.name not in expected]
    if stray:
        raise ValueError(f"{out}: {len(stray)} image(s) in {stray[0].parent} would stay without a pair: "
                         f"{_listing(stray)}; remove them or choose another -o")


def run(args: argparse.Namespace) -> int:
    from ribsr import __version__
    from ribsr.degrade import degrade_image, describe, image_rng
    from ribsr.files import atomic_write, check_writable, remove_stale_parts
    from ribsr.imageio import ImageReadError, from_array, read_image, to_array, write_image
    from ribsr.jobs import check_output_folder, discover

    scale, seed, out = args.scale, args.seed, args.output
    degradation, preset_name = _degradation(args)
    check_output_folder(out)
    jobs, problems = discover(args.inputs, recursive=False, exclude=out.resolve())
    for message in problems:
        print(f"error: {message}", file=sys.stderr)
    if problems:
        return 2
    if not jobs:
        raise ValueError(f"no image files in {' '.join(args.inputs)}")

    hr_dir, lr_dir = out / "HR", out / "LR" / f"X{scale}"
    template = f"{{}}x{scale}"
    by_name: dict[str, Path] = {}
    for job in jobs:
        key = job.source.stem.casefold()  # case-only differences collide on some file systems
        if key in by_name:
            raise ValueError(f"{by_name[key]} and {job.source} have the same name {job.source.stem!r}: their "
                             "pairs would be the same files (rename one)")
        by_name[key] = job.source
        for dest in (hr_dir / f"{job.source.stem}.png", lr_dir / f"{template.format(job.source.stem)}.png"):
            if dest.resolve() == job.source.resolve():
                raise ValueError(f"{job.source}: the output {dest} would replace this input (choose another -o)")
    names = {job.source.stem for job in jobs}
    check_existing(out, scale, names, args.overwrite)
    described = out / "degradation.json"
    for folder, files in ((hr_dir, [f"{n}.png" for n in names]), (lr_dir, [f"{template.format(n)}.png" for n in names]),
                          (out, [described.name])):
        check_writable(folder)
        for stale in remove_stale_parts(folder, files):
            print(f"note: removed {stale}, a temporary file left by an interrupted run", file=sys.stderr)
    # The old description must not outlive the images it describes if this run is interrupted.
    described.unlink(missing_ok=True)

    kind, parameters = describe(degradation)
    images: dict[str, dict[str, Any]] = {}
    failed = 0
    for job in jobs:
        stem = job.source.stem
        try:
            img = read_image(job.source)
            for note in img.notes + (["alpha channel dropped"] if img.alpha is not None else []):
                print(f"note: {job.source}: {note}", file=sys.stderr)
            hr = to_array(img, "uint8", 0 if img.grayscale else 3)
            hr, lr, record = degrade_image(degradation, hr, image_rng(seed, stem))
            write_image(from_array(hr), hr_dir / f"{stem}.png", "PNG", overwrite=True)
            lr_file = lr_dir / f"{template.format(stem)}.png"
            write_image(from_array(lr), lr_file, "PNG", overwrite=True)
        except (ImageReadError, ValueError, OSError) as exc:
            print(f"error: {job.source}: {exc}", file=sys.stderr)
            failed += 1
            continue
        images[stem] = {"source": str(job.source), "hr_size": [hr.shape[0], hr.shape[1]],
                        "lr_size": [lr.shape[0], lr.shape[1]], "gray": hr.ndim == 2, "params": record}
        print(f"{job.source} -> {lr_file} ({hr.shape[1]}x{hr.shape[0]} -> {lr.shape[1]}x{lr.shape[0]})")

    document = {
        "ribsr_version": __version__,
        "scale": scale,
        "seed": seed,
        "preset": preset_name,
        "options_file": None if args.options is None else str(args.options),
        "degradation": kind,
        "options": parameters,
        "lr_dir": f"LR/X{scale}",
        "lr_template": template,
        "images": {name: images[name] for name in sorted(images)},
    }
    with atomic_write(described) as tmp:
        tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    what = f"preset {preset_name}" if preset_name else f"options of {args.options}"
    print(f"{len(images)} pair{'s' if len(images) != 1 else ''} written to {out} (x{scale}, {what}, seed {seed}; "
          f"HR/, LR/X{scale}/, degradation.json); {failed} failed")
    return 1 if failed else 0
