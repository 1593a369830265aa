"""Looking at outputs side by side: ``ribsr compare`` reports and the sides ``ribsr serve`` compares.

A :class:`Side` upscales a decoded image, by MATLAB bicubic resizing (``"bicubic"``) or by a network (a bundled
model, a checkpoint, an ``.onnx`` file). :func:`compare_images` runs two sides over LR images and, where an HR
image is found for an input (by file stem, ``namexS`` LR names accepted), measures PSNR and SSIM as
``ribsr evaluate`` does: outputs rounded to 8 bits, the HR image mod-cropped to the scale, Y channel, a border of
``scale`` pixels left out. :func:`write_report` writes one HTML file with a before/after viewer per image (the
viewer of ``ribsr serve``'s page, inlined), the images embedded as base64 PNG or written beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from ribsr.evaluate import mod_crop
from ribsr.files import atomic_write
from ribsr.imageio import DecodedImage, ImageReadError, ImageTooLargeError, read_array, read_image, to_array
from ribsr.inference import Upscaler
from ribsr.jobs import walk_images
from ribsr.metrics import psnr, ssim
from ribsr.tiling import Progress
from ribsr.web import asset_text

log = logging.getLogger(__name__)

__all__ = [
    "BICUBIC", "CompareEntry", "Side", "bicubic_decoded", "compare_images", "find_hr", "load_network",
    "render_report", "side_label", "too_large_message", "write_report",
]

BICUBIC = "bicubic"  # the name of the bicubic side, where a model is named


def too_large_message(name: str | os.PathLike[str], size: tuple[int, int], scale: int, limit: int,
                      limit_name: str) -> str:
    """The refusal of an input whose output would exceed ``limit`` pixels (``limit_name``: the option that sets it)."""
    (w, h), s = size, scale
    return (f"{name}: {w}x{h} upscaled x{s} would be {s * w}x{s * h} ({s * s * w * h / 1e6:,.1f} megapixels), "
            f"more than {limit_name} {limit} ({limit / 1e6:,.3g} megapixels); not decoded")


# ---------------------------------------------------------------------------------- sides
def bicubic_decoded(img: DecodedImage, scale: int) -> DecodedImage:
    """``img`` upscaled by MATLAB bicubic ``imresize``: 8-bit images through uint8 (as ``ribsr evaluate
    --model bicubic``, rounding after each pass), 16-bit ones in float; alpha too."""
    from ribsr.imresize import imresize

    if img.bit_depth == 8:
        planes = to_array(img, np.uint8, 3)  # gray is replicated, so the mean of the output is its gray
        rgb = np.asarray(imresize(planes, float(scale)), dtype=np.float32) / 255
    else:
        rgb = np.clip(np.asarray(imresize(img.rgb, float(scale)), dtype=np.float32), 0, 1)
    alpha = None
    if img.alpha is not None:
        alpha = np.clip(np.asarray(imresize(img.alpha, float(scale)), dtype=np.float32), 0, 1)
    return img.with_pixels(np.ascontiguousarray(rgb), alpha)


def side_label(spec: str | os.PathLike[str] | None, scale: int, denoise: float | None = None) -> str:
    """A short name of a side for labels: ``bicubic x2``, ``default x2``, ``real x4``, ``real x4 (denoise 0.5)``,
    or a checkpoint's file name with its scale."""
    from ribsr.assets import BUNDLED_MODELS, DEFAULT_MODEL, REAL_MODEL

    if spec == BICUBIC:
        return f"{BICUBIC} x{scale}"
    if denoise is not None:
        return f"{REAL_MODEL} x{scale} (denoise {denoise:g})"
    if spec is None or spec in BUNDLED_MODELS:
        return f"{spec or DEFAULT_MODEL} x{scale}"
    return f"{Path(spec).name} (x{scale})"


