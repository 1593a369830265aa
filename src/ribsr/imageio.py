"""Reading and writing images as people have them, for upscaling.

Every image is turned into an RGB float array in [0, 1] (what the network takes) plus what is
needed to write the result back in the same form: bit depth (8 or 16), whether it was grayscale,
its alpha channel, its format and ICC profile, and notes about conversions the user should know
of (palette, CMYK, ...). EXIF orientation is applied on reading. Writing is atomic: the image is
written to a temporary file in the destination folder and renamed into place.

Pillow reads 16-bit colour PNGs and TIFFs as 8-bit, so 16-bit colour PNGs are read and written
with pypng and 16-bit TIFFs (gray or colour, with or without alpha) with tifffile, as are floating-point
and int16 TIFFs (written back as 16-bit); 16-bit grayscale PNGs go through Pillow's ``I;16`` mode. The size
an image declares is checked before it is decoded (``max_pixels``), and of an animated or multi-page image
only the first frame is read (with a note).
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from ribsr.files import atomic_write

# The first bytes of a TIFF file: little- and big-endian, classic and BigTIFF.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# How far floating-point TIFF samples may lie outside [0, 1] and still be read (clipped): rounding and resampling
# overshoot, as ribsr.inference.RANGE_TOLERANCE for arrays.
FLOAT_TOLERANCE = 0.01

# Suffixes picked up when a folder is given as input.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)


class ImageReadError(ValueError):
    """A file could not be read as an image (missing, corrupt, truncated or unsupported)."""


class ImageTooLargeError(ImageReadError):
    """An image declares more pixels than allowed; raised before its pixels are decoded."""

    def __init__(self, path: Path, size: tuple[int, int], max_pixels: int) -> None:
        self.path, self.size, self.max_pixels = path, size, max_pixels
        super().__init__(f"{path}: {size[0]}x{size[1]} ({size[0] * size[1]:,} pixels) is more than the "
                         f"{max_pixels:,} pixels allowed; not decoded")


@dataclass
class DecodedImage:
    """An image ready for the network, and what is needed to write it back in its own form."""

    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]; grayscale images are replicated to 3 channels
    alpha: np.ndarray | None = None  # (H, W) float32 in [0, 1]
    bit_depth: int = 8  # bits per sample to write back: 8 or 16
    grayscale: bool = False
    format: str | None = None  # Pillow's name of the file format ("PNG", "JPEG", ...)
    mode: str = "RGB"  # the mode of the source, as Pillow names it ("RGB;16" etc. for 16-bit colour PNG)
    icc_profile: bytes | None = None
    notes: list[str] = field(default_factory=list)
    frames: int = 1  # frames (or pages) in the file; only the first one is read

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.rgb.shape[1], self.rgb.shape[0]

    def with_pixels(self, rgb: np.ndarray, alpha: np.ndarray | None) -> DecodedImage:
        """A copy with other pixels (for instance the upscaled ones) and the same metadata."""
        return replace(self, rgb=rgb, alpha=alpha, notes=list(self.notes))


# ---------------------------------------------------------------------- conversion tables
# Modes converted before decoding: source mode -> (target mode, note for the user or None).
_CONVERT: dict[str, tuple[str, str | None]] = {
    "1": ("L", "1-bit image converted to 8-bit grayscale"),
    "PA": ("RGBA", "palette image converted to RGBA"),
    "CMYK": ("RGB", "CMYK image converted to RGB (simple conversion, no colour management)"),
    "YCbCr": ("RGB", None),
    "HSV": ("RGB", "HSV image converted to RGB"),
    "La": ("LA", None),
    "RGBa": ("RGBA", None),
    "RGBX": ("RGB", None),
    "I;16L": ("I;16", None),
    "I;16B": ("I;16", None),
    "I;16N": ("I;16", None),
}
# Decodable modes: mode -> (grayscale, has alpha, maximum sample value).
_DECODE: dict[str, tuple[bool, bool, int]] = {
    "L": (True, False, 255),
    "LA": (True, True, 255),
    "RGB": (False, False, 255),
    "RGBA": (False, True, 255),
    "I;16": (True, False, 65535),
    "I": (True, False, 65535),  # 32-bit integer mode, accepted when the values fit in 16 bits
}
# Modes that turn a tRNS colour key into an alpha channel.
_WITH_ALPHA = {"L": "LA", "RGB": "RGBA", "I;16": "LA", "I": "LA"}
# EXIF orientation tag value -> transform of an (H, W, ...) array, as Pillow's ImageOps.exif_transpose.
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class _Format:
    suffix: str
    alpha: bool  # can hold an alpha channel
    gray16: bool  # can hold 16-bit grayscale
    color16: bool  # can hold 16-bit colour
    options: tuple[tuple[str, object], ...] = ()


# Formats written; any other input format with ``format="same"`` is written as PNG.
FORMATS: dict[str, _Format] = {
    "PNG": _Format(".png", alpha=True, gray16=True, color16=True, options=(("compress_level", 6),)),
    "JPEG": _Format(".jpg", alpha=False, gray16=False, color16=False,
                    options=(("quality", 95), ("subsampling", 0))),
    "WEBP": _Format(".webp", alpha=True, gray16=False, color16=False, options=(("quality", 95),)),
    "BMP": _Format(".bmp", alpha=False, gray16=False, color16=False),
    # 8-bit TIFF: Pillow with LZW; 16-bit TIFF: tifffile with Deflate (which needs no imagecodecs)
    "TIFF": _Format(".tif", alpha=True, gray16=True, color16=True, options=(("compression", "tiff_lzw"),)),
}


# ---------------------------------------------------------------------- decoding
def _rgb(data: np.ndarray, gray: bool) -> np.ndarray:
    """(H, W, C) float32 samples -> a writable contiguous (H, W, 3) RGB array (gray replicated)."""
    if gray:
        return np.repeat(data[..., :1], 3, axis=2)
    return np.ascontiguousarray(data[..., :3])


def from_pil(im: Image.Image) -> DecodedImage:
    """Decode a Pillow image (any common mode) into a :class:`DecodedImage`; EXIF is not applied."""
    notes: list[str] = []
    mode, fmt = im.mode, im.format
    if mode == "P":
        target = "RGBA" if im.has_transparency_data else "RGB"
        notes.append(f"palette image converted to {target}")
        im = im.convert(target)
    elif mode in _CONVERT:
        target, note = _CONVERT[mode]
        if note:
            notes.append(note)
        im = im.convert(target)
    elif mode in _WITH_ALPHA and "transparency" in im.info:
        if mode in ("I;16", "I"):
            notes.append("transparent colour key of a 16-bit grayscale image dropped")
        else:
            notes.append("transparent colour key converted to an alpha channel")
            im = im.convert(_WITH_ALPHA[mode])
    if im.mode not in _DECODE:
        raise ValueError(f"unsupported image mode {im.mode!r} (source mode {mode!r})")
    gray, has_alpha, max_value = _DECODE[im.mode]
    arr = np.asarray(im)
    if im.mode == "I":
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError("32-bit integer image with values outside 0..65535 is not supported")
    data = arr.astype(np.float32) / max_value
    if data.ndim == 2:
        data = data[..., None]  # (H, W) -> (H, W, 1)
    alpha = data[..., -1].copy() if has_alpha else None
    return DecodedImage(
        rgb=_rgb(data, gray),
        alpha=alpha,
        bit_depth=16 if max_value == 65535 else 8,
        grayscale=gray,
        format=fmt,
        mode=mode,
        icc_profile=im.info.get("icc_profile"),
        notes=notes,
    )


def from_array(arr: np.ndarray) -> DecodedImage:
    """Decode a numpy image: (H, W) or (H, W, C) with C in 1, 3, 4; uint8, uint16 or float in [0, 1]."""
    if arr.ndim == 2:
        arr = arr[..., None]  # (H, W) -> (H, W, 1)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, 1|3|4) array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        data, depth = arr.astype(np.float32) / 255, 8
    elif arr.dtype == np.uint16:
        data, depth = arr.astype(np.float32) / 65535, 16
    elif np.issubdtype(arr.dtype, np.floating):
        data, depth = arr.astype(np.float32), 8
    else:
        raise ValueError(f"unsupported array dtype {arr.dtype} (use uint8, uint16 or float)")
    gray = arr.shape[2] == 1
    alpha = data[..., 3].copy() if arr.shape[2] == 4 else None
    return DecodedImage(rgb=_rgb(data, gray), alpha=alpha, bit_depth=depth, grayscale=gray, mode="array")


def _png_header(head: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG from its first 26 bytes, or None when not a PNG."""
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _read_png16_color(source: Path | bytes) -> DecodedImage:
    """A 16-bit colour (or gray + alpha) PNG, read with pypng since Pillow drops to 8 bits."""
    import png

    reader = png.Reader(bytes=source) if isinstance(source, bytes) else png.Reader(filename=str(source))
    width, height, rows, info = reader.asDirect()
    planes = info["planes"]
    data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])  # (H, W * planes)
    data = data.reshape(height, width, planes).astype(np.float32) / (2 ** info["bitdepth"] - 1)
    gray, has_alpha = info["greyscale"], info["alpha"]
    alpha = data[..., -1].copy() if has_alpha else None
    rgb = _rgb(data, gray)
    mode = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
    return DecodedImage(rgb=rgb, alpha=alpha, bit_depth=16, grayscale=gray, format="PNG", mode=mode + ";16")


