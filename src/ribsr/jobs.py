"""Finding the images to upscale and where their outputs go: the jobs of ``ribsr upscale`` (and of any batch).

:func:`discover` turns files, folders and glob patterns into :class:`Job` s (an image and its output name below
an output folder); :func:`output_path` names a job's output file, checked to stay inside the folder;
:func:`split_own_outputs` leaves out inputs that are outputs of an earlier run; :func:`check_output_folder` and
:func:`prepare_output_folders` check the folders before any image is read. For example::

    jobs, problems = discover(["photos/"], recursive=True, exclude=Path("out").resolve())
    for job in jobs:
        dest, fmt = output_path(job, Path("out"), "_x4", "png")
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ribsr.files import check_writable, not_a_file, remove_stale_parts
from ribsr.imageio import FORMATS, IMAGE_SUFFIXES

__all__ = [
    "SUFFIX_FORMATS", "Job", "check_output_folder", "discover", "output_path", "prepare_output_folders",
    "split_own_outputs", "walk_images",
]

# Output format for ``--format same``, from the input's file name suffix (others: PNG).
SUFFIX_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG",
    ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
}


@dataclass(frozen=True)
class Job:
    """One image to upscale."""

    source: Path
    relative: Path  # where the output goes below the output folder (before suffix/extension)


def walk_images(root: Path, recursive: bool = False, exclude: Path | None = None) -> Iterator[Path]:
    """Image files (:data:`ribsr.imageio.IMAGE_SUFFIXES`) in ``root`` (sorted; sub-folders when ``recursive``),
    hidden files and the folder ``exclude`` (an output folder, resolved) left out; symbolic links to folders are
    not followed. Only regular files (or symbolic links to them) are images: a FIFO or a device named ``*.png``
    would block the reader forever."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if recursive and not d.startswith(".") and (here / d).resolve() != exclude
        )
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES and (here / name).is_file():
                yield here / name


def discover(inputs: list[str], recursive: bool, exclude: Path) -> tuple[list[Job], list[str]]:
    """Jobs for the given files, folders and globs, and a message for each input that matched nothing."""
    jobs: list[Job] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add(source: Path, relative: Path) -> None:
        key = source.resolve()
        if key not in seen:
            seen.add(key)
            jobs.append(Job(source, relative))

    def add_path(path: Path) -> bool:
        if path.is_dir():
            for f in walk_images(path, recursive, exclude):
                add(f, f.relative_to(path))
            return True
        if path.is_file():
            add(path, Path(path.name))
            return True
        return False

    for spec in inputs:
        if add_path(Path(spec)):
            continue
        what = not_a_file(spec)
        if what not in (None, "not there"):  # a FIFO, a device, a socket, a broken link: say so
            problems.append(f"{spec}: is {what}, not an image file")
            continue
        if glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=recursive))
            if any([add_path(Path(m)) for m in matches]):
                continue
        problems.append(f"{spec}: no such file or folder, and no file matches it")
    return jobs, problems


def output_path(job: Job, out_dir: Path, suffix: str, fmt: str) -> tuple[Path, str]:
    """(output file, Pillow format) of a job; raises ValueError if it would lie outside ``out_dir``."""
    if fmt == "same":
        pil_format = SUFFIX_FORMATS.get(job.source.suffix.lower(), "PNG")
        ext = job.source.suffix.lower() if pil_format != "PNG" else ".png"
    else:
        pil_format, ext = "PNG", FORMATS["PNG"].suffix
    rel = job.relative
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{job.source}: output name {rel} would leave the output folder")
    dest = out_dir / rel.parent / f"{rel.stem}{suffix}{ext}"
    root = out_dir.resolve()
    if not dest.parent.resolve().is_relative_to(root):
        raise ValueError(f"{job.source}: output {dest} would lie outside {out_dir}")
    if dest.resolve() == job.source.resolve():
        raise ValueError(f"{job.source}: the output would replace the input (choose another -o or --suffix)")
    return dest, pil_format


def check_output_folder(out_dir: Path) -> None:
    """Raise ValueError when ``out_dir`` cannot be a folder: it, or a folder above it, is an existing file."""
    for path in (out_dir, *out_dir.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out_dir else f"lies under the file {path}"
                raise ValueError(f"output {out_dir} {where}, not a folder (-o/--output names the folder to write into)")
            return


def prepare_output_folders(dests: list[Path]) -> list[Path]:
    """Before any image is upscaled: raise OSError naming the first folder of ``dests`` (output files) that no
    file can be created in (:func:`ribsr.files.check_writable`), and remove the temporary files of these
    outputs that a killed run left there (:func:`ribsr.files.remove_stale_parts`); returns those removed."""
    folders: dict[Path, list[str]] = {}
    for dest in dests:
        folders.setdefault(dest.parent, []).append(dest.name)
    removed: list[Path] = []
    for folder, names in folders.items():
        check_writable(folder)
        removed += remove_stale_parts(folder, names)
    return removed


_DEFAULT_SUFFIX = re.compile(r"_x\d+$")  # what --suffix defaults to: _x{scale}


def split_own_outputs(jobs: list[Job], out_dir: Path, suffix: str | None) -> tuple[list[Job], list[Path]]:
    """(the jobs to run, the inputs left out as outputs of an earlier run).

    An input is such an output when it lies in ``out_dir`` (or below it), its name is ``{stem}{suffix}.{ext}``
    (``suffix`` as given, else ``_x{N}``, the default) and an image file ``{stem}.*`` lies beside it: the
    source it was made from. A file whose name only looks like an output (no such source) is upscaled.
    """
    root = out_dir.resolve() if out_dir.exists() else None
    names: dict[Path, set[str]] = {}  # folder -> the image names in it (lower case)
    keep: list[Job] = []
    own: list[Path] = []
    for job in jobs:
        folder = job.source.parent.resolve()
        stem = job.source.stem
        if suffix:
            base = stem[: -len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else None
        else:
            match = _DEFAULT_SUFFIX.search(stem)
            base = stem[: match.start()] if match and match.start() > 0 else None
        if root is None or base is None or not folder.is_relative_to(root):
            keep.append(job)
            continue
        if folder not in names:
            names[folder] = {p.name.lower() for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        sources = {f"{base}{ext}".lower() for ext in IMAGE_SUFFIXES} - {job.source.name.lower()}
        if sources & names[folder]:
            own.append(job.source)
        else:
            keep.append(job)
    return keep, own
