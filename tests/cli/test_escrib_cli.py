"""ribsr upscale, evaluate and info with an ESC-RIB checkpoint: the generic load path, a released-format .pth with
--config and our .safetensors without."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ribsr.build import build_model
from ribsr.checkpoint import save_model
from ribsr.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny x2 ESC-RIB with random weights, as the paper's .pth and as our .safetensors."""
    root = tmp_path_factory.mktemp("escrib_ckpt")
    torch.manual_seed(1)
    model = build_model("escrib-tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    torch.save({"params_ema": model.state_dict()}, root / "ESCRIB_tiny_X2.pth")
    save_model(model.eval(), root / "escrib_tiny_x2.safetensors")
    return model, root / "ESCRIB_tiny_X2.pth", root / "escrib_tiny_x2.safetensors"


def _image(path, size=(21, 17)):
    y, x = np.mgrid[0:size[1], 0:size[0]]
    arr = np.stack([(y * 9) % 256, (x * 7) % 256, (x * y) % 256], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def test_upscale_with_the_released_pth_and_with_safetensors(checkpoints, tmp_path):
    model, pth, st = checkpoints
    arr = _image(tmp_path / "in.png")
    with torch.no_grad():
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
        expected = (model(x).clamp(0, 1)[0].permute(1, 2, 0) * 255).round().numpy()
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "a"), "--model", str(pth),
                 "--config", "escrib-tiny"]) == 0
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "b"), "--model", str(st)]) == 0
    for out in ("a", "b"):
        got = np.asarray(Image.open(tmp_path / out / "in_x2.png"), dtype=np.float64)
        assert got.shape == (34, 42, 3) and np.abs(got - expected).max() <= 1


def test_upscale_without_a_config_names_the_architecture(checkpoints, tmp_path, capsys):
    _, pth, _ = checkpoints
    _image(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o"), "--model", str(pth)]) != 0
    err = capsys.readouterr().err
    assert "carries no configuration" in err and "escrib-tiny x2" in err and "ESCRIB's" in err


def test_evaluate_and_info(checkpoints, tmp_path, capsys):
    _, pth, st = checkpoints
    _image(tmp_path / "Mini" / "HR" / "pattern.png", size=(30, 34))
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(st), "--data", str(tmp_path / "Mini"), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["scale"] == 2 and row["images"] == 1 and np.isfinite(row["psnr"])
    capsys.readouterr()
    assert main(["info", str(pth)]) == 0
    text = capsys.readouterr().out
    assert "ESC-RIB, dim=16, pdim=4, kernel_size=5, n_blocks=2, conv_blocks=2" in text
    assert "presets that fit: escrib-tiny x2" in text