def _read_tiff16(source: Path | bytes, path: Path, max_pixels: int | None) -> tuple[DecodedImage, int | None] | None:
    """A 16-bit unsigned or floating-point gray or RGB TIFF (alpha optional) read with tifffile, and its
    orientation tag; None for any other TIFF (left to Pillow). The declared size is checked before decoding;
    problems name ``path``.

    Signed 16-bit samples (int16, which Pillow called a "32-bit integer image") are read as unsigned ones when
    none is negative; floating-point samples (16, 32 or 64 bits, which Pillow did not recognise) are read as they
    are, clipped to [0, 1] within :data:`FLOAT_TOLERANCE`. Refused with :class:`ImageReadError` naming what they
    hold: gray or RGB with more than one extra sample (a 5-channel TIFF, whose samples were dropped), before
    decoding, whatever the bit depth; float or int16 samples compressed in a way tifffile needs imagecodecs for;
    negative int16 samples; NaN, infinite or out-of-range floating-point samples."""
    import tifffile

    try:
        tif = tifffile.TiffFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception:  # not a TIFF tifffile can parse: Pillow reports the problem
        return None
    with tif:
        page = tif.pages[0]
        photometric, bits, sample_format = int(page.photometric), page.bitspersample, int(page.sampleformat)
        if photometric in (1, 2) and page.samplesperpixel > (1 if photometric == 1 else 3) + 1:
            kind = "gray" if photometric == 1 else "RGB"
            raise ImageReadError(f"{path}: {page.samplesperpixel} samples (channels) per pixel, {kind} and "
                                 f"{page.samplesperpixel - (1 if photometric == 1 else 3)} more: only gray, gray + "
                                 "alpha, RGB and RGBA images are read")
        # sample formats: 1 = unsigned integer, 2 = signed integer, 3 = IEEE float
        is_float = sample_format == 3 and bits in (16, 32, 64)
        if not (bits == 16 and sample_format in (1, 2) or is_float) or photometric not in (1, 2):
            return None  # 1 = BlackIsZero gray, 2 = RGB
        try:
            tifffile.TIFF.DECOMPRESSORS[page.compression]
            tifffile.TIFF.UNPREDICTORS[page.predictor]
        except KeyError:  # tifffile decodes this only with imagecodecs installed (LZW, JPEG, ...): Pillow
            if bits == 16 and sample_format == 1:
                return None  # Pillow reads it, with 8 bits (and says so)
            what = f"{bits}-bit floating-point" if is_float else "16-bit signed integer (int16)"
            how = getattr(page.compression, "name", page.compression)
            if page.predictor != 1:
                how = f"{how} with predictor {getattr(page.predictor, 'name', page.predictor)}"
            raise ImageReadError(f"{path}: a {what} TIFF compressed with {how}, which tifffile decodes only with "
                                 f"the imagecodecs package (pip install imagecodecs); Pillow does not read {what} "
                                 "samples") from None
        height, width = page.imagelength, page.imagewidth
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(path, (width, height), max_pixels)
        bomb = Image.MAX_IMAGE_PIXELS and 2 * Image.MAX_IMAGE_PIXELS  # the size Pillow refuses to open
        if bomb and width * height > bomb:
            raise ImageReadError(f"{path}: refused without decoding: {width}x{height} ({width * height:,} pixels) is "
                                 f"more than {bomb:,} pixels (twice PIL.Image.MAX_IMAGE_PIXELS), a possible "
                                 f"decompression bomb")
        data = page.asarray()
        orientation_tag = page.tags.get(274)  # TIFF Orientation, as EXIF's
        orientation = None if orientation_tag is None else int(orientation_tag.value)
        icc_tag = page.tags.get(34675)  # InterColorProfile
        icc = None if icc_tag is None else bytes(icc_tag.value)
        frames = len(tif.pages)
        axes = page.axes
    if data.ndim == 2:
        data = data[..., None]  # (H, W) -> (H, W, 1)
    elif axes.startswith("S"):
        data = np.moveaxis(data, 0, -1)  # planar (S, H, W) -> (H, W, S)
    gray = photometric == 1
    n_color = 1 if gray else 3
    extras = tuple(int(e) for e in page.extrasamples)  # 0 unspecified, 1 premultiplied alpha, 2 alpha
    notes = []
    if is_float:
        samples = data.astype(np.float32)
        finite = np.isfinite(samples)
        if not finite.all():
            raise ImageReadError(f"{path}: {int(samples.size - finite.sum()):,} floating-point samples are NaN or "
                                 "infinite")
        low, high = (float(samples.min()), float(samples.max())) if samples.size else (0.0, 0.0)
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
            raise ImageReadError(f"{path}: floating-point samples range over [{low:g}, {high:g}]; expected [0, 1] "
                                 "(8-bit data: divide by 255; 16-bit data: divide by 65535)")
        np.clip(samples, 0, 1, out=samples)
    else:
        if sample_format == 2:
            low = int(data.min()) if data.size else 0
            if low < 0:
                raise ImageReadError(f"{path}: 16-bit signed integer samples (int16) with negative values (down to "
                                     f"{low}) are not supported; use unsigned 8- or 16-bit integers, or floating point "
                                     "in [0, 1]")
            notes.append("16-bit signed integer (int16) TIFF read as unsigned 16-bit (no sample is negative)")
        samples = data.astype(np.float32) / 65535
    alpha = None
    if extras and extras[0] in (1, 2) and samples.shape[2] > n_color:
        alpha = samples[..., n_color].copy()
        if extras[0] == 1:  # premultiplied: divide the colour by alpha where it is not 0
            np.divide(samples[..., :n_color], alpha[..., None], out=samples[..., :n_color],
                      where=alpha[..., None] > 0)
            np.clip(samples, 0, 1, out=samples)
    if samples.shape[2] > n_color + (alpha is not None):
        notes.append(f"{samples.shape[2] - n_color - (alpha is not None)} extra TIFF sample(s) dropped")
    kind = ("LA" if alpha is not None else "L") if gray else ("RGBA" if alpha is not None else "RGB")
    if is_float:
        notes.append(f"{bits}-bit floating-point TIFF; written back with 16 bits")
    img = DecodedImage(rgb=_rgb(samples, gray), alpha=alpha, bit_depth=16, grayscale=gray, format="TIFF",
                       mode=kind + (f";F{bits}" if is_float else ";16"), icc_profile=icc, notes=notes,
                       frames=frames)
    return img, orientation


