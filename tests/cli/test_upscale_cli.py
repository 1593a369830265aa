"""``ribsr upscale`` end to end, through the real loader on a tiny checkpoint (``tiny_checkpoint``)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import png
import pytest
from PIL import Image

from ribsr.cli import main
from ribsr.jobs import Job, discover, output_path

# The stand-in networks are tiny: one thread is faster, and far faster on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model(tiny_checkpoint) -> str:
    """``--model`` for a real x2 checkpoint (one SST block, windows 4 and 8, random weights)."""
    return str(tiny_checkpoint)


def make_png(path: Path, size=(20, 14), mode="RGB", seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    arr = rng.integers(0, 256, shape).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_set14_folder(datasets_dir, tmp_path, model, capsys):
    hr = datasets_dir / "Set14" / "LR_bicubic" / "X4"  # the small inputs: ~110x90
    names = sorted(p.name for p in hr.glob("*.png"))
    assert len(names) == 14
    rc = main(["upscale", str(hr), "-o", str(tmp_path / "out"), "--model", model])
    assert rc == 0
    assert files_under(tmp_path / "out") == sorted(n.replace(".png", "_x2.png") for n in names)
    for name in names:
        dest = tmp_path / "out" / name.replace(".png", "_x2.png")
        with Image.open(hr / name) as src, Image.open(dest) as out:
            assert out.size == (2 * src.size[0], 2 * src.size[1])
            assert out.mode == ("L" if name.startswith("bridge") else "RGB")
    summary = capsys.readouterr().out
    assert "14 images upscaled x2" in summary and "MP/s" in summary and "0 failed" in summary


def test_16bit_png_with_alpha(tmp_path, model):
    imresize = pytest.importorskip("ribsr.imresize").imresize
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 65536, (14, 18, 4)).astype(np.uint16)
    with open(tmp_path / "deep.png", "wb") as f:
        png.Writer(18, 14, bitdepth=16, greyscale=False, alpha=True).write(f, arr.reshape(14, -1))
    assert main(["upscale", str(tmp_path / "deep.png"), "-o", str(tmp_path / "out"), "--model", model]) == 0
    w, h, rows, info = png.Reader(filename=str(tmp_path / "out" / "deep_x2.png")).asDirect()
    out = np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, 4)
    assert (w, h) == (36, 28) and info["bitdepth"] == 16 and info["alpha"]
    expected = np.clip(imresize(arr[..., 3].astype(np.float32) / 65535, 2), 0, 1)
    np.testing.assert_allclose(out[..., 3] / 65535, expected, atol=1 / 65535)  # alpha: bicubic imresize
    assert len(np.unique(out[..., :3])) > 1000  # colour went through the network at 16 bits


def test_truncated_png_is_reported_and_the_others_are_written(tmp_path, model, capsys):
    make_png(tmp_path / "in" / "a.png")
    make_png(tmp_path / "in" / "c.png", seed=2)
    data = (tmp_path / "in" / "a.png").read_bytes()
    (tmp_path / "in" / "b.png").write_bytes(data[: len(data) // 2])
    rc = main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", model])
    assert rc == 1
    err = capsys.readouterr().err
    assert "b.png" in err and "error" in err
    assert files_under(tmp_path / "out") == ["a_x2.png", "c_x2.png"]  # and no temporary files


def test_existing_outputs_are_kept_without_overwrite(tmp_path, model, capsys):
    make_png(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a_x2.png").write_bytes(b"old")
    args = ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", model]
    assert main(args) == 0
    assert (tmp_path / "out" / "a_x2.png").read_bytes() == b"old"
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    with Image.open(tmp_path / "out" / "a_x2.png") as im:
        assert im.size == (40, 28)


def test_recursive_walk_keeps_structure_inside_the_output_folder(tmp_path, model):
    root = tmp_path / "photos"
    make_png(root / "a.png")
    make_png(root / "trip" / "day1" / "b.png", mode="L")
    make_png(root / ".hidden" / "c.png")
    (root / "notes.txt").write_text("not an image")
    out = root / "results"  # the output folder lies inside the input folder
    make_png(out / "old_x2.png")  # an earlier result: must not be upscaled again
    rc = main(["upscale", str(root), "-o", str(out), "--model", model, "--recursive"])
    assert rc == 0
    assert files_under(out) == ["a_x2.png", "old_x2.png", "trip/day1/b_x2.png"]
    # without --recursive only the top folder
    rc = main(["upscale", str(root), "-o", str(tmp_path / "flat"), "--model", model])
    assert rc == 0 and files_under(tmp_path / "flat") == ["a_x2.png"]


def test_outputs_never_leave_the_output_folder(tmp_path, model, monkeypatch):
    make_png(tmp_path / "deep" / "x" / "a.png")
    monkeypatch.chdir(tmp_path / "deep" / "x")
    # inputs given with .. or absolute paths are written by name into the output folder
    rc = main(["upscale", "../x/a.png", str(tmp_path / "deep" / "x" / "a.png"), "-o", "o", "--model", model])
    assert rc == 0
    assert files_under(tmp_path) == ["deep/x/a.png", "deep/x/o/a_x2.png"]
    job = Job(tmp_path / "a.png", Path("../../evil"))
    with pytest.raises(ValueError, match="leave the output folder"):
        output_path(job, tmp_path / "o", "_x2", "png")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "link").symlink_to(tmp_path / "deep")  # a folder inside that points outside
    job = Job(tmp_path / "a.png", Path("link/a"))
    with pytest.raises(ValueError, match="outside"):
        output_path(job, tmp_path / "o", "", "png")


def test_globs_formats_suffix_and_missing_inputs(tmp_path, model, capsys):
    make_png(tmp_path / "a.png")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "b.jpeg", quality=90)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "c.webp")
    rc = main(["upscale", str(tmp_path / "*.jp*g"), str(tmp_path / "c.webp"), str(tmp_path / "nope*.png"),
               "-o", str(tmp_path / "out"), "--model", model, "--format", "same", "--suffix=-big"])
    assert rc == 1  # the glob that matches nothing is an error
    assert "nope*.png" in capsys.readouterr().err
    assert files_under(tmp_path / "out") == ["b-big.jpeg", "c-big.webp"]
    with Image.open(tmp_path / "out" / "b-big.jpeg") as im:
        assert im.format == "JPEG" and im.size == (24, 20)


def test_colliding_output_names_are_reported(tmp_path, model, capsys):
    make_png(tmp_path / "a.png")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "a.bmp")
    rc = main(["upscale", str(tmp_path / "a.bmp"), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"),
               "--model", model])
    assert rc == 1
    assert "already the output of" in capsys.readouterr().err
    with Image.open(tmp_path / "out" / "a_x2.png") as im:
        assert im.size == (24, 20)  # the first input, a.bmp, won


def test_input_is_never_replaced(tmp_path, model, capsys):
    make_png(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    rc = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path), "--suffix=", "--model", model, "--overwrite"])
    assert rc == 1 and "replace the input" in capsys.readouterr().err
    assert (tmp_path / "a.png").read_bytes() == before


def test_no_images_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    # the model is not even loaded (a missing one would exit with status 2)
    assert main(["upscale", str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--model", "missing.pth"]) == 1
    assert "no images" in capsys.readouterr().err


def test_scale_mismatch_is_an_error(tmp_path, model, capsys):
    """An x2 checkpoint with --scale 4 is refused, not silently resized to x4."""
    make_png(tmp_path / "a.png")
    rc = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", model, "--scale", "4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "tiny_x2.safetensors holds x2 weights" in err and "x4" in err and "--resize-upsampler" in err
    assert not (tmp_path / "o").exists()
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", model,
                 "--scale", "2"]) == 0


@pytest.fixture
def paper_checkpoint(tmp_path, tiny_checkpoint) -> tuple[str, str]:
    """The x2 weights of ``tiny_checkpoint`` as the paper's .pth, with its option YAML (network_g, x2)."""
    import torch
    import yaml

    from ribsr.checkpoint import read_checkpoint

    state, cfg = read_checkpoint(tiny_checkpoint)
    pth, yml = tmp_path / "paper_x2.pth", tmp_path / "paper_x2.yml"
    torch.save({"params_ema": state}, pth)
    yml.write_text(yaml.safe_dump({"scale": 2, "network_g": cfg.to_network_g()}))
    return str(pth), str(yml)