def load_network(spec: str | os.PathLike[str] | None, *, scale: int | None = None, denoise: float | None = None,
                 config: str | None = None, device: str = "cpu") -> nn.Module:
    """The network a ``--model`` value names (not ``bicubic``): None or ``default`` (the bundled model of
    ``scale``), ``real``, a checkpoint path or URL, or an ``.onnx`` file; ``denoise`` blends the bundled pair
    (:func:`ribsr.checkpoint.resolve_model`)."""
    from ribsr.checkpoint import resolve_model
    from ribsr.onnx import OnnxModel, is_onnx_path

    if spec == BICUBIC:
        raise ValueError("bicubic is not a network")
    if is_onnx_path(spec):
        if denoise is not None or config is not None:
            raise ValueError(f"denoise and config do not apply to {spec}: an ONNX file carries its network")
        return OnnxModel(spec)
    return resolve_model(None if spec is None else str(spec), config=config, scale=scale, device=device,
                         denoise=denoise, progress=False)


@dataclass
class Side:
    """One side of a comparison: bicubic resizing (``upscaler`` None) or a network run by ``upscaler``."""

    label: str
    scale: int
    upscaler: Upscaler | None = None

    @classmethod
    def bicubic(cls, scale: int) -> Side:
        """MATLAB bicubic upscaling by ``scale``."""
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        return cls(side_label(BICUBIC, scale), scale)

    @classmethod
    def from_model(cls, model: nn.Module, label: str | None = None, **upscaler_options: Any) -> Side:
        """A network, run by a :class:`ribsr.Upscaler` made with ``upscaler_options`` (tile, overlap, device, ...)."""
        upscaler = Upscaler(model, **upscaler_options)
        return cls(label or f"{type(model).__name__} x{upscaler.scale}", upscaler.scale, upscaler)

    @classmethod
    def open(cls, spec: str | os.PathLike[str] | None, *, scale: int | None = None, denoise: float | None = None,
             config: str | None = None, **upscaler_options: Any) -> Side:
        """The side a ``--model`` value names: ``bicubic`` (needs ``scale``) or a network (:func:`load_network`);
        ``scale``, when given, must be the network's."""
        if spec == BICUBIC:
            if denoise is not None or config is not None:
                raise ValueError("denoise and config do not apply to bicubic")
            if scale is None:
                raise ValueError("bicubic needs a scale")
            return cls.bicubic(scale)
        from ribsr.devices import resolve_device

        device = resolve_device(upscaler_options.pop("device", "auto"))
        model = load_network(spec, scale=scale, denoise=denoise, config=config, device=str(device))
        side = cls.from_model(model, device=device, **upscaler_options)
        if scale is not None and side.scale != scale:
            raise ValueError(f"{spec}: upscales x{side.scale}, but x{scale} was asked for")
        side.label = side_label(spec, side.scale, denoise)
        return side

    def upscale(self, img: DecodedImage, progress: Progress | None = None) -> DecodedImage:
        """``img`` upscaled by this side."""
        if self.upscaler is None:
            out = bicubic_decoded(img, self.scale)
            if progress:
                progress(1, 1)
            return out
        return self.upscaler.upscale_decoded(img, progress)

    def upscale_file(self, img: DecodedImage, path: str | os.PathLike[str], progress: Progress | None = None) -> None:
        """``img`` upscaled by this side into the PNG file ``path`` (replaced if there)."""
        from ribsr.imageio import write_image

        if self.upscaler is None:
            write_image(self.upscale(img, progress), path, "PNG", overwrite=True)
        else:
            self.upscaler.upscale_file(img, path, "PNG", overwrite=True, progress=progress)


# ---------------------------------------------------------------------------------- HR images
def _hr_index(hr_dir: Path) -> dict[str, list[Path]]:
    folder = hr_dir / "HR" if (hr_dir / "HR").is_dir() else hr_dir
    index: dict[str, list[Path]] = {}
    for p in walk_images(folder):
        index.setdefault(p.stem, []).append(p)
    return index


def _hr_names(stem: str, scale: int) -> list[str]:
    names = [stem]
    tag = f"x{scale}"
    if stem.lower().endswith(tag) and len(stem) > len(tag):
        names.append(stem[: -len(tag)])
    return names


