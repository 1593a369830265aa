"""The ``ribsr degrade`` command, and ``ribsr evaluate`` on the test sets it makes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ribsr.cli import main
from ribsr.degrade import DegradationOptions, SecondOrderDegradation, degrade_image, image_rng, preset
from ribsr.evaluate import lr_layout
from ribsr.imresize import imresize
from ribsr.metrics import psnr, ssim


def _pattern(h: int, w: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    img = np.stack([(y * 7 + seed) % 256, (x * 5) % 256, (x * y // 3) % 256], axis=-1).astype(np.float64)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture()
def photos(tmp_path) -> Path:
    """Three HR images (RGB, grayscale, JPEG) of sizes that are not multiples of 4, plus files to be ignored."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(_pattern(37, 43, 1)).save(root / "alpha.png")
    Image.fromarray(_pattern(34, 30, 2)[:, :, 0]).save(root / "gray.png")  # mode L
    Image.fromarray(_pattern(41, 40, 3)).save(root / "photo.jpg", quality=95)
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(_pattern(8, 8, 4)).save(root / ".hidden.png")
    return root


def _array(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_json_and_pixels(photos, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["degrade", str(photos), "-o", str(out), "--scale", "4", "--seed", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and "3 pairs written" in printed[-1] and "0 failed" in printed[-1]
    assert sorted(_files(out)) == ["HR/alpha.png", "HR/gray.png", "HR/photo.png", "LR/X4/alphax4.png",
                                   "LR/X4/grayx4.png", "LR/X4/photox4.png", "degradation.json"]
    doc = json.loads((out / "degradation.json").read_text())
    assert {k: doc[k] for k in ("scale", "seed", "preset", "options_file", "degradation", "lr_dir", "lr_template")} \
        == {"scale": 4, "seed": 3, "preset": "realesrgan", "options_file": None, "degradation": "second_order",
            "lr_dir": "LR/X4", "lr_template": "{}x4"}
    assert doc["ribsr_version"] and doc["options"] == DegradationOptions().to_dict()
    assert list(doc["images"]) == ["alpha", "gray", "photo"]
    degradation = SecondOrderDegradation(4)
    for stem, source in (("alpha", "alpha.png"), ("gray", "gray.png"), ("photo", "photo.jpg")):
        entry = doc["images"][stem]
        assert entry["source"] == str(photos / source)
        hr_in = _array(photos / source)
        hr, lr, record = degrade_image(degradation, hr_in, image_rng(3, stem))  # what the command must have made
        assert entry["params"] == record and entry["gray"] == (stem == "gray")
        assert entry["hr_size"] == [hr.shape[0], hr.shape[1]] == [hr_in.shape[0] // 4 * 4, hr_in.shape[1] // 4 * 4]
        assert entry["lr_size"] == [hr.shape[0] // 4, hr.shape[1] // 4]
        assert np.array_equal(_array(out / "HR" / f"{stem}.png"), hr)
        assert np.array_equal(_array(out / "LR" / "X4" / f"{stem}x4.png"), lr)
    assert _array(out / "LR" / "X4" / "grayx4.png").ndim == 2  # grayscale stays grayscale
    assert Image.open(out / "HR" / "gray.png").mode == "L"


def test_same_command_same_bytes_and_seed_changes_the_lr(photos, tmp_path):
    runs = []
    for name, seed in (("one", "5"), ("two", "5"), ("other", "6")):
        assert main(["degrade", str(photos), "-o", str(tmp_path / name), "--scale", "2", "--seed", seed]) == 0
        runs.append(_files(tmp_path / name))
    assert runs[0] == runs[1]
    for stem in ("alpha", "gray", "photo"):
        assert runs[2][f"HR/{stem}.png"] == runs[0][f"HR/{stem}.png"]
        assert runs[2][f"LR/X2/{stem}x2.png"] != runs[0][f"LR/X2/{stem}x2.png"]


def test_an_images_lr_depends_on_neither_order_nor_the_other_images(photos, tmp_path):
    assert main(["degrade", str(photos), "-o", str(tmp_path / "all"), "--scale", "3"]) == 0
    assert main(["degrade", str(photos / "photo.jpg"), str(photos / "alpha.png"), "-o", str(tmp_path / "two"),
                 "--scale", "3"]) == 0
    assert main(["degrade", str(photos / "alpha.png"), "-o", str(tmp_path / "one"), "--scale", "3"]) == 0
    every, two, one = (_files(tmp_path / n) for n in ("all", "two", "one"))
    assert one["LR/X3/alphax3.png"] == two["LR/X3/alphax3.png"] == every["LR/X3/alphax3.png"]
    assert two["LR/X3/photox3.png"] == every["LR/X3/photox3.png"]
    docs = [json.loads(f["degradation.json"]) for f in (every, two, one)]
    assert docs[0]["images"]["alpha"] == docs[1]["images"]["alpha"] == docs[2]["images"]["alpha"]
    assert list(docs[1]["images"]) == ["alpha", "photo"]  # sorted by name whatever the order given


def test_existing_set_is_refused_without_overwrite(photos, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["degrade", str(photos), "-o", str(out), "--scale", "2", "--preset", "clean"]) == 0
    before = _files(out)
    capsys.readouterr()
    assert main(["degrade", str(photos), "-o", str(out), "--scale", "2", "--preset", "jpeg50"]) == 2
    err = capsys.readouterr().err
    assert "already holds a test set" in err and "--overwrite" in err and str(out / "LR" / "X2") in err
    assert _files(out) == before
    assert main(["degrade", str(photos), "-o", str(out), "--scale", "2", "--preset", "jpeg50", "--overwrite"]) == 0
    doc = json.loads((out / "degradation.json").read_text())
    assert doc["preset"] == "jpeg50" and doc["options"] == {"resize": "matlab_bicubic", "jpeg": 50}
    assert _files(out)["LR/X2/alphax2.png"] != before["LR/X2/alphax2.png"]
    # a leftover image that this run would not replace would pair with nothing: refused, even with --overwrite
    Image.fromarray(_pattern(8, 8, 0)).save(out / "HR" / "stray.png")
    assert main(["degrade", str(photos / "alpha.png"), "-o", str(out), "--scale", "2", "--overwrite"]) == 2
    assert "stray.png" in capsys.readouterr().err


def test_a_non_empty_lr_folder_alone_is_refused(photos, tmp_path, capsys):
    out = tmp_path / "bench"
    (out / "LR" / "X4").mkdir(parents=True)
    (out / "LR" / "X4" / "x.png").write_bytes(b"")
    assert main(["degrade", str(photos), "-o", str(out), "--scale", "4"]) == 2
    assert "already holds a test set" in capsys.readouterr().err


def test_bad_options_file_names_the_file_and_keys(photos, tmp_path, capsys):
    opts = tmp_path / "train.yml"
    opts.write_text("scale: 4\ndegradation:\n  jpeg_range: [0, 50]\n  noise_rnage: [1, 2]\n"
                    "datasets:\n  train:\n    type: RealESRGANDataset\n    blur_sigma: [3, 1]\n")
    out = tmp_path / "bench"
    assert main(["degrade", str(photos), "-o", str(out), "--scale", "4", "--options", str(opts)]) == 2
    err = capsys.readouterr().err
    for key in ("degradation.jpeg_range", "degradation.noise_rnage", "datasets.train.blur_sigma"):
        assert f"{opts}: {key}: " in err
    assert not out.exists()


def test_options_file_plain_mapping_and_training_file(photos, tmp_path):
    plain = tmp_path / "mild.yml"
    plain.write_text("jpeg_range: [70, 90]\nsecond_order_prob: 0\nnoise_range: [0, 3]\n")
    out = tmp_path / "mild"
    assert main(["degrade", str(photos / "alpha.png"), "-o", str(out), "--scale", "2", "--options", str(plain)]) == 0
    doc = json.loads((out / "degradation.json").read_text())
    expected = DegradationOptions(jpeg_range=(70, 90), second_order_prob=0, noise_range=(0, 3))
    assert doc["preset"] is None and doc["options_file"] == str(plain) and doc["options"] == expected.to_dict()
    assert doc["images"]["alpha"]["params"]["second_order"] is False
    assert 70 <= doc["images"]["alpha"]["params"]["jpeg1"] <= 90
    recipe = Path(__file__).resolve().parents[2] / "configs" / "local" / "finetune_SST_small_real_x4.yml"
    out = tmp_path / "recipe"
    assert main(["degrade", str(photos / "alpha.png"), "-o", str(out), "--scale", "4", "--options", str(recipe)]) == 0
    doc = json.loads((out / "degradation.json").read_text())
    assert doc["options"]["final_sinc_prob"] == 0.3 and doc["options"]["blur_sigma"] == [0.2, 1.0]
    assert doc["options"]["bicubic_prob"] == 0.7


def test_argument_errors(photos, tmp_path, capsys):
    out = str(tmp_path / "o")
    with pytest.raises(SystemExit) as info:  # one of --preset and --options
        main(["degrade", str(photos), "-o", out, "--scale", "2", "--preset", "clean", "--options", "x.yml"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["degrade", str(photos), "-o", out, "--scale", "2", "--seed", "-1"])
    assert main(["degrade", str(photos), "-o", out, "--scale", "2", "--preset", "blurry"]) == 2
    assert "unknown degradation preset 'blurry'" in capsys.readouterr().err
    assert main(["degrade", str(tmp_path / "nothing.png"), "-o", out, "--scale", "2"]) == 2
    assert "nothing.png: no such file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["degrade", str(empty), "-o", out, "--scale", "2"]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["degrade", str(photos), "-o", out, "--scale", "2", "--options", str(tmp_path / "none.yml")]) == 2
    assert "none.yml" in capsys.readouterr().err
    assert not Path(out).exists()


def test_duplicate_names_and_inputs_that_would_be_replaced(photos, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(_pattern(20, 20, 9)).save(other / "alpha.bmp")
    out = tmp_path / "bench"
    assert main(["degrade", str(photos), str(other), "-o", str(out), "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert str(photos / "alpha.png") in err and str(other / "alpha.bmp") in err and not out.exists()
    assert main(["degrade", str(photos), "-o", str(out), "--scale", "2", "--preset", "clean"]) == 0
    hr_before = _files(out / "HR")
    assert main(["degrade", str(out / "HR"), "-o", str(out), "--scale", "2", "--overwrite"]) == 2
    assert "would replace this input" in capsys.readouterr().err
    assert _files(out / "HR") == hr_before


def test_unreadable_image_fails_alone(photos, tmp_path, capsys):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "bench"
    assert main(["degrade", str(photos), "-o", str(out), "--scale", "2", "--preset", "clean"]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "1 failed" in captured.out
    doc = json.loads((out / "degradation.json").read_text())
    assert list(doc["images"]) == ["alpha", "gray", "photo"]
    assert not (out / "HR" / "broken.png").exists()


# ----------------------------------------------------------------------------------------- ribsr evaluate
def _direct_bicubic(out: Path, scale: int) -> tuple[float, float]:
    """Mean PSNR/SSIM of bicubic upscaling over a made set, computed from its files by hand."""
    scores = []
    for hr_file in sorted((out / "HR").iterdir()):
        hr = _array(hr_file)
        lr = _array(out / "LR" / f"X{scale}" / f"{hr_file.stem}x{scale}.png")
        sr = imresize(lr, float(scale))
        scores.append((psnr(sr, hr, crop_border=scale, y_channel=True), ssim(sr, hr, crop_border=scale,
                                                                               y_channel=True)))
    return float(np.mean([s[0] for s in scores])), float(np.mean([s[1] for s in scores]))


def test_evaluate_reads_the_lr_that_degradation_json_names(photos, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["degrade", str(photos), "-o", str(out), "--scale", "2", "--seed", "1"]) == 0
    capsys.readouterr()
    report = tmp_path / "r.json"
    assert main(["evaluate", "--model", "bicubic", "--data", str(out), "--scale", "2", "--json", str(report),
                 "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "degradation.json (realesrgan, seed 1)" in table
    (row,) = json.loads(report.read_text())["results"]
    assert row["lr_source"] == "degradation.json" and row["images"] == 3 and row["failed"] == []
    assert row["degradation"]["preset"] == "realesrgan" and row["degradation"]["seed"] == 1
    expected_psnr, expected_ssim = _direct_bicubic(out, 2)
    assert row["psnr"] == pytest.approx(expected_psnr, abs=1e-9)
    assert row["ssim"] == pytest.approx(expected_ssim, abs=1e-9)
    # the clean bicubic LR (what evaluating the HR alone would use) gives another, higher number
    clean = tmp_path / "clean"
    (clean / "HR").mkdir(parents=True)
    for p in (out / "HR").iterdir():
        (clean / "HR" / p.name).write_bytes(p.read_bytes())
    assert main(["evaluate", "--model", "bicubic", "--data", str(clean), "--scale", "2", "--json", str(report),
                 "--no-progress"]) == 0
    assert json.loads(report.read_text())["results"][0]["psnr"] > row["psnr"] + 1


def test_evaluate_refuses_another_scale_and_missing_lr(photos, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["degrade", str(photos), "-o", str(out), "--scale", "3", "--preset", "jpeg75"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", "bicubic", "--data", str(out), "--scale", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "made at x3" in err and "x2 is evaluated" in err and "degradation.json" in err
    (out / "LR" / "X3" / "grayx3.png").unlink()
    assert main(["evaluate", "--model", "bicubic", "--data", str(out), "--scale", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "grayx3.png" in err and "missing" in err
    # never the bicubic LR of the HR instead
    Image.fromarray(imresize(_array(out / "HR" / "gray.png"), 1 / 3)).save(out / "LR" / "X3" / "grayx3.png")
    (out / "LR" / "X3" / "extra.png").write_bytes((out / "LR" / "X3" / "grayx3.png").read_bytes())
    assert main(["evaluate", "--model", "bicubic", "--data", str(out), "--scale", "3", "--no-progress"]) == 2
    assert "extra.png" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"lr_dir": "../elsewhere"}, "lr_dir must be a folder path inside"),
    ({"lr_dir": "/abs/LR"}, "lr_dir must be a folder path inside"),
    ({"lr_template": "{}x{s}"}, "lr_template must be a file name with one {}"),
    ({"lr_template": "x4"}, "lr_template must be a file name with one {}"),
    ({"scale": "4"}, "scale must be a positive integer"),
])
def test_a_bad_degradation_json_is_named(tmp_path, change, message):
    (tmp_path / "HR").mkdir()
    doc = {"scale": 4, "lr_dir": "LR/X4", "lr_template": "{}x4", **change}
    (tmp_path / "degradation.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="degradation.json") as info:
        lr_layout(tmp_path, 4)
    assert message in str(info.value)
    (tmp_path / "degradation.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read it as JSON"):
        lr_layout(tmp_path, 4)


def test_set5_clean_reproduces_the_benchmark_and_its_numbers(datasets_dir, tmp_path, capsys):
    set5 = datasets_dir / "Set5"
    out = tmp_path / "Set5_clean"
    assert main(["degrade", str(set5 / "HR"), "-o", str(out), "--scale", "4", "--preset", "clean"]) == 0
    for hr_file in sorted((set5 / "HR").iterdir()):
        lr_name = f"{hr_file.stem}x4.png"
        assert np.array_equal(_array(out / "LR" / "X4" / lr_name), _array(set5 / "LR_bicubic" / "X4" / lr_name))
    capsys.readouterr()
    reports = []
    for data in (set5, out):
        report = tmp_path / f"{data.name}.json"
        assert main(["evaluate", "--model", "bicubic", "--data", str(data), "--scale", "4", "--json", str(report),
                     "--no-progress"]) == 0
        reports.append(json.loads(report.read_text())["results"][0])
    assert reports[0]["lr_source"] == "file" and reports[1]["lr_source"] == "degradation.json"
    assert reports[1]["psnr"] == reports[0]["psnr"] and reports[1]["ssim"] == reports[0]["ssim"]
    assert reports[0]["psnr"] == pytest.approx(28.42, abs=0.02)


def test_set5_realesrgan_evaluates_as_computed_directly(datasets_dir, tmp_path, capsys):
    hr_dir = datasets_dir / "Set5" / "HR"
    out = tmp_path / "Set5_real"
    assert main(["degrade", str(hr_dir / "baby.png"), str(hr_dir / "butterfly.png"), "-o", str(out),
                 "--scale", "4", "--seed", "0"]) == 0
    lr = _array(out / "LR" / "X4" / "butterflyx4.png")
    expected = degrade_image(preset("realesrgan", 4), _array(hr_dir / "butterfly.png"), image_rng(0, "butterfly"))[1]
    assert np.array_equal(lr, expected)
    report = tmp_path / "r.json"
    assert main(["evaluate", "--model", "bicubic", "--data", str(out), "--scale", "4", "--json", str(report),
                 "--no-progress"]) == 0
    row = json.loads(report.read_text())["results"][0]
    assert row["psnr"] == pytest.approx(_direct_bicubic(out, 4)[0], abs=1e-9)
