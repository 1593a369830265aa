"""Benchmark evaluation: PSNR/SSIM of an upscaler over SR test sets (Set5, Set14, ...).

Conventions (those of the SR literature; see ``docs/evaluation.md``): the HR image is
mod-cropped (top-left crop to a multiple of the scale); the LR input is
``<dataset>/LR_bicubic/X{s}/{name}x{s}.png`` when that file exists, else MATLAB-style
``imresize(HR, 1/s)`` (symmetric boundary) of the mod-cropped HR (LR files that match no HR image are an
error, not ignored); the SR output is rounded to
uint8; PSNR/SSIM are on the Y channel with ``crop_border = s`` unless told otherwise.

A folder made by ``ribsr degrade`` holds ``degradation.json``: its LR inputs are then the files it names
(``<lr_dir>/<lr_template>.png``, e.g. ``LR/X4/babyx4.png``), every one of them required (a missing one is an
error: they are never made by imresize), and the scale evaluated must be the file's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from ribsr.devices import parameter_place
from ribsr.imageio import IMAGE_SUFFIXES, read_array
from ribsr.imresize import imresize
from ribsr.jobs import walk_images
from ribsr.metrics import psnr, ssim, to_uint8

log = logging.getLogger(__name__)

__all__ = [
    "DEGRADATION_JSON",
    "LRLayout",
    "UpscaleFn",
    "bicubic_upscaler",
    "check_lr_files",
    "evaluate",
    "evaluate_dataset",
    "find_hr_images",
    "load_image",
    "load_lr",
    "lr_layout",
    "lr_path",
    "mod_crop",
    "model_upscaler",
]


# Takes an LR image, uint8 (H, W) or (H, W, C), and returns its SR image in any form that
# ribsr.metrics.to_uint8 accepts (uint8 array, float [0, 1] array or tensor). Not ribsr.Upscaler, whose
# bound ``upscale_tensor`` can be the ``forward`` of :func:`model_upscaler`.
UpscaleFn = Callable[[np.ndarray], Any]


# ---------------------------------------------------------------------------------- images, files
def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """The top-left crop of ``img`` (H, W[, C]) whose height and width are multiples of ``scale``."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale <= 0:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    h, w = img.shape[:2]
    if h < scale or w < scale:
        raise ValueError(f"a {h}x{w} image is smaller than the scale {scale}")
    return img[: h - h % scale, : w - w % scale]


def load_image(path: str | Path) -> np.ndarray:
    """An image file as uint8, (H, W) for grayscale or (H, W, 3) for colour (:func:`ribsr.imageio.read_array`).

    Palette, CMYK and 16-bit images become 8-bit RGB or grayscale; alpha is dropped.
    """
    return read_array(path)