def test_scale_mismatch_with_a_paper_checkpoint_is_an_error(tmp_path, paper_checkpoint, capsys):
    """--scale 3 with the paper's x2 .pth and --config was silently resized; now refused unless asked for."""
    pth, yml = paper_checkpoint
    make_png(tmp_path / "a.png")
    args = ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", pth, "--config", yml]
    assert main([*args, "--scale", "3"]) == 2
    err = capsys.readouterr().err
    assert "paper_x2.pth holds x2 weights" in err and "x3" in err and "--resize-upsampler" in err
    assert not (tmp_path / "o").exists()
    # asked for by name: the upsampler is resized (untrained), the image is x3
    assert main([*args, "--scale", "3", "--resize-upsampler"]) == 0
    with Image.open(tmp_path / "o" / "a_x3.png") as im:
        assert im.size == (60, 42)
    assert main([*args, "--scale", "2"]) == 0 and (tmp_path / "o" / "a_x2.png").is_file()


def test_a_scale_without_a_bundled_model_asks_for_one(tmp_path, capsys):
    make_png(tmp_path / "a.png")
    rc = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--scale", "5"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "no bundled default model for x5" in err and "--model" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_output_that_cannot_be_a_folder_is_refused(tmp_path, model, capsys, where):
    """-o naming an existing file (or a folder below one) is refused before any image, exit status 2."""
    make_png(tmp_path / "a.png")
    (tmp_path / "taken").write_bytes(b"keep me")
    out = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "sub"
    rc = main(["upscale", str(tmp_path / "a.png"), "-o", str(out), "--model", model])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "taken") in err and "not a folder" in err
    assert (tmp_path / "taken").read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["a.png", "taken"]


