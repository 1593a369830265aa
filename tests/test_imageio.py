"""Reading and writing images as people have them (synthetic files made in tmp_path)."""

from __future__ import annotations

import os

import numpy as np
import png
import pytest
from PIL import Image, ImageFile, ImageOps

from ribsr import imageio
from ribsr.imageio import (
    DecodedImage,
    ImageReadError,
    apply_orientation,
    from_pil,
    read_image,
    write_image,
)

RNG = np.random.default_rng(0)


def write_png16(path, arr: np.ndarray) -> None:
    """A 16-bit PNG written with pypng directly (gray, gray+alpha, RGB or RGBA by channel count)."""
    h, w, c = arr.shape
    writer = png.Writer(w, h, bitdepth=16, greyscale=c <= 2, alpha=c in (2, 4))
    with open(path, "wb") as f:
        writer.write(f, arr.reshape(h, w * c))


def read_png16(path) -> tuple[np.ndarray, dict]:
    w, h, rows, info = png.Reader(filename=str(path)).asDirect()
    data = np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, info["planes"])
    return data, info


# ---------------------------------------------------------------------- reading
def test_16bit_rgba_png_is_read_at_full_precision(tmp_path):
    arr = RNG.integers(0, 65536, (9, 13, 4)).astype(np.uint16)
    write_png16(tmp_path / "a.png", arr)
    img = read_image(tmp_path / "a.png")
    assert img.bit_depth == 16 and not img.grayscale and img.format == "PNG"
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (9, 13, 3)
    np.testing.assert_array_equal(np.rint(img.rgb * 65535).astype(np.uint16), arr[..., :3])
    np.testing.assert_array_equal(np.rint(img.alpha * 65535).astype(np.uint16), arr[..., 3])


def test_16bit_gray_and_gray_alpha_png(tmp_path):
    gray = RNG.integers(0, 65536, (7, 5, 1)).astype(np.uint16)
    write_png16(tmp_path / "g.png", gray)
    img = read_image(tmp_path / "g.png")
    assert img.grayscale and img.bit_depth == 16 and img.alpha is None
    np.testing.assert_array_equal(np.rint(img.rgb * 65535).astype(np.uint16), np.repeat(gray, 3, axis=2))
    ga = RNG.integers(0, 65536, (7, 5, 2)).astype(np.uint16)
    write_png16(tmp_path / "ga.png", ga)
    img = read_image(tmp_path / "ga.png")
    assert img.grayscale and img.bit_depth == 16
    np.testing.assert_array_equal(np.rint(img.alpha * 65535).astype(np.uint16), ga[..., 1])


def test_8bit_modes(tmp_path):
    rgb = RNG.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    img = read_image(tmp_path / "l.png")
    assert img.grayscale and img.bit_depth == 8 and img.mode == "L"
    np.testing.assert_allclose(img.rgb[..., 2] * 255, rgb[..., 0], atol=1e-4)
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    img = read_image(tmp_path / "rgba.png")
    assert not img.grayscale and img.alpha is not None and img.notes == []
    np.testing.assert_allclose(img.alpha * 255, rgb[..., 0], atol=1e-4)


def test_palette_images_are_converted_with_a_note(tmp_path):
    rgb = RNG.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.alpha is None and any("palette" in n for n in img.notes)
    pal = Image.fromarray(rgb).convert("P")
    index = np.asarray(pal)[0, 0]
    pal.save(tmp_path / "pt.png", transparency=int(index))  # one palette entry is transparent
    img = read_image(tmp_path / "pt.png")
    assert img.alpha is not None and img.alpha[0, 0] == 0 and img.alpha.max() == 1
    np.testing.assert_array_equal(img.alpha == 0, np.asarray(pal) == index)
    assert any("palette" in n and "RGBA" in n for n in img.notes)


def test_cmyk_jpeg_is_converted_with_a_note(tmp_path):
    Image.new("CMYK", (10, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    img = read_image(tmp_path / "c.jpg")
    assert img.format == "JPEG" and img.mode == "CMYK" and any("CMYK" in n for n in img.notes)
    np.testing.assert_allclose(img.rgb.mean(axis=(0, 1)), [1, 0, 0], atol=0.03)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(orientation):
    im = Image.fromarray(RNG.integers(0, 256, (5, 7, 3)).astype(np.uint8))
    im.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(im)).astype(np.float32) / 255
    got = apply_orientation(from_pil(im), orientation)
    np.testing.assert_allclose(got.rgb, expected, atol=1e-6)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "r.jpg")
    assert img.size == (20, 40)  # width, height swapped
    assert img.rgb[:20].mean() > 0.95 and img.rgb[20:].mean() < 0.05  # white is now on top