def find_hr(hr_dir: str | os.PathLike[str], name: str, scale: int,
            index: dict[str, list[Path]] | None = None) -> Path:
    """The HR image of the LR file ``name`` in ``hr_dir`` (or ``hr_dir/HR``): same stem, or the stem without a
    trailing ``x{scale}`` (``babyx4.png`` -> ``baby.png``). FileNotFoundError naming what was looked for;
    ValueError when two files share the stem."""
    hr_dir = Path(hr_dir)
    if not hr_dir.is_dir():
        raise FileNotFoundError(f"HR folder not found: {hr_dir}")
    index = _hr_index(hr_dir) if index is None else index
    names = _hr_names(Path(name).stem, scale)
    for stem in names:
        found = index.get(stem, [])
        if len(found) > 1:
            raise ValueError(f"{name}: more than one HR image named {stem}.* in {hr_dir}: "
                             f"{', '.join(p.name for p in found)}")
        if found:
            return found[0]
    looked = " or ".join(f"{stem}.*" for stem in names)
    raise FileNotFoundError(f"{name}: no HR image in {hr_dir} (looked for {looked})")


# ---------------------------------------------------------------------------------- comparing
@dataclass
class CompareEntry:
    """The outcome for one input: both sides' 8-bit outputs and, with an HR image, their PSNR/SSIM.

    ``metrics`` maps ``"before"`` and ``"after"`` to ``{"psnr", "ssim"}``; ``problem`` says why there are no
    metrics although an HR folder was given; ``error`` why there are no outputs at all.
    """

    source: Path
    before_label: str
    after_label: str
    scale: int
    size: tuple[int, int] | None = None  # (width, height) of the input
    before: np.ndarray | None = None  # uint8 (H, W) or (H, W, 3)
    after: np.ndarray | None = None
    hr: Path | None = None
    metrics: dict[str, dict[str, float]] | None = None
    problem: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The input's file name."""
        return self.source.name


def _uint8(img: DecodedImage) -> np.ndarray:
    """What metrics are computed on: 8 bits, (H, W) for grayscale, else (H, W, 3); alpha dropped."""
    return to_array(img, np.uint8, 0 if img.grayscale else 3)


def _measure(sr: np.ndarray, hr_path: Path, scale: int) -> dict[str, float]:
    hr = read_array(hr_path)
    hr = mod_crop(hr, scale)
    if hr.ndim != sr.ndim:
        kinds = {2: "grayscale", 3: "colour"}
        raise ValueError(f"{hr_path} is {kinds[hr.ndim]} but the output is {kinds[sr.ndim]}")
    if hr.shape != sr.shape:
        raise ValueError(f"{hr_path}: HR is {hr.shape[1]}x{hr.shape[0]} after the mod-crop, the x{scale} output "
                         f"is {sr.shape[1]}x{sr.shape[0]} (W x H): the input is not this HR image / {scale}")
    return {"psnr": psnr(sr, hr, crop_border=scale, y_channel=True),
            "ssim": ssim(sr, hr, crop_border=scale, y_channel=True)}