def test_a_second_run_into_the_input_folder_skips_its_own_outputs(tmp_path, model, capsys):
    """upscale DIR -o DIR twice: the second run writes nothing (no a_x2_x2.png) and says what it skipped."""
    make_png(tmp_path / "d" / "a.png")
    make_png(tmp_path / "d" / "b.png", seed=1)
    make_png(tmp_path / "d" / "c_x2.png", seed=2)  # a user's file whose name only looks like an output
    args = ["upscale", str(tmp_path / "d"), "-o", str(tmp_path / "d"), "--model", model]
    assert main(args) == 0
    first = files_under(tmp_path / "d")
    assert first == ["a.png", "a_x2.png", "b.png", "b_x2.png", "c_x2.png", "c_x2_x2.png"]
    capsys.readouterr()
    assert main(args) == 0
    assert files_under(tmp_path / "d") == first
    captured = capsys.readouterr()
    assert "a_x2.png" in captured.err and "b_x2.png" in captured.err and "outputs of an earlier run" in captured.err
    assert "0 images upscaled" in captured.out


def test_options_reach_the_upscaler(tmp_path, model, monkeypatch):
    seen = {}
    from ribsr import inference

    class Spy(inference.Upscaler):
        def __init__(self, model, **kwargs):
            seen.update(kwargs)
            super().__init__(model, **kwargs)

    monkeypatch.setattr(inference, "Upscaler", Spy)
    make_png(tmp_path / "a.png")
    rc = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", model, "--tile", "64",
               "--tile-overlap", "8", "--max-memory", "1.5", "--dtype", "float32", "--device", "cpu",
               "--self-ensemble", "--batch-size", "2"])
    assert rc == 0
    assert seen["tile"] == 64 and seen["overlap"] == 8 and seen["max_memory"] == 1.5
    assert seen["dtype"] == "float32" and str(seen["device"]) == "cpu" and seen["self_ensemble"]
    assert seen["batch_size"] == 2
    assert os.listdir(tmp_path / "o") == ["a_x2.png"]