@pytest.mark.parametrize(
    "fmt,suffix", [("WEBP", ".webp"), ("BMP", ".bmp"), ("TIFF", ".tif"), ("JPEG", ".jpeg")]
)
def test_other_formats_are_read(tmp_path, fmt, suffix):
    rgb = np.full((6, 9, 3), (200, 100, 50), np.uint8)
    Image.fromarray(rgb).save(tmp_path / f"x{suffix}", format=fmt)
    img = read_image(tmp_path / f"x{suffix}")
    assert img.format == fmt and img.size == (9, 6)
    np.testing.assert_allclose(img.rgb * 255, rgb, atol=3)  # lossy formats: within 3 levels


def test_truncated_png_is_reported_by_name(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_truncated_16bit_png_is_reported_by_name(tmp_path):
    write_png16(tmp_path / "ok16.png", RNG.integers(0, 65536, (32, 32, 3)).astype(np.uint16))
    data = (tmp_path / "ok16.png").read_bytes()
    (tmp_path / "cut16.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut16.png"):
        read_image(tmp_path / "cut16.png")


def test_unreadable_files_are_reported_by_name(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.png: not a recognised image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ImageReadError, match="missing.png: no such file"):
        read_image(tmp_path / "missing.png")


# ---------------------------------------------------------------------- writing
def test_16bit_rgba_round_trip_is_exact(tmp_path):
    arr = RNG.integers(0, 65536, (9, 13, 4)).astype(np.uint16)
    write_png16(tmp_path / "in.png", arr)
    write_image(read_image(tmp_path / "in.png"), tmp_path / "out.png")
    back, info = read_png16(tmp_path / "out.png")
    assert info["bitdepth"] == 16 and info["alpha"] and not info["greyscale"]
    np.testing.assert_array_equal(back, arr)


def test_16bit_gray_is_written_as_16bit_gray(tmp_path):
    arr = RNG.integers(0, 65536, (9, 13, 1)).astype(np.uint16)
    write_png16(tmp_path / "in.png", arr)
    write_image(read_image(tmp_path / "in.png"), tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im), arr[..., 0])


def test_grayscale_and_alpha_are_written_back(tmp_path):
    rgb = np.random.default_rng(1).random((5, 6, 3), dtype=np.float32)
    alpha = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    write_image(DecodedImage(rgb=rgb, alpha=alpha, grayscale=True), tmp_path / "la.png")
    with Image.open(tmp_path / "la.png") as im:
        assert im.mode == "LA"
        got = np.asarray(im)
    np.testing.assert_array_equal(got[..., 0], np.rint(rgb.mean(axis=2) * 255).astype(np.uint8))
    np.testing.assert_array_equal(got[..., 1], np.rint(alpha * 255).astype(np.uint8))