def compare_images(
    inputs: Sequence[str | os.PathLike[str]],
    before: Side,
    after: Side,
    *,
    hr_dir: str | os.PathLike[str] | None = None,
    max_output_pixels: int | None = None,
    limit_name: str = "max_output_pixels",
    progress: Callable[[str, int, int], None] | None = None,
) -> list[CompareEntry]:
    """Both sides' outputs of each input image, with PSNR/SSIM against its HR image in ``hr_dir`` (see the module
    docstring) where one is found.

    An input whose output would have more than ``max_output_pixels`` pixels is refused before it is decoded
    (``limit_name`` names the limit in the message). Unreadable inputs and HR problems are recorded in the entry
    (``error``, ``problem``) and the others go on. ``progress(label, done, total)`` follows each side's tiles.
    """
    if before.scale != after.scale:
        raise ValueError(f"the two sides upscale by different factors: {before.label} and {after.label}")
    scale = after.scale
    hr_index = None
    if hr_dir is not None:
        if not Path(hr_dir).is_dir():
            raise FileNotFoundError(f"HR folder not found: {hr_dir}")
        hr_index = _hr_index(Path(hr_dir))
    max_input = max_output_pixels // scale**2 if max_output_pixels else None
    entries = []
    for source in map(Path, inputs):
        entry = CompareEntry(source, before.label, after.label, scale)
        entries.append(entry)
        try:
            img = read_image(source, max_pixels=max_input)
        except ImageTooLargeError as exc:
            limit = max_output_pixels or 0
            entry.error = too_large_message(source, exc.size, scale, limit, limit_name)
            continue
        except ImageReadError as exc:
            entry.error = str(exc)
            continue
        entry.size = img.size
        entry.notes = list(img.notes)
        if img.alpha is not None:
            entry.notes.append("alpha channel left out of the comparison")
        if img.bit_depth == 16:
            entry.notes.append("16-bit input: shown and measured with 8 bits")
        try:
            for key, side in (("before", before), ("after", after)):
                def step(done: int, total: int, label: str = side.label) -> None:
                    if progress:
                        progress(label, done, total)

                t0 = time.perf_counter()
                out = _uint8(side.upscale(img, step))
                entry.seconds[key] = time.perf_counter() - t0
                setattr(entry, key, out)
        except (ValueError, MemoryError, RuntimeError) as exc:
            from ribsr.memory import is_out_of_memory

            if isinstance(exc, RuntimeError) and not is_out_of_memory(exc):
                raise  # a bug, not this input's problem
            entry.error = f"{source}: {exc}"
            continue
        if hr_dir is None:
            continue
        try:
            entry.hr = find_hr(hr_dir, source.name, scale, hr_index)
            entry.metrics = {key: _measure(getattr(entry, key), entry.hr, scale) for key in ("before", "after")}
        except (FileNotFoundError, ValueError) as exc:
            entry.problem = str(exc)
    return entries