@pytest.mark.parametrize("bad", [["--tile", "-1"], ["--tile", "big"], ["--max-memory", "0"], ["--tile-overlap", "-1"],
                                 ["--scale", "0"], ["--scale", "-2"]])
def test_bad_options_are_rejected(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["upscale", "x.png", *bad])
    assert exc.value.code == 2
    if bad[0] in ("--tile-overlap", "--scale"):  # were taken: a traceback from deep inside, or a bad message
        assert f"argument {bad[0]}: must be {'>=' if bad[0] == '--tile-overlap' else '>'} 0, got '{bad[1]}'" in \
            capsys.readouterr().err


@pytest.mark.parametrize("device", ["foo", "cuda:x"])
def test_an_unknown_device_is_a_clear_error(tmp_path, model, capsys, device):
    make_png(tmp_path / "a.png")
    rc = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", model, "--device", device])
    assert rc == 2
    assert f"unknown device {device!r}: use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_sample_with_the_bundled_model(tmp_path, capsys):
    """The quick start: no --model, the real loader, the bundled x2 model and the shipped sample image."""
    from ribsr.assets import SAMPLE_IMAGE

    rc = main(["upscale", str(SAMPLE_IMAGE), "-o", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    with Image.open(tmp_path / "out" / "butterfly_x2.png") as out:
        assert out.size == (256, 256) and out.mode == "RGB"


# ---------------------------------------------------------------------- 16 bits, size limit, animation
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16bit_tiff_keeps_16_bits(tmp_path, model, capsys, channels):
    tifffile = pytest.importorskip("tifffile")
    arr = np.random.default_rng(4).integers(0, 65536, (14, 18, channels)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", arr[..., 0] if channels == 1 else arr,
                     photometric="minisblack" if channels == 1 else "rgb",
                     extrasamples=["unassalpha"] if channels == 4 else None)
    rc = main(["upscale", str(tmp_path / "deep.tif"), "-o", str(tmp_path / "out"), "--model", model,
               "--format", "same"])
    assert rc == 0
    assert "note" not in capsys.readouterr().err  # nothing reduced or dropped
    out = tifffile.imread(tmp_path / "out" / "deep_x2.tif")
    assert out.dtype == np.uint16 and out.shape == ((28, 36) if channels == 1 else (28, 36, channels))
    inner = out[(out > 0) & (out < 65535)]  # the random network clips many samples
    assert inner.size > 500 and np.mean(inner % 257 != 0) > 0.9  # 16-bit samples, not 8-bit ones (v * 257)
    if channels == 4:
        from ribsr.imresize import imresize

        expected = np.clip(imresize(arr[..., 3].astype(np.float32) / 65535, 2), 0, 1)
        np.testing.assert_allclose(out[..., 3] / 65535, expected, atol=1 / 65535)
    assert main(["upscale", str(tmp_path / "deep.tif"), "-o", str(tmp_path / "png"), "--model", model]) == 0
    w, h, rows, info = png.Reader(filename=str(tmp_path / "png" / "deep_x2.png")).asDirect()
    assert (w, h) == (36, 28) and info["bitdepth"] == 16 and info["planes"] == channels


def test_huge_declared_size_is_refused_before_decoding(tmp_path, model, capsys):
    Image.new("1", (12000, 12000)).save(tmp_path / "huge.png")  # 144 megapixels in ~18 KB
    make_png(tmp_path / "small.png")
    rc = main(["upscale", str(tmp_path / "huge.png"), str(tmp_path / "small.png"), "-o", str(tmp_path / "out"),
               "--model", model])
    err = capsys.readouterr().err
    assert rc == 1
    assert "huge.png: 12000x12000 upscaled x2 would be 24000x24000 (576 megapixels)" in err
    assert "--max-output-pixels 268435456" in err and "budget" not in err
    assert files_under(tmp_path / "out") == ["small_x2.png"]  # the other input is still upscaled


def test_max_output_pixels_flag(tmp_path, model, capsys):
    make_png(tmp_path / "a.png", size=(20, 14))  # output 40x28 = 1120 pixels
    args = ["upscale", str(tmp_path / "a.png"), "--model", model]
    assert main([*args, "-o", str(tmp_path / "o1"), "--max-output-pixels", "1119"]) == 1
    assert "a.png: 20x14 upscaled x2 would be 40x28" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "o2"), "--max-output-pixels", "1120"]) == 0
    assert main([*args, "-o", str(tmp_path / "o3"), "--max-output-pixels", "0"]) == 0  # no limit
    for bad in ("-1", "many", "inf"):
        with pytest.raises(SystemExit) as exc:
            main([*args, "--max-output-pixels", bad])
        assert exc.value.code == 2