def test_icc_profile_is_kept(tmp_path):
    profile = b"\x00\x00\x01\x00fake-icc-profile" * 4
    img = DecodedImage(rgb=np.zeros((4, 4, 3), np.float32), icc_profile=profile, bit_depth=16)
    for name, depth in (("a.png", 16), ("b.png", 8)):
        img.bit_depth = depth
        write_image(img, tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert im.info.get("icc_profile") == profile


def test_existing_output_is_not_overwritten(tmp_path):
    dest = tmp_path / "o.png"
    dest.write_bytes(b"keep me")
    img = DecodedImage(rgb=np.zeros((4, 4, 3), np.float32))
    with pytest.raises(FileExistsError, match="o.png"):
        write_image(img, dest)
    assert dest.read_bytes() == b"keep me"
    write_image(img, dest, overwrite=True)
    with Image.open(dest) as im:
        assert im.size == (4, 4)
    assert os.listdir(tmp_path) == ["o.png"]  # no temporary file left behind


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def fail(img, fmt, f):
        f.write(b"\x89PNG half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(imageio, "_encode", fail)
    with pytest.raises(KeyboardInterrupt):
        write_image(DecodedImage(rgb=np.zeros((4, 4, 3), np.float32)), tmp_path / "sub" / "o.png")
    assert os.listdir(tmp_path / "sub") == []


def test_formats_that_cannot_hold_alpha_or_16_bits_say_so(tmp_path):
    img = DecodedImage(rgb=np.zeros((4, 4, 3), np.float32), alpha=np.ones((4, 4), np.float32), bit_depth=16)
    notes = write_image(img, tmp_path / "o.jpg", "JPEG")
    assert any("alpha" in n for n in notes) and any("16-bit" in n for n in notes)
    with Image.open(tmp_path / "o.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB"
    with pytest.raises(ValueError, match="GIF"):
        write_image(img, tmp_path / "o.gif", "GIF")


def test_read_array_gives_the_8bit_pixels_metrics_are_computed_on(tmp_path):
    rng = np.random.default_rng(7)
    rgba16 = rng.integers(0, 65536, (5, 6, 4)).astype(np.uint16)
    with open(tmp_path / "deep.png", "wb") as f:
        png.Writer(6, 5, bitdepth=16, greyscale=False, alpha=True).write(f, rgba16.reshape(5, -1))
    out = imageio.read_array(tmp_path / "deep.png")  # alpha dropped, 16 bits rounded to 8
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.rint(rgba16[..., :3] / 65535 * 255).astype(np.uint8))
    gray_alpha = rng.integers(0, 256, (5, 6, 2)).astype(np.uint8)
    Image.fromarray(gray_alpha, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(imageio.read_array(tmp_path / "la.png"), gray_alpha[..., 0])  # stays (H, W)


# ---------------------------------------------------------------------- 16-bit TIFF
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_tiff_keeps_16_bits_in_and_out(tmp_path, channels):
    tifffile = pytest.importorskip("tifffile")
    arr = RNG.integers(0, 65536, (9, 13, channels)).astype(np.uint16)
    profile = b"\x00\x00\x01\x00fake-icc-profile" * 4
    tifffile.imwrite(tmp_path / "in.tif", arr[..., 0] if channels == 1 else arr,
                     photometric="minisblack" if channels <= 2 else "rgb",
                     extrasamples=["unassalpha"] if channels in (2, 4) else None, iccprofile=profile)
    img = read_image(tmp_path / "in.tif")
    assert img.bit_depth == 16 and img.grayscale == (channels <= 2) and img.format == "TIFF"
    assert (img.alpha is not None) == (channels in (2, 4)) and img.icc_profile == profile
    color = np.rint(img.rgb * 65535).astype(np.uint16)
    np.testing.assert_array_equal(color[..., :1] if channels <= 2 else color, arr[..., :1 if channels <= 2 else 3])
    assert write_image(img, tmp_path / "out.tif", "TIFF") == []  # no note: nothing was lost
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        back = tif.pages[0].asarray()
        assert tif.pages[0].tags[34675].value == profile
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, arr[..., 0] if channels == 1 else arr)


def test_premultiplied_16bit_tiff_alpha_is_divided_out(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rgba = np.zeros((2, 3, 4), np.uint16)
    rgba[..., 3] = 32768  # half transparent
    rgba[..., 0] = 16384  # premultiplied red: 0.25 / 0.5 = 0.5
    tifffile.imwrite(tmp_path / "p.tif", rgba, photometric="rgb", extrasamples=["assocalpha"])
    img = read_image(tmp_path / "p.tif")
    np.testing.assert_allclose(img.rgb[..., 0], 16384 / 32768, atol=1e-6)
    np.testing.assert_allclose(img.alpha, 32768 / 65535, atol=1e-6)


def test_16bit_tiff_compressions_tifffile_cannot_decode_alone(tmp_path, monkeypatch):
    tifffile = pytest.importorskip("tifffile")
    gray = RNG.integers(0, 65536, (6, 7)).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # LZW: imagecodecs in tifffile
    img = read_image(tmp_path / "lzw.tif")  # Pillow reads 16-bit gray at 16 bits
    assert img.bit_depth == 16 and img.notes == []
    np.testing.assert_array_equal(np.rint(img.rgb[..., 0] * 65535).astype(np.uint16), gray)
    rgb = RNG.integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb", compression="zlib")

    def no_codec(self, key):
        raise KeyError(f"{key} requires the 'imagecodecs' package")

    monkeypatch.setattr(type(tifffile.TIFF.DECOMPRESSORS), "__getitem__", no_codec)  # as without imagecodecs
    img = read_image(tmp_path / "rgb.tif")  # Pillow: 8 bits, and says so
    assert img.bit_depth == 8 and any("8 bits" in n and "imagecodecs" in n for n in img.notes)


def test_lzw_16bit_rgba_tiff_keeps_16_bits_with_imagecodecs(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("imagecodecs")
    rgba = RNG.integers(0, 65536, (6, 7, 4)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "lzw.tif", rgba, photometric="rgb", extrasamples=["unassalpha"],
                     compression="lzw", predictor=True)  # as image editors write them
    img = read_image(tmp_path / "lzw.tif")
    assert img.bit_depth == 16 and img.notes == []
    np.testing.assert_array_equal(np.rint(img.rgb * 65535).astype(np.uint16), rgba[..., :3])
    np.testing.assert_array_equal(np.rint(img.alpha * 65535).astype(np.uint16), rgba[..., 3])


def test_8bit_tiff_still_goes_through_pillow(tmp_path):
    rgb = RNG.integers(0, 256, (5, 6, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "e.tif")
    img = read_image(tmp_path / "e.tif")
    assert img.bit_depth == 8 and img.mode == "RGB"
    write_image(img, tmp_path / "o.tif", "TIFF")
    with Image.open(tmp_path / "o.tif") as im:
        assert im.mode == "RGB" and im.info.get("compression") == "tiff_lzw"
        np.testing.assert_array_equal(np.asarray(im), rgb)


# ---------------------------------------------------------------------- size limit and frames
def test_declared_size_is_checked_before_decoding(tmp_path, monkeypatch):
    Image.new("1", (12000, 12000)).save(tmp_path / "huge.png")  # 144 megapixels in ~18 KB
    assert (tmp_path / "huge.png").stat().st_size < 100_000

    def no_decoding(self):
        raise AssertionError("decoded although too large")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(imageio.ImageTooLargeError, match=r"huge.png: 12000x12000 .*144,000,000 pixels") as err:
        read_image(tmp_path / "huge.png", max_pixels=10**6)
    assert err.value.size == (12000, 12000)
    assert isinstance(err.value, ImageReadError)


def test_16bit_files_are_size_checked_too(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((30, 40, 3), np.uint16), photometric="rgb")
    write_png16(tmp_path / "p.png", np.zeros((30, 40, 3), np.uint16))
    for name in ("t.tif", "p.png"):
        with pytest.raises(imageio.ImageTooLargeError, match=f"{name}: 40x30"):
            read_image(tmp_path / name, max_pixels=1199)
        assert read_image(tmp_path / name, max_pixels=1200).size == (40, 30)


def test_pillow_decompression_bomb_is_an_image_read_error(tmp_path, monkeypatch):
    Image.new("RGB", (20, 20)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # errors above twice this
    with pytest.raises(ImageReadError, match="bomb.png: refused without decoding"):
        read_image(tmp_path / "bomb.png")
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "bomb.tif", np.zeros((20, 20, 3), np.uint16), photometric="rgb")  # tifffile's path
    with pytest.raises(ImageReadError, match="bomb.tif: refused without decoding: 20x20"):
        read_image(tmp_path / "bomb.tif")


@pytest.mark.parametrize("fmt,options", [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})])
def test_animated_images_say_only_the_first_frame_is_used(tmp_path, fmt, options):
    frames = [Image.new("RGB", (6, 4), (80 * i, 255 - 80 * i, 0)) for i in range(3)]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=[100, 200, 300],
                   loop=0, **options)
    img = read_image(path)
    assert img.frames == 3
    assert any("3 frames" in n and "only the first frame" in n for n in img.notes)
    np.testing.assert_allclose(img.rgb[0, 0], [0, 1, 0], atol=2 / 255)  # the first frame's colour
    Image.new("RGB", (6, 4)).save(tmp_path / "still.gif")
    still = read_image(tmp_path / "still.gif")
    assert still.frames == 1 and not any("frame" in n for n in still.notes)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_written_in_blocks_of_rows_decodes_exactly_with_pillow_and_pypng(tmp_path, channels):
    from ribsr.imageio import _png_filtered

    rng = np.random.default_rng(8)
    ramp = np.linspace(0, 255, 70)[None, :, None] + np.linspace(0, 60, 45)[:, None, None]  # smooth part
    arr = np.clip(ramp + rng.integers(-3, 4, (45, 70, channels)) * (np.arange(45) % 3 == 0)[:, None, None], 0, 255)
    arr = arr.astype(np.uint8)  # smooth and noisy rows: several filter types get chosen
    arr[:, :9] = rng.integers(0, 256, (45, 9, channels))
    gray, alpha = channels <= 2, channels in (2, 4)
    data = arr.astype(np.float32) / 255
    img = DecodedImage(rgb=np.repeat(data[..., :1], 3, axis=2) if gray else data[..., :3].copy(),
                       alpha=data[..., -1].copy() if alpha else None, grayscale=gray, icc_profile=b"profile")
    released = []
    write_image(img, tmp_path / "o.png", rows=7, release=lambda: released.append(1))
    assert len(released) == 7  # 45 rows in blocks of 7
    w, h, rows, info = png.Reader(filename=str(tmp_path / "o.png")).asDirect()  # checks every chunk's CRC
    got = np.vstack([np.asarray(r, np.uint8) for r in rows]).reshape(h, w, channels)
    np.testing.assert_array_equal(got, arr)
    with Image.open(tmp_path / "o.png") as im:
        assert im.info["icc_profile"] == b"profile"
        np.testing.assert_array_equal(np.asarray(im).reshape(h, w, channels), arr)
    lines = arr.reshape(45, 70 * channels)
    assert len(set(_png_filtered(lines, np.zeros(70 * channels, np.uint8), channels)[:, 0].tolist())) >= 3


# ---------------------------------------------------------------------- float, int16 and many-sample TIFFs
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_floating_point_tiff_is_read_as_it_is(tmp_path, dtype, channels):
    tifffile = pytest.importorskip("tifffile")
    arr = RNG.random((5, 6, channels)).astype(dtype)
    arr[0, 0] = 1.004  # overshoot within the tolerance: clipped
    tifffile.imwrite(tmp_path / "f.tif", arr[..., 0] if channels == 1 else arr,
                     photometric="minisblack" if channels == 1 else "rgb",
                     extrasamples=["unassalpha"] if channels == 4 else None)
    img = read_image(tmp_path / "f.tif")  # was "not a recognised image file" (RGB) or "unsupported mode 'F'"
    bits = np.dtype(dtype).itemsize * 8
    assert img.grayscale == (channels == 1) and img.mode.endswith(f";F{bits}") and img.bit_depth == 16
    assert f"{bits}-bit floating-point TIFF; written back with 16 bits" in img.notes
    expected = np.clip(arr.astype(np.float32), 0, 1)
    np.testing.assert_array_equal(img.rgb, expected[..., :1].repeat(3, 2) if channels == 1 else expected[..., :3])
    if channels == 4:
        np.testing.assert_array_equal(img.alpha, expected[..., 3])
    write_image(img, tmp_path / "out.tif", "TIFF")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.pages[0].dtype == np.uint16


@pytest.mark.parametrize("values,message", [
    (lambda a: a * 255, r"floating-point samples range over \[\d+\.\d+, 2\d\d\.\d+\]; expected \[0, 1\] \(8-bit data"),
    (lambda a: a - 0.5, r"range over \[-0\.\d+, 0\.\d+\]"),
    (lambda a: np.where(a > 0.9, np.nan, a), "floating-point samples are NaN or infinite"),
])
def test_floating_point_tiff_outside_0_1_is_refused(tmp_path, values, message):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "f.tif", values(RNG.random((8, 9, 3))).astype(np.float32), photometric="rgb")
    with pytest.raises(ImageReadError, match=r"f\.tif: .*" + message):
        read_image(tmp_path / "f.tif")


def test_int16_tiff_is_read_as_16_bit_not_called_32_bit(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    gray = RNG.integers(0, 30000, (6, 7)).astype(np.int16)
    tifffile.imwrite(tmp_path / "s.tif", gray)
    img = read_image(tmp_path / "s.tif")
    assert img.bit_depth == 16 and img.grayscale and img.mode == "L;16"
    assert "16-bit signed integer (int16) TIFF read as unsigned 16-bit (no sample is negative)" in img.notes
    np.testing.assert_array_equal(np.rint(img.rgb[..., 0] * 65535).astype(np.int64), gray)
    gray[2, 3] = -7
    tifffile.imwrite(tmp_path / "neg.tif", gray)
    with pytest.raises(ImageReadError) as info:  # was "32-bit integer image with values outside 0..65535"
        read_image(tmp_path / "neg.tif")
    assert "16-bit signed integer samples (int16) with negative values (down to -7)" in str(info.value)
    assert "32-bit" not in str(info.value)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_a_tiff_with_more_samples_than_rgba_is_refused(tmp_path, dtype, monkeypatch):
    """5 samples per pixel (RGB, alpha and one more): Pillow and the 16-bit reader dropped the fifth."""
    tifffile = pytest.importorskip("tifffile")
    arr = (RNG.random((4, 5, 5)) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    tifffile.imwrite(tmp_path / "c5.tif", arr, photometric="rgb", planarconfig="contig",
                     extrasamples=["unassalpha", "unspecified"])
    tifffile.imwrite(tmp_path / "g3.tif", arr[..., :3], photometric="minisblack", planarconfig="contig",
                     extrasamples=["unassalpha", "unspecified"])

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although refused")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_decoding)
    with pytest.raises(ImageReadError, match=r"c5\.tif: 5 samples \(channels\) per pixel, RGB and 2 more: only "
                                             "gray, gray \\+ alpha, RGB and RGBA images are read"):
        read_image(tmp_path / "c5.tif")
    with pytest.raises(ImageReadError, match=r"g3\.tif: 3 samples \(channels\) per pixel, gray and 2 more"):
        read_image(tmp_path / "g3.tif")


@pytest.mark.parametrize("dtype,what", [(np.float32, "32-bit floating-point"), (np.int16, "16-bit signed integer")])
def test_float_or_int16_tiff_tifffile_cannot_decompress_names_imagecodecs(tmp_path, monkeypatch, dtype, what):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "z.tif", (RNG.random((6, 7)) * 100).astype(dtype), compression="zlib")

    def no_codec(self, key):
        raise KeyError(f"{key} requires the 'imagecodecs' package")

    monkeypatch.setattr(type(tifffile.TIFF.DECOMPRESSORS), "__getitem__", no_codec)  # as without imagecodecs
    with pytest.raises(ImageReadError, match=rf"z\.tif: a {what}.* TIFF compressed with ADOBE_DEFLATE, .*only with "
                                             r"the imagecodecs package \(pip install imagecodecs\)"):
        read_image(tmp_path / "z.tif")


# ---------------------------------------------------------------------- read_rgb8 and bytes
def _rgb8_sources(tmp_path):
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., 0]).convert("LA").save(tmp_path / "la.png")
    Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.gif",
                                                                                      transparency=0)
    Image.fromarray(rgba[..., :3]).convert("CMYK").save(tmp_path / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(rgba[..., :3]).save(tmp_path / "turned.jpg", exif=exif)
    rows = rng.integers(0, 65536, (3, 4 * 3), dtype=np.uint16)
    with open(tmp_path / "deep.png", "wb") as f:
        png.Writer(4, 3, greyscale=False, bitdepth=16).write(f, rows.tolist())
    import tifffile

    tifffile.imwrite(tmp_path / "deep.tif", rng.integers(0, 65536, (3, 4), dtype=np.uint16))
    return sorted(tmp_path.iterdir())


def test_read_rgb8_gives_read_images_pixels_from_files_and_bytes(tmp_path):
    for path in _rgb8_sources(tmp_path):
        img = read_image(path)
        expected = imageio.to_array(img, np.uint8, 3)
        for source in (path, path.read_bytes()):
            rgb, gray = imageio.read_rgb8(source, name=str(path))
            assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous, path.name
            np.testing.assert_array_equal(rgb, expected, err_msg=path.name)
            assert gray == img.grayscale, path.name
        assert read_image(path.read_bytes()).size == img.size


def test_unreadable_bytes_name_their_source():
    with pytest.raises(ImageReadError, match=r"^db\.lmdb/0001: not a recognised image file"):
        imageio.read_rgb8(b"not an image", name="db.lmdb/0001")
    with pytest.raises(ImageReadError, match=r"^<image bytes>: "):
        read_image(b"\x89PNG\r\n\x1a\n truncated")
