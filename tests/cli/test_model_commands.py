"""The verify, convert and info commands."""

from __future__ import annotations

import json
import shutil

import torch

from conftest import REPO
from ribsr.checkpoint import load_model
from ribsr.cli import main

FIXTURES = REPO / "tests" / "fixtures" / "official"


def _one_case_folder(tmp_path, name="direct_x2_cyclic"):
    cases = json.loads((FIXTURES / "cases.json").read_text())
    folder = tmp_path / "fx"
    folder.mkdir()
    for suffix in (".pth", "_io.pt"):
        shutil.copy(FIXTURES / f"{name}{suffix}", folder / f"{name}{suffix}")
    (folder / "cases.json").write_text(json.dumps({name: cases[name]}))
    return folder


def test_verify_passes_on_reference_cases(tmp_path, capsys):
    folder = _one_case_folder(tmp_path)
    assert main(["verify", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "OK: 3 runs" in out and "direct_x2_cyclic" in out


def test_verify_fails_when_the_output_differs(tmp_path, capsys):
    folder = _one_case_folder(tmp_path)
    io_path = folder / "direct_x2_cyclic_io.pt"
    io = torch.load(io_path, weights_only=True)
    io["output"] = io["output"] + 1e-3
    torch.save(io, io_path)
    assert main(["verify", str(folder), "--attention", "concat"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_verify_names_a_missing_folder(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_convert_then_info(tmp_path, capsys):
    src = FIXTURES / "pixelshuffle_x3.pth"
    network_g = json.loads((FIXTURES / "cases.json").read_text())["pixelshuffle_x3"]["network_g"]
    cfg_file = tmp_path / "opt.json"
    cfg_file.write_text(json.dumps({"network_g": network_g}))
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(dst), "--config", str(cfg_file)]) == 0
    assert load_model(dst).config.scale == 3
    assert main(["convert", str(src), str(dst), "--config", str(cfg_file)]) == 2  # no clobbering
    assert "--overwrite" in capsys.readouterr().err
    assert main(["info", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "config:" in out and "pixelshuffle x3" in out