def test_animated_gif_says_only_the_first_frame_is_upscaled(tmp_path, model, capsys):
    frames = [Image.new("RGB", (10, 8), (80 * i, 255 - 80 * i, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=[100, 200, 300], loop=0)
    assert main(["upscale", str(tmp_path / "anim.gif"), "-o", str(tmp_path / "out"), "--model", model]) == 0
    err = capsys.readouterr().err
    assert "anim.gif: 3 frames (animated or multi-page image): only the first frame is used" in err
    with Image.open(tmp_path / "out" / "anim_x2.png") as out:
        assert out.size == (20, 16)


# ---------------------------------------------------------------------- outputs assembled on disk
@pytest.mark.parametrize("name,mode", [("a.png", "RGB"), ("g.png", "L"), ("t.tif", "RGBA")])
def test_stream_above_writes_the_same_pixels_through_disk(tmp_path, model, capsys, name, mode):
    from ribsr.imageio import read_image

    make_png(tmp_path / "in" / "x.png", size=(40, 30), mode=mode)
    Image.open(tmp_path / "in" / "x.png").save(tmp_path / "in" / name)
    (tmp_path / "in" / "x.png").unlink()
    args = ["upscale", str(tmp_path / "in" / name), "--model", model, "--tile", "16", "--format", "same"]
    assert main([*args, "-o", str(tmp_path / "memory"), "--stream-above", "inf"]) == 0
    assert main([*args, "-o", str(tmp_path / "disk"), "--stream-above", "0"]) == 0
    out = f"{Path(name).stem}_x2{Path(name).suffix}"
    assert os.listdir(tmp_path / "disk") == [out]  # the output only: no temporary file left
    a, b = read_image(tmp_path / "memory" / out), read_image(tmp_path / "disk" / out)
    assert a.size == (80, 60) and (a.grayscale, a.bit_depth) == (b.grayscale, b.bit_depth)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    if mode == "RGBA":
        np.testing.assert_array_equal(a.alpha, b.alpha)


def test_stream_above_with_self_ensemble_is_refused_per_image(tmp_path, model, capsys):
    make_png(tmp_path / "a.png")
    rc = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", model, "--self-ensemble",
               "--stream-above", "0"])
    assert rc == 1
    assert "self-ensemble is not supported for an output assembled on disk" in capsys.readouterr().err
    assert list((tmp_path / "o").glob("*")) == []
    for bad in ("-1", "nan", "big"):
        with pytest.raises(SystemExit) as exc:
            main(["upscale", "x.png", "--stream-above", bad])
        assert exc.value.code == 2