def _tiff_bits(im: Image.Image) -> tuple[int, ...]:
    """Bits per sample a TIFF opened by Pillow declares (empty for other formats)."""
    bits = getattr(im, "tag_v2", {}).get(258, ()) if im.format == "TIFF" else ()
    return bits if isinstance(bits, tuple) else (bits,)


def apply_orientation(img: DecodedImage, orientation: int | None) -> DecodedImage:
    """The image turned upright according to an EXIF orientation value (1-8; others ignored)."""
    turn = _ORIENT.get(orientation or 1)
    if turn is None:
        return img
    rgb = np.ascontiguousarray(turn(img.rgb))
    alpha = None if img.alpha is None else np.ascontiguousarray(turn(img.alpha))
    return img.with_pixels(rgb, alpha)


def read_image(source: str | os.PathLike[str] | bytes, max_pixels: int | None = None, *,
               name: str | None = None) -> DecodedImage:
    """Read an image file (PNG, JPEG, WebP, BMP, TIFF, GIF, ...), or such a file's bytes, with EXIF orientation
    applied.

    16-bit PNG and TIFF images keep their 16 bits. Of an animated or multi-page image only the
    first frame is read, with a note saying how many frames there are (``frames``). With
    ``max_pixels``, an image that declares more pixels raises :class:`ImageTooLargeError` before
    any pixel is decoded (Pillow's own decompression-bomb warning is then not shown; its error, at
    twice ``PIL.Image.MAX_IMAGE_PIXELS``, still applies). Raises :class:`ImageReadError` naming
    the file (``name``, for bytes) when it is missing, corrupt, truncated, too large or of an unsupported kind.
    """
    return cast(DecodedImage, _read(source, max_pixels, name, rgb8=False))