# ---------------------------------------------------------------------------------- the report
def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit image, (H, W) or (H, W, 3), as PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _data_url(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")


def _fmt(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "-"
    return f"{metrics['psnr']:.3f} dB / {metrics['ssim']:.4f}"


def _means(entries: Sequence[CompareEntry]) -> dict[str, dict[str, float]] | None:
    measured = [e.metrics for e in entries if e.metrics]
    if not measured:
        return None
    return {side: {k: float(np.mean([m[side][k] for m in measured])) for k in ("psnr", "ssim")}
            for side in ("before", "after")}


def render_report(entries: Sequence[CompareEntry], images: dict[tuple[int, str], str], *,
                  title: str = "ribsr compare") -> str:
    """The report's HTML: ``images[(i, "before"|"after")]`` is the URL (a data URL, or a path relative to the
    report) of entry ``i``'s image; the viewer's script and style are inlined, so nothing else is loaded."""
    esc = html.escape
    first = next((e for e in entries), None)
    before_label = first.before_label if first else "before"
    after_label = first.after_label if first else "after"
    means = _means(entries)
    data = {
        "title": title, "before": before_label, "after": after_label,
        "scale": first.scale if first else None,
        "metrics": {"y_channel": True, "crop_border": first.scale if first else None, "hr_mod_crop": True},
        "mean": means,
        "images": [{"name": e.name, "source": str(e.source), "hr": str(e.hr) if e.hr else None,
                    "size": list(e.size) if e.size else None, "metrics": e.metrics, "problem": e.problem,
                    "error": e.error, "notes": e.notes} for e in entries],
    }
    rows = []
    for e in entries:
        status = esc(e.error or e.problem or "")
        size = f"{e.size[0]}x{e.size[1]} → {e.scale * e.size[0]}x{e.scale * e.size[1]}" if e.size else "-"
        rows.append(f"<tr><td>{esc(e.name)}</td><td>{size}</td><td>{_fmt(e.metrics and e.metrics['before'])}</td>"
                    f"<td>{_fmt(e.metrics and e.metrics['after'])}</td><td class=problem>{status}</td></tr>")
    if means and len([e for e in entries if e.metrics]) > 1:
        rows.append(f"<tr class=mean><td>mean of {len([e for e in entries if e.metrics])}</td><td></td>"
                    f"<td>{_fmt(means['before'])}</td><td>{_fmt(means['after'])}</td><td></td></tr>")
    sections = []
    for i, e in enumerate(entries):
        head = f"<h2>{esc(e.name)}</h2>"
        if e.error:
            sections.append(f"<section class=entry>{head}<p class=problem>{esc(e.error)}</p></section>")
            continue
        facts = [f"{e.size[0]}x{e.size[1]} → x{e.scale}"] if e.size else []
        if e.metrics:
            facts.append(f"{esc(e.before_label)}: {_fmt(e.metrics['before'])}")
            facts.append(f"{esc(e.after_label)}: {_fmt(e.metrics['after'])}")
            facts.append(f"HR {esc(str(e.hr))}")
        notes = "".join(f"<p class=note>{esc(n)}</p>" for n in e.notes)
        problem = f"<p class=problem>{esc(e.problem)}</p>" if e.problem else ""
        sections.append(
            f"<section class=entry>{head}<p class=facts>{' · '.join(facts)}</p>{problem}{notes}"
            f"<div class=viewer data-rc-before=\"{esc(images[(i, 'before')])}\" "
            f"data-rc-after=\"{esc(images[(i, 'after')])}\" data-rc-before-label=\"{esc(e.before_label)}\" "
            f"data-rc-after-label=\"{esc(e.after_label)}\"></div></section>")
    metrics_note = ("PSNR / SSIM: outputs rounded to 8 bits against the HR image mod-cropped to the scale, on the Y "
                    f"channel (BT.601), a border of {first.scale if first else 's'} pixels left out, as "
                    "<code>ribsr evaluate</code> measures.")
    payload = json.dumps(data, indent=1).replace("</", "<\\/")
    script = asset_text("compare.js").replace("</script", "<\\/script")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ribsr compare">
<title>{esc(title)}</title>
<style>
body {{ margin: 0 auto; padding: 16px 24px; max-width: 1400px; background: #181818; color: #ddd;
  font: 14px/1.5 system-ui, sans-serif; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} h2 {{ font-size: 16px; margin: 24px 0 4px; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
td, th {{ border-bottom: 1px solid #333; padding: 3px 10px; text-align: left; font-variant-numeric: tabular-nums; }}
tr.mean td {{ font-weight: 600; }}
.problem {{ color: #ff8a80; }} .note {{ color: #aaa; margin: 0; }} .facts {{ margin: 0 0 6px; color: #bbb; }}
code {{ color: #fff; }}
{asset_text("compare.css")}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p>Left of the divider: <b>{esc(before_label)}</b>; right: <b>{esc(after_label)}</b>. Wheel: zoom (to single
pixels), drag: pan, double click: 1:1 / fit, arrows: move the divider.</p>
<table>
<tr><th>image</th><th>size</th><th>{esc(before_label)} PSNR / SSIM</th><th>{esc(after_label)} PSNR / SSIM</th>
<th></th></tr>
{chr(10).join(rows)}
</table>
<p class=note>{metrics_note}</p>
{chr(10).join(sections)}
<script type="application/json" id="ribsr-report">{payload}</script>
<script>
{script}
RibsrCompare.mountAll(document);
</script>
</body>
</html>
"""


def write_report(entries: Sequence[CompareEntry], path: str | os.PathLike[str], *,
                 assets_dir: str | os.PathLike[str] | None = None, title: str = "ribsr compare") -> Path:
    """Write the HTML report of ``entries`` to ``path`` (atomically): the images embedded as base64 PNG, or
    written into ``assets_dir`` as ``{stem}_before.png`` / ``{stem}_after.png`` and linked relative to the
    report."""
    path = Path(path)
    images: dict[tuple[int, str], str] = {}
    used: set[str] = set()
    for i, e in enumerate(entries):
        for key in ("before", "after"):
            pixels = getattr(e, key)
            if pixels is None:
                continue
            if assets_dir is None:
                images[(i, key)] = _data_url(pixels)
                continue
            folder = Path(assets_dir)
            folder.mkdir(parents=True, exist_ok=True)
            stem = e.source.stem
            name = f"{stem}_{key}.png"
            n = 2
            while name in used:  # two inputs of the same stem from different folders
                name, n = f"{stem}-{n}_{key}.png", n + 1
            used.add(name)
            with atomic_write(folder / name) as tmp:
                tmp.write_bytes(png_bytes(pixels))
            images[(i, key)] = Path(os.path.relpath((folder / name).resolve(), path.resolve().parent)).as_posix()
    text = render_report(entries, images, title=title)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.debug("report written to %s", path)
    return path