# ---------------------------------------------------------------------- files that are not images
def _unblock_reader_later(fifo: Path, seconds: float) -> threading.Timer:
    """A timer that, after ``seconds``, opens ``fifo`` for writing and closes it, so that a reader stuck on it
    (the bug) gets end-of-file instead of hanging the test; without a reader the open fails and is ignored."""

    def unblock() -> None:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    timer = threading.Timer(seconds, unblock)
    timer.daemon = True
    timer.start()
    return timer


def test_a_fifo_in_a_folder_is_not_an_image(tmp_path, model, capsys):
    """upscale DIR with a FIFO named *.png in DIR: only regular files (and symbolic links to them) are images."""
    make_png(tmp_path / "in" / "a.png")
    make_png(tmp_path / "elsewhere" / "b.png", seed=1)
    os.symlink(tmp_path / "elsewhere" / "b.png", tmp_path / "in" / "link.png")
    os.mkfifo(tmp_path / "in" / "pipe.png")
    os.symlink(tmp_path / "in" / "pipe.png", tmp_path / "in" / "pipe_link.png")
    jobs, problems = discover([str(tmp_path / "in")], False, (tmp_path / "out").resolve())
    assert [j.source.name for j in jobs] == ["a.png", "link.png"] and problems == []

    timer = _unblock_reader_later(tmp_path / "in" / "pipe.png", 20)
    try:
        rc = main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", model])
    finally:
        timer.cancel()
    assert rc == 0, capsys.readouterr().err
    assert files_under(tmp_path / "out") == ["a_x2.png", "link_x2.png"]