def read_rgb8(source: str | os.PathLike[str] | bytes, *, name: str | None = None) -> tuple[np.ndarray, bool]:
    """An image file (or its bytes) as :func:`read_image` reads it, as (H, W, 3) uint8 RGB (grayscale replicated,
    alpha dropped, 16-bit samples rounded to 8 bits), and whether it is grayscale: the pixels of
    ``to_array(read_image(source), np.uint8, 3)``, without a floating-point copy of 8-bit images (training data)."""
    out = _read(source, None, name, rgb8=True)
    if isinstance(out, DecodedImage):
        return to_array(out, np.uint8, 3), out.grayscale
    return out


def _read(source: str | os.PathLike[str] | bytes, max_pixels: int | None, name: str | None,
          rgb8: bool) -> DecodedImage | tuple[np.ndarray, bool]:
    """:func:`read_image`; with ``rgb8``, an 8-bit image Pillow decodes comes as :func:`read_rgb8`'s pair."""
    if isinstance(source, bytes):
        data, path = source, Path(name or "<image bytes>")
    else:
        data, path = None, Path(source)
    try:
        if data is not None:
            head = data[:26]
        else:
            with open(path, "rb") as f:
                head = f.read(26)
        header = _png_header(head)
        tiff16 = _read_tiff16(path if data is None else data, path, max_pixels) if head[:4] in _TIFF_MAGIC else None
        if tiff16 is not None:
            img, orientation = tiff16
        else:
            with warnings.catch_warnings():
                if max_pixels is not None:  # the size is checked here instead
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path if data is None else io.BytesIO(data))
            with im:
                if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
                    raise ImageTooLargeError(path, im.size, max_pixels)
                orientation = im.getexif().get(_EXIF_ORIENTATION)
                if header is not None and header[0] == 16 and header[1] in (2, 4, 6):
                    icc = im.info.get("icc_profile")
                    img = _read_png16_color(path if data is None else data)
                    img.icc_profile = icc
                else:
                    im.load()  # decode now so that truncated or corrupt data fails here
                    pixels = _rgb8(im) if rgb8 else None
                    if pixels is not None:
                        turn = _ORIENT.get(orientation or 1)
                        return (pixels[0] if turn is None else np.ascontiguousarray(turn(pixels[0])), pixels[1])
                    img = from_pil(im)
                    if 16 in _tiff_bits(im) and img.bit_depth == 8:
                        img.notes.append("16-bit TIFF read with 8 bits by Pillow, precision lost (16-bit gray "
                                         "and RGB TIFFs keep 16 bits through tifffile, which needs the imagecodecs "
                                         "package for LZW and JPEG compression: pip install imagecodecs)")
                img.frames = getattr(im, "n_frames", 1)
        if img.frames > 1:
            img.notes.append(f"{img.frames} frames (animated or multi-page image): only the first frame is used")
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a recognised image file") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: refused without decoding: {exc}") from None
    except Exception as exc:  # Pillow and pypng raise many types (OSError, SyntaxError, png.Error, ...)
        raise ImageReadError(f"{path}: cannot read image: {exc}") from exc
    return apply_orientation(img, orientation)


