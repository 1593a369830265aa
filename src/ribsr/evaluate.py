"""Benchmark evaluation: PSNR/SSIM of an upscaler over SR test sets (Set5, Set14, ...).

Conventions (those of the SR literature; see ``docs/evaluation.md``): the HR image is
mod-cropped (top-left crop to a multiple of the scale); the LR input is
``<dataset>/LR_bicubic/X{s}/{name}x{s}.png`` when that file exists, else MATLAB-style
``imresize(HR, 1/s)`` (symmetric boundary) of the mod-cropped HR (LR files that match no HR image are an
error, not ignored); the SR output is rounded to
uint8; PSNR/SSIM are on the Y channel with ``crop_border = s`` unless told otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ribsr.devices import parameter_place
from ribsr.imageio import IMAGE_SUFFIXES, read_array
from ribsr.imresize import imresize
from ribsr.metrics import psnr, ssim, to_uint8

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "UpscaleFn",
    "bicubic_upscaler",
    "check_lr_files",
    "evaluate",
    "evaluate_dataset",
    "find_hr_images",
    "load_image",
    "load_lr",
    "mod_crop",
    "model_upscaler",
]

# The image files of a dataset folder: those ``ribsr upscale`` reads (ribsr.imageio.IMAGE_SUFFIXES).
IMAGE_EXTENSIONS = tuple(sorted(IMAGE_SUFFIXES))

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
    files = sorted(p for p in hr_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {hr_dir}")
    return files


def lr_path(folder: str | Path, name: str, scale: int) -> Path:
    """Where the LR input of the HR image ``name`` lies: ``folder/LR_bicubic/X{scale}/{name}x{scale}.png``."""
    return Path(folder) / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png"


def check_lr_files(folder: str | Path, scale: int, hr_files: Sequence[Path] | None = None) -> None:
    """Raise ValueError when ``folder/LR_bicubic/X{scale}`` holds image files that match no HR image.

    The LR input of ``HR/{name}.*`` is ``LR_bicubic/X{scale}/{name}x{scale}.png``; an LR file named otherwise
    would be ignored (and the HR image's LR made by imresize instead), so it is an error naming a few of them.
    """
    lr_dir = lr_path(folder, "", scale).parent
    if not lr_dir.is_dir():
        return
    hr_files = find_hr_images(folder) if hr_files is None else hr_files
    expected = {lr_path(folder, p.stem, scale).name for p in hr_files}
    stray = sorted(
        p.name for p in lr_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        and p.name not in expected
    )
    if stray:
        shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        example = f" (e.g. {lr_path(folder, hr_files[0].stem, scale).name} for {hr_files[0].name})" if hr_files else ""
        raise ValueError(
            f"{lr_dir}: {len(stray)} LR file{'s' if len(stray) != 1 else ''} match no HR image: {shown}; the LR "
            f"input of HR image <name> must be named <name>x{scale}.png{example}"
        )


def load_lr(folder: str | Path, name: str, hr: np.ndarray, scale: int) -> tuple[np.ndarray, str]:
    """The LR input for the mod-cropped ``hr`` and where it came from (``"file"`` or ``"imresize"``).

    Uses ``folder/LR_bicubic/X{scale}/{name}x{scale}.png`` when it exists (its size must be
    HR / scale), else ``imresize(hr, 1 / scale)`` with the symmetric boundary, which reproduces
    those files bit for bit.
    """
    path = lr_path(folder, name, scale)
    if path.is_file():
        lr = load_image(path)
        expected = (hr.shape[0] // scale, hr.shape[1] // scale, *hr.shape[2:])
        if lr.shape != expected:
            raise ValueError(f"{path}: LR shape {lr.shape} does not match HR {hr.shape} / {scale}")
        return lr, "file"
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
    upscaling; ``lr_source`` is ``"file"``, ``"imresize"`` or ``"mixed"`` (see :func:`load_lr`);
    ``failed`` lists ``{"name", "error"}`` for images that could not be evaluated (the run goes
    on without them); ``per_image`` lists ``{"name", "psnr", "ssim", "lr_source"}``. SR images
    are written to ``save_dir/<dataset>/X<scale>/<name>.png`` when ``save_dir`` is given.
    """
    folder = Path(folder)
    name = folder.resolve().name
    crop = scale if crop_border is None else crop_border
    files = find_hr_images(folder)
    check_lr_files(folder, scale, files)
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
            lr, source = load_lr(folder, path.stem, hr, scale)
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
    log.info("%s x%d: LR from %s", name, scale, _LR_SOURCES.get(lr_source, lr_source))
    return {
        "dataset": name,
        "scale": scale,
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "images": len(per_image),
        "seconds": seconds,
        "lr_source": lr_source,
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
        check_lr_files(folder, scale, find_hr_images(folder))
    return [
        evaluate_dataset(upscale, folder, scale, crop_border=crop_border, y_channel=y_channel,
                         save_dir=save_dir, progress=progress)
        for folder in folders
    ]
