"""Upscaling whole images with a super-resolution network: :class:`Upscaler`.

It wraps device and dtype, a tile size chosen to fit a memory budget (:mod:`ribsr.planning`,
:mod:`ribsr.memory`, :mod:`ribsr.tiling`), retries with smaller tiles when memory runs out, the 8-fold
self-ensemble (:func:`ribsr.transforms.dihedral`), and PIL/numpy/tensor images.
"""

from __future__ import annotations

import logging
import numbers
import os
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from ribsr.devices import resolve_device, resolve_dtype
from ribsr.diskarray import DiskArray, block_rows
from ribsr.imageio import DecodedImage, from_array, from_pil, to_array, to_pil, write_image
from ribsr.memory import available_memory, is_out_of_memory, measure_memory_cost, release_cpu_memory
from ribsr.model.sst import DEFAULT_BIAS_CACHE_BYTES
from ribsr.modelinfo import model_info
from ribsr.planning import GIB, MemoryCost, image_buffer_bytes, modelled_memory_cost, plan_tiling
from ribsr.tiling import Progress, tiled_forward
from ribsr.transforms import dihedral

log = logging.getLogger(__name__)

__all__ = ["BIAS_CACHE_SHARE", "RANGE_TOLERANCE", "STREAM_ABOVE_GIB", "Upscaler", "check_pixels"]

ImageT = TypeVar("ImageT")

# Default of Upscaler's stream_above: outputs whose buffers would take more GiB in memory go through disk.
STREAM_ABOVE_GIB = 1.0

# Share of a --max-memory budget given to the model's cache of dense positional biases.
BIAS_CACHE_SHARE = 0.25

# How far float pixels may lie outside [0, 1] and still be taken (and clipped): rounding and mild
# resampling overshoot; 0..255 data, or -1..1 normalised data, is refused.
RANGE_TOLERANCE = 0.01

# Names of the axes of an input, by kind and rank, for error messages.
_AXES = {("numpy", 2): ("row", "column"), ("numpy", 3): ("row", "column", "channel"),
         ("tensor", 3): ("channel", "row", "column"), ("tensor", 4): ("image", "channel", "row", "column")}


