"""``ribsr compare``: the HTML report (one file, images embedded or beside it, nothing fetched), its PSNR/SSIM
against HR images (the numbers ``ribsr evaluate`` gives), and its errors."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ribsr.cli import main
from ribsr.compare import Side, bicubic_decoded, compare_images, find_hr, too_large_message
from ribsr.evaluate import bicubic_upscaler, evaluate_dataset
from ribsr.imageio import from_array, to_array
from ribsr.imresize import imresize

pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A uint8 RGB image with structure at several scales (so that PSNR differs between upscalers)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    return np.clip(big.astype(int) + rng.integers(-20, 21, big.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A tiny SR test set: HR/{a,b}.png (a 36x28, b 32x32) and LR_bicubic/X2/{a,b}x2.png by imresize."""
    root = tmp_path / "set"
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / "X2").mkdir(parents=True)
    for name, (h, w), seed in (("a", (28, 36), 1), ("b", (32, 32), 2)):
        hr = smooth_image(h, w, seed)
        Image.fromarray(hr).save(root / "HR" / f"{name}.png")
        Image.fromarray(imresize(hr, 0.5)).save(root / "LR_bicubic" / "X2" / f"{name}x2.png")
    return root


def report_data(text: str) -> dict:
    payload = re.search(r'<script type="application/json" id="ribsr-report">(.*?)</script>', text, re.S)
    assert payload, "the report carries its data as JSON"
    return json.loads(payload.group(1).replace("<\\/", "</"))


def embedded_images(text: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))))
            for b in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)', text)]


def test_report_is_one_file_with_evaluate_s_numbers(dataset, tmp_path, capsys):
    report = tmp_path / "out" / "report.html"
    report.parent.mkdir()
    rc = main(["compare", str(dataset / "LR_bicubic" / "X2"), "--model", "default", "--hr", str(dataset),
               "-o", str(report)])
    assert rc == 0
    assert sorted(p.name for p in report.parent.iterdir()) == ["report.html"]  # nothing beside it
    text = report.read_text()
    # Self-contained: no page asset from anywhere (the viewer's script and style are inlined).
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "RibsrCompare.mountAll" in text and ".rc-view" in text
    data = report_data(text)
    assert [i["name"] for i in data["images"]] == ["ax2.png", "bx2.png"]
    assert data["before"] == "bicubic x2" and data["after"] == "default x2"
    # bicubic's numbers are those of ribsr evaluate --model bicubic on the same set (babyx2 -> baby matched)
    ev = evaluate_dataset(bicubic_upscaler(2), dataset, 2)
    by_name = {r["name"]: r for r in ev["per_image"]}
    for image in data["images"]:
        hr_name = image["name"].replace("x2", "")
        assert Path(image["hr"]).name == hr_name
        expected = by_name[Path(hr_name).stem]
        assert image["metrics"]["before"]["psnr"] == pytest.approx(expected["psnr"], abs=1e-9)
        assert image["metrics"]["before"]["ssim"] == pytest.approx(expected["ssim"], abs=1e-9)
        assert image["metrics"]["after"]["psnr"] > image["metrics"]["before"]["psnr"]  # the model beats bicubic
    # The embedded pictures are the two sides' outputs, in order (before, after per image).
    pictures = embedded_images(text)
    assert len(pictures) == 4
    lr = np.asarray(Image.open(dataset / "LR_bicubic" / "X2" / "ax2.png"))
    assert np.array_equal(pictures[0], imresize(lr, 2.0))
    side = Side.open("default", scale=2, tile=0, device="cpu")
    assert np.array_equal(pictures[1], to_array(side.upscale(from_array(lr)), np.uint8, 3))
    assert "mean of 2" in text
    out = capsys.readouterr().out
    assert "ax2.png: bicubic x2" in out and "2 images (bicubic x2 vs default x2)" in out