def _rgb8(im: Image.Image) -> tuple[np.ndarray, bool] | None:
    """The (H, W, 3) uint8 RGB of a decoded 8-bit Pillow image and whether it is grayscale, the modes converted as
    :func:`from_pil` converts them; None for other images (more bits, or a mode from_pil refuses)."""
    mode = im.mode
    if mode == "P":
        target = "RGBA" if im.has_transparency_data else "RGB"
    else:
        target = _CONVERT.get(mode, (mode, None))[0]
    if target not in ("L", "LA", "RGB", "RGBA"):
        return None
    arr = np.asarray(im if target == mode else im.convert(target))
    gray = target in ("L", "LA")
    if arr.ndim == 2:
        arr = arr[..., None]  # (H, W) -> (H, W, 1)
    return (np.repeat(arr[..., :1], 3, axis=2) if gray else np.ascontiguousarray(arr[..., :3])), gray


def read_array(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file (as :func:`read_image` does) into uint8 pixels: (H, W) for grayscale, else
    (H, W, 3); alpha is dropped and 16-bit samples are rounded to 8 bits. What metrics are computed on."""
    img = read_image(path)
    return to_array(img, np.uint8, 0 if img.grayscale else 3)


# ---------------------------------------------------------------------- encoding
def _quantize(data: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float in [0, 1] -> uint8 or uint16, rounded to nearest and clipped (one float temporary)."""
    max_value, dtype = (65535, np.uint16) if bit_depth == 16 else (255, np.uint8)
    buf = np.multiply(data, max_value, dtype=np.float32)
    np.rint(buf, out=buf)
    np.clip(buf, 0, max_value, out=buf)
    return buf.astype(dtype)


def _planes(img: DecodedImage, keep_alpha: bool) -> np.ndarray:
    """The channels to store: (H, W, C) with C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA), float."""
    color = img.rgb.mean(axis=2, keepdims=True) if img.grayscale else img.rgb
    if keep_alpha and img.alpha is not None:
        return np.concatenate([color, img.alpha[..., None]], axis=2)
    return color


def to_array(img: DecodedImage, dtype: np.dtype | type, channels: int) -> np.ndarray:
    """Encode as a numpy array of ``dtype`` (uint8, uint16 or a float dtype) with ``channels`` in 0..4.

    ``channels`` 0 means an (H, W) array (grayscale); floats are clipped to [0, 1].
    """
    planes = _planes(img, keep_alpha=channels == 4)
    if channels in (0, 1) and planes.shape[2] != 1:
        planes = planes[..., :3].mean(axis=2, keepdims=True)
    if channels in (3, 4) and planes.shape[2] == 1:
        planes = np.repeat(planes, 3, axis=2)
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        out = _quantize(planes, 8)
    elif dtype == np.uint16:
        out = _quantize(planes, 16)
    else:
        out = np.clip(planes, 0, 1).astype(dtype)
    return out[..., 0] if channels == 0 else out


def to_pil(img: DecodedImage, allow_alpha: bool = True) -> Image.Image:
    """Encode as a Pillow image: L, LA, I;16, RGB or RGBA (16-bit colour is reduced to 8 bits)."""
    keep_alpha = allow_alpha and img.alpha is not None
    if img.grayscale and img.bit_depth == 16 and not keep_alpha:
        im = Image.fromarray(_quantize(_planes(img, False)[..., 0], 16))  # uint16 (H, W): I;16
    else:
        planes = _quantize(_planes(img, keep_alpha), 8)  # uint8 (H, W, 1|2|3|4): L, LA, RGB, RGBA
        im = Image.fromarray(planes[..., 0] if planes.shape[2] == 1 else planes)
    if img.icc_profile:
        im.info["icc_profile"] = img.icc_profile
    return im


def _pypng(f: BinaryIO, rows: Iterable[np.ndarray], width: int, height: int, n: int, bitdepth: int,
           icc_profile: bytes | None) -> None:
    """A PNG of ``height`` rows of ``width * n`` samples (``n`` 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) with
    pypng, from an iterable of rows; an ICC profile goes into an iCCP chunk after the header."""
    import png

    writer = png.Writer(width, height, bitdepth=bitdepth, greyscale=n <= 2, alpha=n in (2, 4), compression=6)
    if not icc_profile:
        writer.write(f, rows)
        return

    def with_iccp(chunks: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        yield next(chunks)  # IHDR
        yield b"iCCP", b"icc\x00\x00" + zlib.compress(icc_profile)
        yield from chunks

    name = getattr(f, "name", None)
    if not isinstance(name, str):  # an in-memory target: the PNG is built in memory
        buf = io.BytesIO()
        writer.write(buf, rows)
        png.write_chunks(f, with_iccp(png.Reader(bytes=buf.getvalue()).chunks()))
        return
    with tempfile.TemporaryFile(dir=os.path.dirname(name) or None) as tmp:  # chunk by chunk through a file
        writer.write(tmp, rows)
        tmp.seek(0)
        png.write_chunks(f, with_iccp(png.Reader(file=tmp).chunks()))


def _blocks(img: DecodedImage, keep_alpha: bool, bit_depth: int, rows: int,
            release: Callable[[], None] | None) -> Iterator[np.ndarray]:
    """The quantised planes of ``img`` (as :func:`_planes` and :func:`_quantize` make them for the whole
    image, element for element) ``rows`` rows at a time: (rows, W, C) uint8 or uint16."""
    for r0 in range(0, img.rgb.shape[0], rows):
        part = replace(img, rgb=img.rgb[r0:r0 + rows], alpha=None if img.alpha is None else img.alpha[r0:r0 + rows])
        yield _quantize(_planes(part, keep_alpha), bit_depth)
        if release:
            release()


def _png_filtered(rows: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """PNG scanlines of 8-bit ``rows`` (r, row bytes) below the row ``prev``: each row with the filter
    (None, Sub, Up, Average, Paeth) whose output has the least sum of absolute values as signed bytes,
    the heuristic the PNG specification suggests (and zlib-based writers such as Pillow's use); (r, 1 + row bytes)."""
    x = rows.astype(np.int16)
    up = np.concatenate([prev[None], rows[:-1]]).astype(np.int16)
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    upleft = np.zeros_like(x)
    upleft[:, bpp:] = up[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    candidates = np.stack([x, x - left, x - up, x - (left + up) // 2, x - paeth]).astype(np.uint8)  # (5, r, n)
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)  # (5, r)
    choice = cost.argmin(axis=0)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = choice
    out[:, 1:] = candidates[choice, np.arange(rows.shape[0])]
    return out


def _write_png8(f: BinaryIO, blocks: Iterator[np.ndarray], width: int, height: int, n: int,
                icc_profile: bytes | None) -> None:
    """An 8-bit PNG (``n`` 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) from blocks of rows (r, W, n), filtered
    row by row (:func:`_png_filtered`) and Deflate-compressed (level 6) as they come."""
    def chunk(kind: bytes, data: bytes) -> None:
        f.write(len(data).to_bytes(4, "big") + kind + data)
        f.write(zlib.crc32(data, zlib.crc32(kind)).to_bytes(4, "big"))

    f.write(b"\x89PNG\r\n\x1a\n")
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[n]
    chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, color_type, 0, 0, 0]))
    if icc_profile:
        chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc_profile))
    z = zlib.compressobj(6)
    prev = np.zeros(width * n, np.uint8)
    pending = b""
    for block in blocks:
        lines = block.reshape(block.shape[0], width * n)  # (r, W, n) -> r rows of W * n bytes
        for r0 in range(0, lines.shape[0], 64):  # 64 rows at a time: the filters' temporaries stay small
            part = lines[r0:r0 + 64]
            pending += z.compress(_png_filtered(part, prev, n).tobytes())
            prev = part[-1]
            if len(pending) >= 1 << 20:
                chunk(b"IDAT", pending)
                pending = b""
    chunk(b"IDAT", pending + z.flush())
    chunk(b"IEND", b"")


