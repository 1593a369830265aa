"""ribsr.evaluate: dataset handling, the evaluation loop, self-ensemble, and the bicubic baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ribsr.evaluate import (
    bicubic_upscaler,
    evaluate,
    evaluate_dataset,
    find_hr_images,
    load_image,
    load_lr,
    mod_crop,
    model_upscaler,
)
from ribsr.imresize import imresize
from ribsr.inference import Upscaler
from ribsr.metrics import psnr, ssim
from ribsr.modelinfo import ModelInfo

# The literature's bicubic rows (PSNR, Y channel, border = scale); see shared/datasets/README.md.
PUBLISHED_BICUBIC = {
    ("Set5", 2): 33.66, ("Set5", 3): 30.39, ("Set5", 4): 28.42,
    ("Set14", 2): 30.24, ("Set14", 3): 27.55, ("Set14", 4): 26.00,
}


class StandIn(torch.nn.Module):
    """A tiny model with the SST interface: (B, 3, h, w) in [0, 1] -> (B, 3, s*h, s*w)."""

    def __init__(self, scale: int, mode: str = "bicubic") -> None:
        super().__init__()
        self.info = ModelInfo(scale=scale)
        self.mode = mode
        self.gain = torch.nn.Parameter(torch.ones(()))  # gives the model a device and dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * F.interpolate(x, scale_factor=self.info.scale, mode=self.mode)


def _rng_image(shape, seed):
    rng = np.random.default_rng(seed)
    # Smooth content, so that upscaling is meaningful: a low-resolution noise field blown up.
    small = rng.integers(0, 256, size=(shape[0] // 4 + 1, shape[1] // 4 + 1, *shape[2:]), dtype=np.uint8)
    return imresize(small, size=shape[:2])


@pytest.fixture()
def tiny_dataset(tmp_path):
    """A dataset folder with HR/ holding an RGB image (size not a multiple of 2 or 3) and a grayscale one."""
    root = tmp_path / "Tiny"
    (root / "HR").mkdir(parents=True)
    Image.fromarray(_rng_image((37, 41, 3), 0)).save(root / "HR" / "colour.png")
    Image.fromarray(_rng_image((30, 26), 1)).save(root / "HR" / "gray.png")
    return root


# --------------------------------------------------------------------------- files and images
def test_mod_crop_keeps_the_top_left_multiple():
    img = np.arange(7 * 10 * 3).reshape(7, 10, 3)
    out = mod_crop(img, 3)
    assert out.shape == (6, 9, 3)
    np.testing.assert_array_equal(out, img[:6, :9])
    assert mod_crop(img[..., 0], 2).shape == (6, 10)
    with pytest.raises(ValueError, match="scale"):
        mod_crop(img, 0)
    with pytest.raises(ValueError, match="smaller"):
        mod_crop(img, 8)


def test_find_hr_images(tmp_path, tiny_dataset):
    assert [p.name for p in find_hr_images(tiny_dataset)] == ["colour.png", "gray.png"]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / "a.bmp")
    (flat / "notes.txt").write_text("not an image")
    (flat / ".hidden.png").write_bytes(b"editor backup")  # hidden files and folders named like images are not
    (flat / "folder.png").mkdir()  # images (ribsr.jobs.walk_images lists them, as for upscale)
    assert [p.name for p in find_hr_images(flat)] == ["a.bmp"]
    with pytest.raises(FileNotFoundError, match="missing"):
        find_hr_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        find_hr_images(tmp_path / "empty")


def test_load_image_modes(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and out[0, 0, 0] == 200
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").shape == (4, 5)
    deep = np.array([[0, 257, 32896, 65535, 383]], np.uint16)  # 16-bit: rounded to 8 bits
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png"), [[0, 1, 128, 255, 1]])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(tmp_path / "broken.png")


def test_load_image_is_the_upscaler_reader(tmp_path):
    """evaluate reads what ``ribsr upscale`` reads, 8-bit samples exactly, grayscale kept (H, W)."""
    from ribsr.imageio import read_image

    rng = np.random.default_rng(0)
    for name, arr in (("c.bmp", rng.integers(0, 256, (6, 7, 3))), ("g.png", rng.integers(0, 256, (6, 7)))):
        Image.fromarray(arr.astype(np.uint8)).save(tmp_path / name)
        out = load_image(tmp_path / name)
        np.testing.assert_array_equal(out, arr)
        decoded = read_image(tmp_path / name).rgb[..., 0]  # (6, 7) of the float RGB the upscaler takes
        np.testing.assert_array_equal(out.reshape(6, 7, -1)[..., 0], np.rint(decoded * 255))


def test_load_lr_prefers_files_and_checks_their_size(tiny_dataset):
    hr = mod_crop(load_image(tiny_dataset / "HR" / "colour.png"), 2)  # (36, 40, 3)
    lr, source = load_lr(tiny_dataset, "colour", hr, 2)
    assert source == "imresize"
    np.testing.assert_array_equal(lr, imresize(hr, 0.5))
    lr_dir = tiny_dataset / "LR_bicubic" / "X2"
    lr_dir.mkdir(parents=True)
    given = np.full((18, 20, 3), 9, np.uint8)
    Image.fromarray(given).save(lr_dir / "colourx2.png")
    lr, source = load_lr(tiny_dataset, "colour", hr, 2)
    assert source == "file"
    np.testing.assert_array_equal(lr, given)
    Image.fromarray(given[:17]).save(lr_dir / "colourx2.png")
    with pytest.raises(ValueError, match="colourx2.png.*does not match"):
        load_lr(tiny_dataset, "colour", hr, 2)


def test_lr_files_that_match_no_hr_image_are_an_error(tiny_dataset):
    """An LR_bicubic/X2 folder whose names follow another rule is not silently replaced by imresize."""
    lr_dir = tiny_dataset / "LR_bicubic" / "X2"
    lr_dir.mkdir(parents=True)
    for name in ("colour", "gray", "extra"):  # named as the HR images (the DIV2K-style "x2" left out)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(lr_dir / f"{name}.png")
    (lr_dir / ".DS_Store").write_bytes(b"")  # not an image: ignored
    with pytest.raises(ValueError) as info:
        evaluate(bicubic_upscaler(2), [tiny_dataset], 2)
    msg = str(info.value)
    assert str(lr_dir) in msg and "colour.png" in msg and "gray.png" in msg and "3 LR files" in msg
    assert "<name>x2.png" in msg and "colourx2.png" in msg  # the rule, with an example
    with pytest.raises(ValueError, match="match no HR image"):
        evaluate_dataset(bicubic_upscaler(2), tiny_dataset, 2)
    # one matching file and no stray ones: the others fall back to imresize ("mixed"), as documented
    for name in ("colour", "gray", "extra"):
        (lr_dir / f"{name}.png").unlink()
    hr = mod_crop(load_image(tiny_dataset / "HR" / "colour.png"), 2)
    Image.fromarray(imresize(hr, 0.5)).save(lr_dir / "colourx2.png")
    assert evaluate_dataset(bicubic_upscaler(2), tiny_dataset, 2)["lr_source"] == "mixed"
    # the folder of another scale is not looked at
    assert evaluate_dataset(bicubic_upscaler(3), tiny_dataset, 3)["lr_source"] == "imresize"


# --------------------------------------------------------------------------- the evaluation loop
def test_evaluate_dataset_with_a_model(tiny_dataset, tmp_path):
    model = StandIn(2)
    result = evaluate_dataset(model_upscaler(model), tiny_dataset, 2, save_dir=tmp_path / "out")
    assert result["dataset"] == "Tiny" and result["scale"] == 2 and result["images"] == 2
    assert result["failed"] == [] and result["lr_source"] == "imresize"
    # Recompute each image by hand: mod-crop, MATLAB bicubic down, model, round, Y-PSNR, border 2.
    expected_p, expected_s = [], []
    for name in ("colour", "gray"):
        hr = np.array(Image.open(tiny_dataset / "HR" / f"{name}.png"))
        hr = hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]
        lr = imresize(hr, 0.5)
        x = torch.from_numpy(np.dstack([lr] * 3) if lr.ndim == 2 else lr).permute(2, 0, 1)[None] / 255
        with torch.no_grad():
            y = model(x.float())[0].clamp(0, 1)
        if hr.ndim == 2:
            y = y.mean(0)
        sr = np.floor(y.numpy() * 255 + 0.5).astype(np.uint8)
        sr = sr if sr.ndim == 2 else sr.transpose(1, 2, 0)
        expected_p.append(psnr(sr, hr, crop_border=2))
        expected_s.append(ssim(sr, hr, crop_border=2))
        saved = np.array(Image.open(tmp_path / "out" / "Tiny" / "X2" / f"{name}.png"))
        np.testing.assert_array_equal(saved, sr)
    assert [r["name"] for r in result["per_image"]] == ["colour", "gray"]
    assert result["psnr"] == pytest.approx(np.mean(expected_p), abs=1e-12)
    assert result["ssim"] == pytest.approx(np.mean(expected_s), abs=1e-12)
    assert 20 < result["psnr"] < 60


def test_evaluate_options_change_the_measurement(tiny_dataset):
    upscale = model_upscaler(StandIn(2))
    base = evaluate_dataset(upscale, tiny_dataset, 2)
    rgb = evaluate_dataset(upscale, tiny_dataset, 2, y_channel=False)
    no_crop = evaluate_dataset(upscale, tiny_dataset, 2, crop_border=0)
    model = StandIn(2)
    ensemble = Upscaler(model, tile=0, self_ensemble=True)
    ens = evaluate_dataset(model_upscaler(model, forward=ensemble.upscale_tensor), tiny_dataset, 2)
    assert len({base["psnr"], rgb["psnr"], no_crop["psnr"]}) == 3
    # Bicubic interpolation is equivariant up to float rounding: the ensemble changes PSNR by
    # well under 0.01 dB.
    assert ens["psnr"] == pytest.approx(base["psnr"], abs=0.01)


def test_bad_images_are_reported_by_name_and_the_run_goes_on(tiny_dataset):
    (tiny_dataset / "HR" / "broken.png").write_bytes(b"not a png")
    result = evaluate_dataset(bicubic_upscaler(2), tiny_dataset, 2)
    assert result["images"] == 2
    assert [f["name"] for f in result["failed"]] == ["broken.png"]
    wrong_scale = evaluate_dataset(model_upscaler(StandIn(3)), tiny_dataset, 2)
    assert wrong_scale["images"] == 0 and wrong_scale["psnr"] is None
    assert len(wrong_scale["failed"]) == 3
    assert any("SR output is" in f["error"] for f in wrong_scale["failed"])


def test_evaluate_checks_arguments_first(tiny_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate(bicubic_upscaler(2), [tiny_dataset, tmp_path / "nowhere"], 2)
    with pytest.raises(ValueError, match="scale"):
        evaluate(bicubic_upscaler(2), [tiny_dataset], 0)
    with pytest.raises(ValueError, match="crop_border"):
        evaluate(bicubic_upscaler(2), [tiny_dataset], 2, crop_border=-1)


# --------------------------------------------------------------------------- the published baseline
def _check_bicubic(datasets_dir, names, scale):
    results = evaluate(bicubic_upscaler(scale), [datasets_dir / n for n in names], scale)
    for r in results:
        assert r["failed"] == [] and r["lr_source"] == "file"
        # Tolerance 0.02 dB: the published numbers are rounded to 0.01 dB.
        assert r["psnr"] == pytest.approx(PUBLISHED_BICUBIC[(r["dataset"], scale)], abs=0.02), r["dataset"]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_reproduces_published_set5(datasets_dir, scale):
    _check_bicubic(datasets_dir, ["Set5"], scale)


def test_bicubic_reproduces_published_set14_x4(datasets_dir):
    _check_bicubic(datasets_dir, ["Set14"], 4)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 3])
def test_bicubic_reproduces_published_set14(datasets_dir, scale):
    _check_bicubic(datasets_dir, ["Set14"], scale)