def test_two_models_with_images_beside_the_report(tmp_path, tiny_checkpoint):
    lr = tmp_path / "in" / "photo.png"
    lr.parent.mkdir()
    Image.fromarray(smooth_image(20, 24, 3)).save(lr)
    report = tmp_path / "report.html"
    rc = main(["compare", str(lr), "--model", "default", "--model", str(tiny_checkpoint), "-o", str(report),
               "--assets-dir", str(tmp_path / "images"), "--title", "mine"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["photo_after.png", "photo_before.png"]
    text = report.read_text()
    assert "data:image/png" not in text
    assert 'data-rc-before="images/photo_before.png"' in text and 'data-rc-after="images/photo_after.png"' in text
    data = report_data(text)
    assert data["title"] == "mine" and data["before"] == "default x2"
    assert data["after"] == "tiny_x2.safetensors (x2)"
    assert data["images"][0]["metrics"] is None  # no --hr: no numbers
    with Image.open(tmp_path / "images" / "photo_after.png") as im:
        assert im.size == (48, 40)


def test_problems_are_named_and_the_rest_is_compared(dataset, tmp_path, capsys):
    lr = dataset / "LR_bicubic" / "X2"
    Image.fromarray(smooth_image(12, 12, 4)).save(lr / "orphan.png")  # no HR image
    (lr / "broken.png").write_bytes(b"not a png")
    report = tmp_path / "r.html"
    rc = main(["compare", str(lr), "--model", "default", "--hr", str(dataset), "-o", str(report)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.png: not a recognised image file" in err
    assert f"orphan.png: no HR image in {dataset}" in err and "orphan.*" in err
    data = report_data(report.read_text())
    status = {i["name"]: (i["error"], i["problem"], i["metrics"] is not None) for i in data["images"]}
    assert status["ax2.png"] == (None, None, True)
    assert "not a recognised image file" in status["broken.png"][0]
    assert status["orphan.png"][0] is None and "no HR image" in status["orphan.png"][1]


def test_too_large_inputs_are_refused_before_decoding(tmp_path, capsys):
    lr = tmp_path / "big.png"
    Image.fromarray(smooth_image(30, 40, 5)).save(lr)
    rc = main(["compare", str(lr), "--model", "default", "-o", str(tmp_path / "r.html"),
               "--max-output-pixels", "1000"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "big.png: 40x30 upscaled x2 would be 80x60" in err and "more than --max-output-pixels 1000" in err
    assert too_large_message("x.png", (40, 30), 2, 1000, "--limit").endswith("not decoded")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model.safetensors"], "/no/such/model.safetensors"),
        (["--model", "bicubic"], "--model bicubic alone"),
        (["--model", "default", "--model", "default", "--model", "default"], "--model is given 3 times"),
        (["--model", "default", "--denoise-b", "0.5"], "--denoise-b is for a second --model"),
        (["--model", "default", "--scale", "4", "--model", "real", "--scale", "2"], "no bundled real model for x2"),
        (["--model", "default", "--hr", "/no/hr/folder"], "--hr /no/hr/folder"),
    ],
)
def test_errors_name_the_bad_value(tmp_path, capsys, args, message):
    lr = tmp_path / "x.png"
    Image.fromarray(smooth_image(8, 8, 6)).save(lr)
    rc = main(["compare", str(lr), "-o", str(tmp_path / "r.html"), *args])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_find_hr_takes_the_image_files_upscale_takes(tmp_path):
    import os

    (tmp_path / ".a.png").write_bytes(b"")  # hidden
    (tmp_path / "a.txt").write_bytes(b"")  # not an image suffix
    (tmp_path / "b.png").mkdir()  # a folder
    os.mkfifo(tmp_path / "c.png")  # would block a reader
    (tmp_path / "a.JPG").write_bytes(b"")
    assert find_hr(tmp_path, "ax2.png", 2) == tmp_path / "a.JPG"
    for name in ("bx2.png", "cx2.png"):
        with pytest.raises(FileNotFoundError, match="no HR image"):
            find_hr(tmp_path, name, 2)


def test_library_gray_input_and_lr_names(tmp_path):
    hr = smooth_image(24, 20, 7)[..., 0]
    (tmp_path / "HR").mkdir()
    Image.fromarray(hr).save(tmp_path / "HR" / "g.png")
    Image.fromarray(imresize(hr, 0.5)).save(tmp_path / "gx2.png")
    assert find_hr(tmp_path, "gx2.png", 2) == tmp_path / "HR" / "g.png"
    with pytest.raises(FileNotFoundError, match=r"gx3.png: no HR image .* gx3\.\*"):
        find_hr(tmp_path, "gx3.png", 2)
    entries = compare_images([tmp_path / "gx2.png"], Side.bicubic(2), Side.bicubic(2), hr_dir=tmp_path)
    (entry,) = entries
    assert entry.before.shape == (24, 20) and entry.error is None
    assert entry.metrics["before"] == entry.metrics["after"]
    img = from_array(imresize(hr, 0.5))
    assert np.array_equal(entry.before, to_array(bicubic_decoded(img, 2), np.uint8, 0))
    with pytest.raises(ValueError, match="scale must be a positive integer, got 0"):
        Side.bicubic(0)
    with pytest.raises(ValueError, match="different factors"):
        compare_images([], Side.bicubic(2), Side.bicubic(3))