def _write_png_blocks(img: DecodedImage, f: BinaryIO, rows: int, release: Callable[[], None] | None) -> None:
    """A PNG (8 or 16 bits, as ``img.bit_depth``; gray or RGB, alpha kept) written ``rows`` rows at a time."""
    height, width = img.rgb.shape[:2]
    n = (1 if img.grayscale else 3) + (img.alpha is not None)
    depth = 16 if img.bit_depth == 16 else 8
    if depth == 8:
        _write_png8(f, _blocks(img, img.alpha is not None, 8, rows, release), width, height, n, img.icc_profile)
        return

    def lines() -> Iterator[np.ndarray]:
        for block in _blocks(img, img.alpha is not None, depth, rows, release):
            yield from block.reshape(block.shape[0], width * n)  # (r, W, C) -> r rows of W * C samples

    _pypng(f, lines(), width, height, n, depth, img.icc_profile)


# Tile side of TIFFs written a block of rows at a time.
STREAM_TIFF_TILE = 256


def _write_tiff_blocks(img: DecodedImage, f: BinaryIO, release: Callable[[], None] | None) -> None:
    """A tiled TIFF (8 or 16 bits, as ``img.bit_depth``; alpha kept as unassociated alpha) with tifffile,
    Deflate-compressed, written a row of tiles at a time."""
    import tifffile

    height, width = img.rgb.shape[:2]
    n = (1 if img.grayscale else 3) + (img.alpha is not None)
    depth = 16 if img.bit_depth == 16 else 8
    side = STREAM_TIFF_TILE

    def tiles() -> Iterator[np.ndarray]:
        for block in _blocks(img, img.alpha is not None, depth, side, release):
            for x0 in range(0, width, side):
                tile = block[:, x0:x0 + side]  # (r, c, C); tifffile pads tiles at the border
                yield tile[..., 0] if n == 1 else tile

    tifffile.imwrite(f, tiles(), shape=(height, width) if n == 1 else (height, width, n),
                     dtype=np.uint16 if depth == 16 else np.uint8, tile=(side, side), **_tiff_layout(n, img))