def check_pixels(image: np.ndarray | torch.Tensor) -> None:
    """Raise ValueError for an input no network should get: an empty image, NaN or infinite values,
    or floats outside [0, 1] (beyond :data:`RANGE_TOLERANCE`). Integer arrays are only checked for
    emptiness. numpy images are (H, W) or (H, W, C); tensors (C, H, W) or (B, C, H, W)."""
    kind = "tensor" if isinstance(image, torch.Tensor) else "numpy"
    shape = tuple(image.shape)
    if image.ndim >= 2 and 0 in shape:
        raise ValueError(f"empty image: the {kind} input of shape {shape} has no pixels")
    is_float = torch.is_floating_point(image) if kind == "tensor" else np.issubdtype(image.dtype, np.floating)
    if not is_float:
        return
    if kind == "tensor":
        finite = torch.isfinite(image)
        n_bad = int(finite.numel() - finite.sum())
        if n_bad:
            first = tuple(int(i) for i in torch.nonzero(~finite)[0])
            n_nan = int(torch.isnan(image).sum())
    else:
        finite = np.isfinite(image)
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad:
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            n_nan = int(np.count_nonzero(np.isnan(image)))
    if n_bad:
        names = _AXES.get((kind, len(first)), ("index",) * len(first))
        where = ", ".join(f"{name} {i}" for name, i in zip(names, first, strict=True))
        raise ValueError(f"{n_bad} non-finite value{'s' if n_bad != 1 else ''} ({n_nan} NaN, {n_bad - n_nan} inf) "
                         f"in the {kind} input of shape {shape}, the first at {where}; the network would turn "
                         f"the whole image into NaN")
    low, high = float(image.min()), float(image.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(f"float input ranges over [{low:g}, {high:g}]; expected [0, 1] (8-bit data: divide by "
                         f"255 or pass uint8; 16-bit data: divide by 65535 or pass uint16)")


# ---------------------------------------------------------------------- settings
def _whole_number(name: str, value: object, minimum: int, what: str) -> int:
    """``value`` as an int when it is a whole number >= ``minimum`` (not a bool); else a ValueError naming
    ``name``, what it may be, and ``value``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be {what}, an integer >= {minimum}; got {value!r}")
    return int(value)


# ---------------------------------------------------------------------- Upscaler
class Upscaler:
    """Upscale PIL images, numpy arrays or tensors with a super-resolution model.

    Args:
        model: the network; moved to ``device``/``dtype`` in place and kept for every image.
        tile: ``"auto"`` (default) picks the largest tile that fits the memory budget, or none when
            the whole image fits; ``0``/None never tiles (unless memory runs out); an int is the tile
            side in input pixels (rounded up to a multiple of the alignment unit).
        overlap: minimum overlap of tiles in input pixels (default: one alignment unit).
        batch_size: tiles per forward pass; None: as many as fit the memory budget, at most 8
            (batches of 4 tiles ran 1.4x faster than single tiles on CPU, docs/upscale.md).
        max_memory: memory budget in GiB for one image (network activations, the image's buffers and
            the model's cache of dense positional biases, not the model weights or the PyTorch
            runtime); None: what is free now. When given, a quarter of it (at most the model's
            default) is given to the bias cache (:meth:`ribsr.model.SST.set_bias_cache`) and the
            rest to activations and buffers.
        dtype: ``"auto"`` (float32 on CPU, bfloat16 or float16 on CUDA, else the first dtype the model
            supports), ``"float32"``,
            ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
        device: ``"auto"`` (CUDA when available, else the CPU: :func:`ribsr.devices.resolve_device`),
            ``"cpu"``, ``"cuda"``, ...
        self_ensemble: average the outputs of the 8 flips/rotations of the input (8x slower).
        stream_above: in :meth:`upscale_file`, an image whose buffers would take more than this many GiB
            held in memory (:func:`ribsr.planning.image_buffer_bytes`, about 32 bytes per output pixel) has
            its output assembled in a temporary file beside the output and written from there a block of
            rows at a time (``0``: every image; ``inf``: none). None: :data:`STREAM_ABOVE_GIB`, and
            self-ensemble outputs stay in memory (an explicit value makes them refused above it).
        scale, align: override the scale and alignment unit of the model's :class:`ModelInfo`
            (:func:`ribsr.modelinfo.model_info`).

    On an out-of-memory error the image is retried with half the batch, then smaller tiles; the
    smaller setting is kept for later images.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        tile: int | str | None = "auto",
        overlap: int | None = None,
        batch_size: int | None = None,
        max_memory: float | None = None,
        dtype: str | torch.dtype | None = "auto",
        device: str | torch.device | None = "auto",
        self_ensemble: bool = False,
        scale: int | None = None,
        align: int | None = None,
        stream_above: float | None = None,
    ) -> None:
        self.info = model_info(model, scale=scale, multiple_of=align)
        # Self-ensemble outputs stream only when asked for by an explicit stream_above (then they are refused).
        self._stream_ensemble = stream_above is not None
        stream_above = STREAM_ABOVE_GIB if stream_above is None else stream_above
        if not stream_above >= 0:
            raise ValueError(f"stream_above must be >= 0 GiB (or inf: never), got {stream_above}")
        self.stream_above = stream_above
        if tile != "auto" and tile is not None:
            tile = _whole_number("tile", tile, 0, "'auto', None or a number of pixels (0: no tiles)")
        if overlap is not None:
            overlap = _whole_number("overlap", overlap, 0, "None (one alignment unit) or a number of pixels")
        if batch_size is not None:
            batch_size = _whole_number("batch_size", batch_size, 1, "None (from memory) or a number of tiles")
        if max_memory is not None:
            if isinstance(max_memory, bool) or not isinstance(max_memory, numbers.Real) or not max_memory > 0:
                raise ValueError(f"max_memory must be a positive number of GiB (None: the memory free now), got "
                                 f"{max_memory!r}")  # not > 0: also nan
            max_memory = float(max_memory)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if self.dtype not in self.info.dtypes and (dtype is None or dtype == "auto"):
            self.dtype = self.info.dtypes[0]
        if self.dtype not in self.info.dtypes:
            raise ValueError(f"{type(model).__name__} does not run in {self.dtype}; it supports "
                             f"{', '.join(str(d) for d in self.info.dtypes)}")
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.scale, self.align = self.info.scale, self.info.multiple_of
        self.tile, self.overlap, self.batch_size = tile, overlap, batch_size
        self.max_memory = max_memory
        self._cache_bytes = 0  # bytes of the budget given to the model's bias cache
        if max_memory is not None and self.info.set_bias_cache is not None:
            self._cache_bytes = int(min(BIAS_CACHE_SHARE * max_memory * GIB, DEFAULT_BIAS_CACHE_BYTES))
            self.info.set_bias_cache(self._cache_bytes)
        self.self_ensemble = self_ensemble
        self._cost: MemoryCost | None = None
        self._tile_cap: int | None = None  # largest tile side that has not run out of memory

    # ------------------------------------------------------------------ planning
    @property
    def memory_cost(self) -> MemoryCost:
        """The model's measured (or modelled) memory cost; measured once, on first use."""
        if self._cost is None:
            self._cost = measure_memory_cost(self.model, self.align, info=self.info)
            log.debug("memory cost: %.0f bytes + %.0f bytes/pixel (%s)", self._cost.fixed_bytes,
                      self._cost.bytes_per_pixel, self._cost.method)
        return self._cost

    def plan(self, h: int, w: int, output_in_memory: bool = True) -> tuple[int | None, int]:
        """(tile side or None for no tiling, tiles per batch) for an (h, w) input (``output_in_memory``
        False: for an output assembled on disk, whose buffers the budget need not hold)."""
        budget = self.max_memory * GIB - self._cache_bytes if self.max_memory else available_memory(self.device)
        return plan_tiling(h, w, self.scale, self.align, budget, self.tile, modelled_memory_cost(self.model, self.info),
                           lambda: self.memory_cost, batch_size=self.batch_size, tile_cap=self._tile_cap,
                           output_in_memory=output_in_memory)

    def _smaller(self, h: int, w: int, tile: int | None, batch: int) -> tuple[int | None, int] | None:
        if batch > 1:
            return tile, batch // 2
        side = max(h, w) if tile is None else tile
        if side <= 2 * self.align:
            return None
        return max(2 * self.align, (side // 2) // self.align * self.align), 1

    # ------------------------------------------------------------------ forward
    def _forward(self, x: torch.Tensor, progress: Progress | None, out: DiskArray | None = None) -> torch.Tensor:
        """(B, 3, h, w) -> (B, 3, s*h, s*w) float32, tiled as planned, retrying when out of memory;
        with ``out`` assembled in that disk array (no self-ensemble)."""
        h, w = x.shape[-2:]
        tile, batch = self.plan(h, w, output_in_memory=out is None)
        log.debug("upscaling %dx%d: tile %s, batch %d%s", w, h, tile, batch, " (output on disk)" if out else "")
        first = True
        while True:
            try:
                if out is not None:
                    target = torch.from_numpy(out.array)
                    if not first:  # a failed try left partial sums
                        for r0 in range(0, target.shape[2], 256):
                            target[:, :, r0:r0 + 256].zero_()
                            out.release()
                    first = False
                    return tiled_forward(self.model, x, tile, self.overlap, batch, scale=self.scale,
                                         align=self.align, progress=progress, out=target, release=out.release)
                return self._ensemble(x, tile, batch, progress)
            except (MemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise
                smaller = self._smaller(h, w, tile, batch)
                if smaller is None:
                    raise
                log.warning("out of memory with tile %s, batch %d; retrying with tile %s, batch %d",
                            tile, batch, *smaller)
                del exc
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                release_cpu_memory()
                tile, batch = smaller
                if tile is not None:
                    self._tile_cap = tile

    def _ensemble(self, x: torch.Tensor, tile: int | None, batch: int,
                  progress: Progress | None) -> torch.Tensor:
        passes = 8 if self.self_ensemble else 1

        def one(k: int) -> torch.Tensor:
            def step(done: int, total: int) -> None:
                if progress:
                    progress(k * total + done, passes * total)

            y = tiled_forward(self.model, dihedral(x, k), tile, self.overlap, batch,
                              scale=self.scale, align=self.align, progress=step)
            return dihedral(y, k, inverse=True)

        out = one(0)
        for k in range(1, passes):
            out.add_(one(k))
        return out.div_(passes) if passes > 1 else out

    # ------------------------------------------------------------------ public API
    def upscale_tensor(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """(3, h, w) or (B, 3, h, w) floating tensor in [0, 1] -> same rank, dtype and device,
        ``scale`` times larger, clipped to [0, 1]. Raises ValueError as :func:`check_pixels`."""
        if not torch.is_floating_point(x) or x.ndim not in (3, 4) or x.shape[-3] != 3:
            raise ValueError(f"expected a floating (3, H, W) or (B, 3, H, W) tensor, got "
                             f"{tuple(x.shape)} {x.dtype}")
        check_pixels(x)
        batch = x if x.ndim == 4 else x[None]
        y = self._forward(batch.float(), progress).clamp_(0, 1)
        return (y if x.ndim == 4 else y[0]).to(x.dtype)

    def upscale_decoded(self, img: DecodedImage, progress: Progress | None = None) -> DecodedImage:
        """Upscale a decoded image: RGB through the model, alpha with bicubic ``imresize``."""
        if img.rgb.size == 0:
            raise ValueError(f"empty image: {img.size[0]}x{img.size[1]} pixels")
        x = torch.from_numpy(img.rgb).permute(2, 0, 1)[None]  # (H, W, 3) -> (1, 3, H, W)
        y = self._forward(x, progress).clamp_(0, 1)
        rgb = y[0].permute(1, 2, 0).numpy()  # (3, sH, sW) -> (sH, sW, 3), a view
        alpha = None
        if img.alpha is not None:
            from ribsr.imresize import imresize

            alpha = np.clip(np.asarray(imresize(img.alpha, self.scale), dtype=np.float32), 0, 1)
        return img.with_pixels(rgb, alpha)

    def upscale_file(
        self,
        img: DecodedImage,
        path: str | os.PathLike[str],
        fmt: str = "PNG",
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
        stream: bool | None = None,
    ) -> list[str]:
        """Upscale a decoded image into the file ``path`` (as :func:`ribsr.imageio.write_image` writes it:
        atomically, in Pillow format ``fmt``); returns the writer's notes.

        ``stream`` None streams when the image's buffers would exceed ``stream_above`` GiB in memory; True
        always, False never. A streamed output is assembled (float32, 12 bytes per output pixel) in an
        unnamed temporary file in ``path``'s folder (:class:`ribsr.diskarray.DiskArray`), which is gone
        after success, failure or interruption, and PNG and TIFF are written from it a block of rows at a
        time (pixels identical to the in-memory path); JPEG, WebP and BMP are converted whole in memory.
        The upscaled alpha channel is held in memory (4 bytes per output pixel). Self-ensemble is refused
        for streamed outputs (ValueError); with the default ``stream_above`` its outputs stay in memory.
        """
        path = Path(path)
        h, w = img.rgb.shape[:2]
        if img.rgb.size == 0:
            raise ValueError(f"empty image: {w}x{h} pixels")
        held = image_buffer_bytes(h, w, self.scale)
        if stream is None:
            stream = held > self.stream_above * GIB and (self._stream_ensemble or not self.self_ensemble)
        if not stream:
            return write_image(self.upscale_decoded(img, progress), path, fmt, overwrite=overwrite)
        if self.self_ensemble:
            raise ValueError(f"{path}: self-ensemble is not supported for an output assembled on disk (this "
                             f"{w}x{h} input's buffers would take {held / GIB:.2f} GiB in memory, more than "
                             f"stream_above = {self.stream_above:g} GiB); raise stream_above (--stream-above) or "
                             f"leave out self-ensemble")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (use overwrite to replace it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        x = torch.from_numpy(img.rgb).permute(2, 0, 1)[None]  # (H, W, 3) -> (1, 3, H, W)
        s = self.scale
        with DiskArray((1, 3, s * h, s * w), path.parent) as acc:
            self._forward(x, progress, out=acc)
            out: np.ndarray = acc.array  # type: ignore[assignment]  # (1, 3, sH, sW)
            rows = block_rows(3 * s * w * 4)
            for r0 in range(0, s * h, rows):  # clipped as upscale_decoded clips, a block of rows at a time
                np.clip(out[:, :, r0:r0 + rows], 0, 1, out=out[:, :, r0:r0 + rows])
                acc.release()
            rgb = out[0].transpose(1, 2, 0)  # (3, sH, sW) -> (sH, sW, 3), a view of the file
            alpha = None
            if img.alpha is not None:
                from ribsr.imresize import imresize

                alpha = np.clip(np.asarray(imresize(img.alpha, s), dtype=np.float32), 0, 1)
            result = img.with_pixels(rgb, alpha)
            try:
                return write_image(result, path, fmt, overwrite=overwrite, rows=rows, release=acc.release)
            finally:
                del result, rgb, out

    def upscale(self, image: ImageT, progress: Progress | None = None) -> ImageT:
        """Upscale a PIL image, a numpy array ((H, W) or (H, W, 1|3|4), uint8/uint16/float) or a
        tensor (see :meth:`upscale_tensor`); returns the same kind.

        Grayscale stays grayscale and alpha is kept (upscaled bicubically). PIL palette and CMYK
        images come back as RGB(A); floats are clipped to [0, 1]. Raises ValueError for an empty
        image, NaN or infinite values, and floats outside [0, 1] (:func:`check_pixels`).
        """
        from PIL import Image

        if isinstance(image, torch.Tensor):
            return self.upscale_tensor(image, progress)  # type: ignore[return-value]
        if isinstance(image, Image.Image):
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                log.warning("%s has %d frames (animated or multi-page): only the current frame (%d) is upscaled",
                            getattr(image, "filename", None) or "the image", frames, image.tell())
            return to_pil(self.upscale_decoded(from_pil(image), progress))  # type: ignore[return-value]
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3):
                raise ValueError(f"expected an (H, W) or (H, W, 1|3|4) array, got shape {image.shape}")
            check_pixels(image)
            channels = 0 if image.ndim == 2 else image.shape[2]
            out = self.upscale_decoded(from_array(image), progress)
            return to_array(out, image.dtype, channels)  # type: ignore[return-value]
        raise TypeError(f"cannot upscale a {type(image).__name__}; pass a PIL image, numpy array or tensor")
