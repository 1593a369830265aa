"""``ribsr export-onnx`` end to end, and ``ribsr upscale --model FILE.onnx`` against the checkpoint it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ribsr.cli import main

pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[dev]' or 'ribsr[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[dev]' or 'ribsr[onnx]')")

from ribsr.onnx import OnnxModel  # noqa: E402  (after the skips: needs onnxruntime)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> Path:
    """``tiny_checkpoint`` (x2, windows 4 and 8) exported by the command."""
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert main(["export-onnx", str(tiny_checkpoint), "-o", str(out)]) == 0
    return out


def test_export_writes_a_runnable_file(exported, capsys) -> None:
    model = OnnxModel(exported)
    assert model.info.scale == 2 and model.info.multiple_of == 8
    assert model.metadata["source"] == "tiny_x2.safetensors"


def test_export_refuses_to_overwrite(exported, tiny_checkpoint, capsys) -> None:
    before = exported.read_bytes()
    assert main(["export-onnx", str(tiny_checkpoint), "-o", str(exported)]) == 2
    assert "exists (use --overwrite)" in capsys.readouterr().err
    assert exported.read_bytes() == before


def test_export_refuses_an_onnx_input(exported, tmp_path, capsys) -> None:
    assert main(["export-onnx", str(exported), "-o", str(tmp_path / "again.onnx")]) == 2
    assert "is already an ONNX file" in capsys.readouterr().err


def test_export_fp16_and_scale_check(tiny_checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "half.onnx"
    assert main(["export-onnx", str(tiny_checkpoint), "-o", str(out), "--fp16", "--opset", "18"]) == 0
    assert "float16" in capsys.readouterr().out
    assert OnnxModel(out).input_type == "float16"
    assert main(["export-onnx", str(tiny_checkpoint), "-o", str(tmp_path / "x4.onnx"), "--scale", "4"]) == 2
    assert "scale 4" in capsys.readouterr().err  # the loader's check: the file holds x2 weights
    assert not (tmp_path / "x4.onnx").exists()


@pytest.mark.parametrize("tile", ["0", "16"])
def test_upscale_onnx_equals_checkpoint(exported, tiny_checkpoint, tmp_path, tile) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (29, 37, 3)).astype(np.uint8)).save(tmp_path / "img.png")
    outputs = []
    for name, model in (("onnx", exported), ("torch", tiny_checkpoint)):
        args = ["upscale", str(tmp_path / "img.png"), "-o", str(tmp_path / name), "--model", str(model),
                "--tile", tile, "--batch-size", "2"]
        assert main(args) == 0
        with Image.open(tmp_path / name / "img_x2.png") as im:
            outputs.append(np.asarray(im).astype(int))
    assert outputs[0].shape == (58, 74, 3)
    assert np.abs(outputs[0] - outputs[1]).max() <= 1  # 1e-4 apart before rounding to 8 bits


def test_upscale_onnx_rejects_config_and_other_scale(exported, tmp_path, capsys) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    base = ["upscale", str(tmp_path / "img.png"), "-o", str(tmp_path / "out"), "--model", str(exported)]
    assert main([*base, "--config", "light"]) == 2
    assert "--config does not apply" in capsys.readouterr().err
    assert main([*base, "--scale", "4"]) == 2  # the scale comes from the file's metadata
    assert "--scale 4 asked for, but the model upscales x2" in capsys.readouterr().err
    assert not (tmp_path / "out" / "img_x4.png").exists()