def _tiff_layout(n: int, img: DecodedImage) -> dict[str, Any]:
    """tifffile options for ``n`` samples per pixel (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA): unassociated alpha,
    Deflate, ``img``'s ICC profile."""
    return dict(photometric="minisblack" if n <= 2 else "rgb", planarconfig=None if n == 1 else "contig",
                extrasamples=["unassalpha"] if n in (2, 4) else None, compression="zlib",
                iccprofile=img.icc_profile or None)


def _write_tiff16(img: DecodedImage, f: BinaryIO) -> None:
    """A 16-bit TIFF (gray or RGB, alpha kept as unassociated alpha) with tifffile, Deflate-compressed."""
    import tifffile

    planes = _quantize(_planes(img, keep_alpha=True), 16)  # (H, W, C), C = 1 gray, 2 gray+alpha, 3 or 4
    n = planes.shape[2]
    tifffile.imwrite(f, planes[..., 0] if n == 1 else planes, **_tiff_layout(n, img))


def _encode(img: DecodedImage, fmt: str, f: BinaryIO, rows: int | None = None,
            release: Callable[[], None] | None = None) -> list[str]:
    """Write ``img`` to ``f`` in Pillow format ``fmt``; returns notes on what the format could not hold.
    With ``rows``, PNG and TIFF are encoded that many rows at a time (see :func:`write_image`)."""
    spec = FORMATS[fmt]
    notes: list[str] = []
    has_alpha = img.alpha is not None
    if has_alpha and not spec.alpha:
        notes.append(f"{fmt} cannot hold an alpha channel; alpha dropped")
    if rows is not None and fmt == "PNG":
        _write_png_blocks(img, f, rows, release)
        return notes
    if rows is not None and fmt == "TIFF":
        _write_tiff_blocks(img, f, release)
        return notes
    if img.bit_depth == 16:
        if fmt == "PNG" and (not img.grayscale or has_alpha):  # pypng: Pillow cannot write these
            _write_png_blocks(img, f, img.rgb.shape[0], None)
            return notes
        if fmt == "TIFF":
            _write_tiff16(img, f)
            return notes
        fits = spec.gray16 if (img.grayscale and not (has_alpha and spec.alpha)) else spec.color16
        if not fits:
            notes.append(f"{fmt} cannot hold this 16-bit image here; written with 8 bits")
            img = replace(img, bit_depth=8)
    im = to_pil(img, allow_alpha=spec.alpha)
    options = dict(spec.options)
    if img.icc_profile:
        options["icc_profile"] = img.icc_profile
    im.save(f, format=fmt, **options)
    return notes