@pytest.mark.parametrize("kind", ["fifo", "device", "broken_link"])
def test_an_input_that_is_not_a_regular_file_says_what_it_is(tmp_path, model, capsys, kind):
    if kind == "fifo":
        target, what = tmp_path / "pipe.png", "FIFO"
        os.mkfifo(target)
    elif kind == "device":
        target, what = Path("/dev/null"), "character device"
    else:
        target, what = tmp_path / "gone.png", "broken symbolic link"
        os.symlink(tmp_path / "nowhere.png", target)
    make_png(tmp_path / "a.png")
    rc = main(["upscale", str(target), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", model])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{target}: " in err and what in err and "no such file" not in err
    assert files_under(tmp_path / "out") == ["a_x2.png"]


# ---------------------------------------------------------------------- output folder and interruptions
@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    """A folder no file can be created in: a mode 0555 folder, or (for root, whom modes do not stop) one to be
    created in /sys, which is read-only for everyone."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        yield folder
    else:
        (folder / "probe").unlink()
        candidate = Path("/sys/ribsr-test-output")
        try:
            (Path("/sys") / "ribsr-probe").touch()
        except OSError:
            yield candidate
        else:
            pytest.skip("no read-only folder to test with")
    finally:
        folder.chmod(0o755)


def test_a_read_only_output_folder_is_found_before_any_image_is_upscaled(tmp_path, model, monkeypatch, capsys,
                                                                          read_only_folder):
    from ribsr.inference import Upscaler

    calls = []
    monkeypatch.setattr(Upscaler, "upscale_file", lambda self, *a, **k: calls.append(a) or [])
    for i in range(3):
        make_png(tmp_path / "in" / f"{i}.png", seed=i)
    rc = main(["upscale", str(tmp_path / "in"), "-o", str(read_only_folder), "--model", model])
    assert rc == 2 and calls == []
    err = capsys.readouterr().err
    assert f"cannot write into {read_only_folder}" in err, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_remove_the_part_file(tmp_path, model, monkeypatch, capsys, sig):
    """A signal while an output is written: its .part file is removed and the exit status is 128 + the signal."""
    import ribsr.imageio

    received = []
    previous = signal.signal(sig, lambda signum, frame: received.append(signum))  # what runs without the fix
    encode = ribsr.imageio._encode

    def encode_then_signal(img, fmt, f, *args):
        f.write(b"half an image")
        f.flush()
        signal.raise_signal(sig)
        return encode(img, fmt, f, *args)

    monkeypatch.setattr(ribsr.imageio, "_encode", encode_then_signal)
    make_png(tmp_path / "a.png")
    try:
        rc = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", model])
        handler_after = signal.getsignal(sig)
    finally:
        restored = signal.signal(sig, previous)
    assert rc == 128 + sig and received == []
    assert f"terminated by {signal.Signals(sig).name}" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == []  # no .part file, no output
    assert handler_after is restored  # the handler the command found is back


def test_part_files_a_killed_run_left_are_removed_by_the_next(tmp_path, model, capsys):
    import subprocess

    dead = subprocess.Popen(["true"])  # noqa: S607
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".a_x2.png.{dead.pid}-0123abcd.part"  # what a SIGKILL while writing a_x2.png leaves
    running = out / f".a_x2.png.{os.getpid()}-0123abcd.part"  # a running writer's
    unrelated = out / f".b_x2.png.{dead.pid}-0123abcd.part"  # not an output of this run
    for path in (stale, running, unrelated):
        path.write_bytes(b"half")
    make_png(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(out), "--model", model]) == 0
    assert f"note: removed {stale}" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == sorted([running.name, unrelated.name, "a_x2.png"])


# ---------------------------------------------------------------------- the real-world model and --denoise
def _upscale_bytes(tmp_path: Path, name: str, *options: str) -> bytes:
    from ribsr.assets import SAMPLE_IMAGE

    rc = main(["upscale", str(SAMPLE_IMAGE), "-o", str(tmp_path / name), *options])
    assert rc == 0
    return (tmp_path / name / "butterfly_x4.png").read_bytes()


def test_denoise_is_exactly_the_default_at_0_and_the_real_model_at_1(tmp_path):
    default = _upscale_bytes(tmp_path, "default", "--scale", "4")
    real = _upscale_bytes(tmp_path, "real", "--model", "real")
    assert default != real
    assert _upscale_bytes(tmp_path, "d0", "--model", "real", "--denoise", "0") == default
    assert _upscale_bytes(tmp_path, "d1", "--denoise", "1") == real  # --denoise implies --model real
    half = _upscale_bytes(tmp_path, "half", "--denoise", "0.5")
    assert half not in (default, real)


def test_denoise_out_of_range_or_for_a_checkpoint_is_refused(tmp_path, model, capsys):
    make_png(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--denoise", "1.5"])
    assert exit_info.value.code == 2 and "--denoise" in capsys.readouterr().err
    rc = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", model,
               "--denoise", "0.5"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "denoise blends the bundled default and real models; it does not apply to model" in err and model in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_attention_option_picks_the_path_and_names_the_choices(tmp_path, model, capsys):
    """--attention reaches the network: the bfloat16 path gives nearly, not exactly, the default's bytes;
    the choices are ribsr.model.attention's paths (spelled out in argtypes so --help needs no torch)."""
    from ribsr.cli.argtypes import ATTENTION_PATHS
    from ribsr.model.attention import BACKENDS

    assert sorted(ATTENTION_PATHS) == sorted(BACKENDS)
    make_png(tmp_path / "in" / "a.png", size=(24, 18))
    outs = {}
    for path in ("auto", "concat_bf16"):
        out = tmp_path / path
        assert main(["upscale", str(tmp_path / "in"), "-o", str(out), "--model", model, "--scale", "2",
                     "--attention", path]) == 0
        outs[path] = np.asarray(Image.open(out / "a_x2.png"), dtype=np.int16)
    diff = np.abs(outs["auto"] - outs["concat_bf16"])
    assert 0 < diff.max() <= 3 and outs["auto"].shape == (36, 48, 3)
    with pytest.raises(SystemExit):
        main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "x"), "--model", model, "--attention", "flash"])
    assert "invalid choice: 'flash'" in capsys.readouterr().err
