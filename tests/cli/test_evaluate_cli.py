"""The ``ribsr evaluate`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ribsr.cli import main
from ribsr.modelinfo import ModelInfo


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "Mini"
    (root / "HR").mkdir(parents=True)
    y, x = np.mgrid[0:34, 0:30]
    img = np.stack([(y * 7) % 256, (x * 5) % 256, (x * y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(img).save(root / "HR" / "pattern.png")
    return root


class Nearest(torch.nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.info = ModelInfo(scale=scale, multiple_of=4)
        self.gain = torch.nn.Parameter(torch.ones(()))  # gives the model a device and dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * F.interpolate(x, scale_factor=self.info.scale, mode="nearest")


@pytest.fixture()
def fake_checkpoint(monkeypatch):
    """Stands in for ribsr.checkpoint.resolve_model (the core package's loader)."""
    calls = []

    def resolve_model(spec, config=None, scale=None, device="cpu", dtype=None, **options):
        calls.append({"spec": spec, "config": config, "scale": scale, "device": device})
        return Nearest(scale or 3)

    monkeypatch.setattr("ribsr.checkpoint.resolve_model", resolve_model)
    return calls


def test_bicubic_table_and_json(dataset, tmp_path, capsys):
    out_json = tmp_path / "res" / "r.json"
    rc = main(["evaluate", "--model", "bicubic", "--data", str(dataset), "--scale", "2",
               "--json", str(out_json), "--save-images", str(tmp_path / "sr")])
    assert rc == 0
    table = capsys.readouterr().out
    assert "PSNR" in table and "Mini" in table and "x2" in table
    data = json.loads(out_json.read_text())
    (row,) = data["results"]
    assert {"dataset", "scale", "psnr", "ssim", "images"} <= set(row)
    assert row["dataset"] == "Mini" and row["scale"] == 2 and row["images"] == 1
    assert f"{row['psnr']:.2f}" in table and f"{row['ssim']:.4f}" in table
    assert (tmp_path / "sr" / "Mini" / "X2" / "pattern.png").is_file()
    main(["evaluate", "--model", "bicubic", "--data", str(dataset), "--scale", "2", "--rgb",
          "--crop-border", "0", "--json", str(out_json)])
    assert json.loads(out_json.read_text())["results"][0]["psnr"] != row["psnr"]


def test_failures_are_named_and_set_the_exit_code(dataset, capsys):
    (dataset / "HR" / "zz_broken.png").write_bytes(b"\x89PNG broken")
    rc = main(["evaluate", "--model", "bicubic", "--data", str(dataset), "--scale", "2"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "zz_broken.png" in captured.err
    assert "1 failed" in captured.out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "bicubic"], "--scale is required"),
        (["--model", "bicubic", "--scale", "2", "--self-ensemble"], "apply to models"),
        (["--model", "bicubic", "--scale", "2", "--tile", "64"], "apply to models"),
    ],
)
def test_usage_errors(dataset, args, message, capsys, fake_checkpoint):
    assert main(["evaluate", "--data", str(dataset), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_data_folder(tmp_path, capsys):
    rc = main(["evaluate", "--model", "bicubic", "--data", str(tmp_path / "nope"), "--scale", "2"])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


def test_a_checkpoint_is_evaluated_at_its_own_scale(dataset, tmp_path, tiny_checkpoint, monkeypatch):
    out_json = tmp_path / "m.json"
    rc = main(["evaluate", "--model", str(tiny_checkpoint), "--data", str(dataset), "--self-ensemble",
               "--json", str(out_json)])
    assert rc == 0
    (row,) = json.loads(out_json.read_text())["results"]
    assert row["scale"] == 2 and row["images"] == 1 and row["failed"] == []  # the checkpoint's own scale
    # without --model: the bundled model of --scale, through the same loader
    asked = []
    monkeypatch.setattr("ribsr.checkpoint.bundled_model_path",
                        lambda name, scale: asked.append((name, scale)) or tiny_checkpoint)
    rc = main(["evaluate", "--data", str(dataset), "--scale", "2", "--json", str(out_json)])
    assert rc == 0 and asked == [("default", 2)]
    assert json.loads(out_json.read_text())["results"][0]["scale"] == 2


def test_a_scale_other_than_the_weights_is_an_error(dataset, tmp_path, tiny_checkpoint, capsys):
    """--scale 3 with x2 weights (ours, or the paper's .pth with --config) is refused unless the upsampler
    resizing is asked for by name; the real loader."""
    import yaml

    from ribsr.checkpoint import read_checkpoint

    state, cfg = read_checkpoint(tiny_checkpoint)
    pth, yml = tmp_path / "paper_x2.pth", tmp_path / "paper_x2.yml"
    torch.save({"params_ema": state}, pth)
    yml.write_text(yaml.safe_dump({"network_g": cfg.to_network_g()}))
    for model in (["--model", str(tiny_checkpoint)], ["--model", str(pth), "--config", str(yml)]):
        rc = main(["evaluate", *model, "--data", str(dataset), "--scale", "3"])
        assert rc == 2
        err = capsys.readouterr().err
        assert "holds x2 weights" in err and "x3" in err and "--resize-upsampler" in err
    out_json = tmp_path / "r.json"
    rc = main(["evaluate", "--model", str(pth), "--config", str(yml), "--data", str(dataset), "--scale", "3",
               "--resize-upsampler", "--json", str(out_json)])
    assert rc == 0 and json.loads(out_json.read_text())["results"][0]["scale"] == 3


def test_tiled_evaluation_equals_whole_images_for_a_local_model(dataset, tmp_path, fake_checkpoint, capsys):
    whole, tiled = tmp_path / "whole.json", tmp_path / "tiled.json"
    assert main(["evaluate", "--model", "w.safetensors", "--data", str(dataset), "--json", str(whole)]) == 0
    assert main(["evaluate", "--model", "w.safetensors", "--data", str(dataset), "--tile", "8",
                 "--json", str(tiled)]) == 0
    assert "tiles" in capsys.readouterr().out
    # nearest upsampling is local: blended tiles give the same image, so the same PSNR
    a, b = (json.loads(p.read_text())["results"][0]["psnr"] for p in (whole, tiled))
    assert a == pytest.approx(b, abs=1e-9)


def test_table_columns_stay_aligned_for_long_dataset_names():
    from ribsr.cli.evaluate import format_table

    rows = [{"dataset": name, "scale": 4, "psnr": 25.0, "ssim": 0.7, "images": 5, "seconds": 0.1, "failed": [],
             "lr_source": "file"} for name in ("Set5", "Set14_realesrgan")]
    lines = format_table(rows).splitlines()
    assert len({line.index("x4") for line in lines[2:]}) == 1  # the scale column starts at one place
    assert lines[0].index("scale") + len("scale") == lines[2].index("x4") + len("x4")


@pytest.mark.parametrize("where, message", [
    ("folder", "--json: cannot write {path}: it is a folder, not a file"),
    ("fifo", "--json: cannot write {path}: it is a FIFO (named pipe), not a file"),
    ("under a file", "--json: cannot write into {parent}: {parent} is not a folder"),
    ("read-only", "--json: cannot write into {parent} (it would be created in /sys)"),
])
def test_an_unwritable_json_path_is_refused_before_any_image(dataset, tmp_path, monkeypatch, capsys, where, message):
    """It was found only after every image was upscaled, and the results were lost."""
    import os

    import ribsr.evaluate

    path = {"folder": tmp_path / "out.json", "fifo": tmp_path / "pipe.json", "under a file": tmp_path / "f" / "r.json",
            "read-only": Path("/sys/ribsr-test-json/r.json")}[where]
    if where == "folder":
        path.mkdir()
    elif where == "fifo":
        os.mkfifo(path)
    elif where == "under a file":
        path.parent.write_text("a file")
    else:
        try:
            Path("/sys/ribsr-probe").touch()
        except OSError:
            pass
        else:
            pytest.skip("/sys is writable here")
    monkeypatch.setattr(ribsr.evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    rc = main(["evaluate", "--model", "bicubic", "--data", str(dataset), "--scale", "2", "--json", str(path)])
    assert rc == 2
    assert message.format(path=path, parent=path.parent) in capsys.readouterr().err