def find_hr_images(folder: str | Path) -> list[Path]:
    """The ground-truth images of a dataset folder: ``folder/HR/*`` if it exists, else ``folder/*``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {folder}")
    hr_dir = folder / "HR" if (folder / "HR").is_dir() else folder
    files = list(walk_images(hr_dir))
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {hr_dir}")
    return files


# The description of a test set made by ``ribsr degrade``, in the dataset folder.
DEGRADATION_JSON = "degradation.json"


@dataclass(frozen=True)
class LRLayout:
    """Where the LR inputs of a dataset folder lie: ``folder/{template.format(name)}.png`` for HR image ``name``.

    ``degradation`` is None for the benchmark layout (``LR_bicubic/X{s}``, ``{}x{s}``; a missing file is made by
    imresize), else what ``degradation.json`` says of how the LR was made (``json``: its path, ``preset``,
    ``seed``, ``type``); every LR file is then required.
    """

    folder: Path
    template: str
    degradation: dict[str, Any] | None = None

    def path(self, name: str) -> Path:
        """The LR file of the HR image ``name``."""
        return self.folder / f"{self.template.format(name)}.png"

    @property
    def required(self) -> bool:
        """Whether every HR image must have its LR file (no imresize fallback)."""
        return self.degradation is not None


def _read_degradation_json(path: Path, folder: Path, scale: int) -> LRLayout:
    """The layout that a ``degradation.json`` describes; ValueError naming the file when it is unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    problems = []
    made_at, lr_dir, template = data.get("scale"), data.get("lr_dir"), data.get("lr_template")
    if isinstance(made_at, bool) or not isinstance(made_at, int) or made_at <= 0:
        problems.append(f"scale must be a positive integer, got {made_at!r}")
    rel = PurePosixPath(lr_dir) if isinstance(lr_dir, str) and lr_dir else None
    if rel is None or rel.is_absolute() or ".." in rel.parts or "\\" in lr_dir:
        problems.append(f"lr_dir must be a folder path inside {folder} (e.g. LR/X4), got {lr_dir!r}")
    if (not isinstance(template, str) or template.count("{}") != 1
            or template.replace("{}", "").count("{") + template.replace("{}", "").count("}")
            or "/" in template or "\\" in template):
        problems.append(f"lr_template must be a file name with one {{}} for the HR name (e.g. {{}}x4), got "
                        f"{template!r}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    if made_at != scale:
        raise ValueError(f"{path}: its LR images were made at x{made_at}, but x{scale} is evaluated (the scale "
                         f"asked for, or the model's)")
    info = {"json": str(path), "preset": data.get("preset"), "seed": data.get("seed"),
            "type": data.get("degradation")}
    return LRLayout(folder / Path(*rel.parts), template, info)


def lr_layout(folder: str | Path, scale: int) -> LRLayout:
    """Where the LR inputs of the dataset ``folder`` at ``scale`` lie: as ``folder/degradation.json`` says when
    it exists (``ribsr degrade``; ValueError when it is unusable or made at another scale), else
    ``folder/LR_bicubic/X{scale}/{name}x{scale}.png``."""
    folder = Path(folder)
    described = folder / DEGRADATION_JSON
    if described.is_file():
        return _read_degradation_json(described, folder, scale)
    return LRLayout(folder / "LR_bicubic" / f"X{scale}", f"{{}}x{scale}")


def lr_path(folder: str | Path, name: str, scale: int) -> Path:
    """Where the LR input of the HR image ``name`` lies (:func:`lr_layout`): e.g.
    ``folder/LR_bicubic/X{scale}/{name}x{scale}.png``."""
    return lr_layout(folder, scale).path(name)


def _listing(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_lr_files(folder: str | Path, scale: int, hr_files: Sequence[Path] | None = None,
                   layout: LRLayout | None = None) -> None:
    """Raise ValueError when the LR folder of ``folder`` (:func:`lr_layout`) holds image files that match no HR
    image, or, for a folder with ``degradation.json``, when an HR image has no LR file.

    The LR input of ``HR/{name}.*`` is ``LR_bicubic/X{scale}/{name}x{scale}.png``; an LR file named otherwise
    would be ignored (and the HR image's LR made by imresize instead), so it is an error naming a few of them.
    """
    layout = lr_layout(folder, scale) if layout is None else layout
    lr_dir = layout.folder
    hr_files = find_hr_images(folder) if hr_files is None else hr_files
    if layout.required:
        missing = sorted(layout.path(p.stem).name for p in hr_files if not layout.path(p.stem).is_file())
        if missing:
            raise ValueError(
                f"{lr_dir}: {len(missing)} LR file{'s' if len(missing) != 1 else ''} that "
                f"{layout.degradation['json']} names {'are' if len(missing) != 1 else 'is'} missing: "
                f"{_listing(missing)} (run ribsr degrade again to make them)"
            )
    if not lr_dir.is_dir():
        return
    expected = {layout.path(p.stem).name for p in hr_files}
    stray = sorted(p.name for p in walk_images(lr_dir) if p.name not in expected)
    if stray:
        example = f" (e.g. {layout.path(hr_files[0].stem).name} for {hr_files[0].name})" if hr_files else ""
        raise ValueError(
            f"{lr_dir}: {len(stray)} LR file{'s' if len(stray) != 1 else ''} match no HR image: {_listing(stray)}; "
            f"the LR input of HR image <name> must be named {layout.template.format('<name>')}.png{example}"
        )


def load_lr(folder: str | Path, name: str, hr: np.ndarray, scale: int,
            layout: LRLayout | None = None) -> tuple[np.ndarray, str]:
    """The LR input for the mod-cropped ``hr`` and where it came from (``"file"``, ``"imresize"`` or
    ``"degradation.json"``).

    Uses the LR file of ``name`` (:func:`lr_layout`: ``folder/LR_bicubic/X{scale}/{name}x{scale}.png``) when it
    exists (its size must be HR / scale), else ``imresize(hr, 1 / scale)`` with the symmetric boundary, which
    reproduces those files bit for bit. In a folder with ``degradation.json`` the file is required (a missing one
    is a FileNotFoundError).
    """
    layout = lr_layout(folder, scale) if layout is None else layout
    path = layout.path(name)
    if path.is_file():
        lr = load_image(path)
        expected = (hr.shape[0] // scale, hr.shape[1] // scale, *hr.shape[2:])
        if lr.shape != expected:
            raise ValueError(f"{path}: LR shape {lr.shape} does not match HR {hr.shape} / {scale}")
        return lr, "degradation.json" if layout.required else "file"
    if layout.required:
        raise FileNotFoundError(f"{path}: LR file missing (named by {layout.degradation['json']})")
    return imresize(hr, 1 / scale), "imresize"


# ---------------------------------------------------------------------------------- upscalers
def bicubic_upscaler(scale: int) -> UpscaleFn:
    """MATLAB bicubic upscaling by ``scale`` (uint8 in, uint8 out), the literature's baseline."""
    return lambda lr: imresize(lr, float(scale))


def model_upscaler(
    model: torch.nn.Module,
    *,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> UpscaleFn:
    """An upscaler running ``model`` (takes and returns (B, 3, h, w) floats in [0, 1]).

    ``forward`` replaces ``model(x)``: e.g. ``ribsr.Upscaler(model, tile=..., self_ensemble=True)
    .upscale_tensor`` for tiled inference or the x8 self-ensemble. Grayscale LR images are fed as 3
    equal channels and the output's channel mean is returned. Inputs go to the device and dtype of
    the model's first parameter (CPU float32 for a model without parameters).
    """
    device, dtype = parameter_place(model)
    run = forward or model

    def upscale(lr: np.ndarray) -> np.ndarray:
        gray = lr.ndim == 2
        rgb = np.repeat(lr[:, :, None], 3, axis=2) if gray else lr  # (h, w, 3)
        if not rgb.flags.writeable:  # torch warns on a read-only array (a decoded image's, often)
            rgb = rgb.copy()
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)  # (1, 3, h, w)
        x = x.to(device=device, dtype=dtype) / 255
        with torch.inference_mode():
            y = run(x)  # (1, 3, s*h, s*w)
            y = y[0].float().clamp(0, 1).cpu()  # (3, s*h, s*w)
            if gray:
                y = y.mean(dim=0)  # (s*h, s*w)
            sr = to_uint8(y)  # (s*h, s*w, C)
        return sr[..., 0] if gray else sr

    return upscale


# ---------------------------------------------------------------------------------- evaluation
_LR_SOURCES = {
    "file": "the LR_bicubic files",
    "imresize": "imresize of the mod-cropped HR",
    "mixed": "LR_bicubic files where present, else imresize of the mod-cropped HR",
    "degradation.json": "the files degradation.json names",
}


def evaluate_dataset(
    upscale: UpscaleFn,
    folder: str | Path,
    scale: int,
    *,
    crop_border: int | None = None,
    y_channel: bool = True,
    save_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """PSNR/SSIM of ``upscale`` on one dataset folder, averaged over its images.

    Returns ``{"dataset", "scale", "psnr", "ssim", "images", "seconds", "lr_source", "failed",
    "per_image"}``: ``dataset`` is the folder name; ``images`` counts the images evaluated;
    ``psnr``/``ssim`` are their means (None if none succeeded); ``seconds`` is the time spent
    upscaling; ``lr_source`` is ``"file"``, ``"imresize"``, ``"mixed"`` or ``"degradation.json"`` (see
    :func:`load_lr`), and ``degradation`` what ``degradation.json`` says (:class:`LRLayout`) or None;
    ``failed`` lists ``{"name", "error"}`` for images that could not be evaluated (the run goes
    on without them); ``per_image`` lists ``{"name", "psnr", "ssim", "lr_source"}``. SR images
    are written to ``save_dir/<dataset>/X<scale>/<name>.png`` when ``save_dir`` is given.
    """
    folder = Path(folder)
    name = folder.resolve().name
    crop = scale if crop_border is None else crop_border
    files = find_hr_images(folder)
    layout = lr_layout(folder, scale)
    check_lr_files(folder, scale, files, layout)
    out_dir = None
    if save_dir is not None:
        out_dir = Path(save_dir) / name / f"X{scale}"
        out_dir.mkdir(parents=True, exist_ok=True)

    per_image: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    seconds = 0.0
    if progress:
        from tqdm import tqdm

        files_iter = tqdm(files, desc=f"{name} x{scale}", unit="img", leave=False)
    else:
        files_iter = files
    for path in files_iter:
        try:
            hr = mod_crop(load_image(path), scale)
            lr, source = load_lr(folder, path.stem, hr, scale, layout)
            t0 = time.perf_counter()
            sr = upscale(lr)
            seconds += time.perf_counter() - t0
            sr = to_uint8(sr)  # (H, W, C)
            if sr.shape[:2] != hr.shape[:2]:
                raise ValueError(
                    f"SR output is {sr.shape[1]}x{sr.shape[0]}, HR is {hr.shape[1]}x{hr.shape[0]} (W x H)"
                )
            if hr.ndim == 2 and sr.shape[2] == 1:
                sr = sr[..., 0]
            per_image.append({
                "name": path.stem,
                "psnr": psnr(sr, hr, crop_border=crop, y_channel=y_channel),
                "ssim": ssim(sr, hr, crop_border=crop, y_channel=y_channel),
                "lr_source": source,
            })
            if out_dir is not None:
                Image.fromarray(sr).save(out_dir / f"{path.stem}.png")
        except (OSError, ValueError, RuntimeError) as exc:
            log.error("%s/%s: %s", name, path.name, exc)
            failed.append({"name": path.name, "error": str(exc)})

    def mean(key: str) -> float | None:
        return float(np.mean([r[key] for r in per_image])) if per_image else None

    sources = {r["lr_source"] for r in per_image}
    lr_source = "mixed" if len(sources) > 1 else sources.pop() if sources else "none"
    described = "" if layout.degradation is None else f" ({layout.degradation['json']})"
    log.info("%s x%d: LR from %s%s", name, scale, _LR_SOURCES.get(lr_source, lr_source), described)
    return {
        "dataset": name,
        "scale": scale,
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "images": len(per_image),
        "seconds": seconds,
        "lr_source": lr_source,
        "degradation": layout.degradation,
        "failed": failed,
        "per_image": per_image,
    }


def evaluate(
    upscale: UpscaleFn,
    folders: Sequence[str | Path],
    scale: int,
    *,
    crop_border: int | None = None,
    y_channel: bool = True,
    save_dir: str | Path | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """:func:`evaluate_dataset` for each folder (all are checked for images before any runs)."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale <= 0:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if crop_border is not None and (isinstance(crop_border, bool) or not isinstance(crop_border, int)
                                    or crop_border < 0):
        raise ValueError(f"crop_border must be a non-negative integer, got {crop_border!r}")
    if not folders:
        raise ValueError("no dataset folders given")
    for folder in folders:
        check_lr_files(folder, scale, find_hr_images(folder), lr_layout(folder, scale))
    return [
        evaluate_dataset(upscale, folder, scale, crop_border=crop_border, y_channel=y_channel,
                         save_dir=save_dir, progress=progress)
        for folder in folders
    ]