def write_image(
    img: DecodedImage,
    path: str | os.PathLike[str],
    fmt: str = "PNG",
    overwrite: bool = False,
    rows: int | None = None,
    release: Callable[[], None] | None = None,
) -> list[str]:
    """Write ``img`` to ``path`` atomically, in Pillow format ``fmt`` (PNG, JPEG, WEBP, BMP, TIFF).

    The data goes to a temporary file in the same folder which is then renamed to ``path``, so an
    interrupted write leaves no partial image. Without ``overwrite`` an existing ``path`` raises
    :class:`FileExistsError`. Returns notes about what the format could not hold.

    ``rows`` (for pixels too large to copy whole, such as a :class:`ribsr.diskarray.DiskArray`): PNG and
    TIFF are converted and encoded that many rows at a time, calling ``release`` after each block; 8-bit
    PNG then goes through :func:`_write_png8` (16-bit through pypng, as always), TIFF is tiled (256x256)
    and Deflate-compressed at 8 bits too.
    The pixels are the same as without ``rows``. JPEG, WebP and BMP are converted whole either way.
    """
    path = Path(path)
    fmt = fmt.upper()
    if fmt not in FORMATS:
        raise ValueError(f"unsupported output format {fmt!r}; choose one of {sorted(FORMATS)}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use overwrite to replace it)")
    # The temporary file is opened by name ("x": never someone else's) so that writers which want the file's
    # name (tifffile) get it.
    with atomic_write(path, overwrite=overwrite) as tmp, open(tmp, "xb") as f:
        notes = _encode(img, fmt, f) if rows is None else _encode(img, fmt, f, rows, release)
        f.flush()
        os.fsync(f.fileno())
    return notes
