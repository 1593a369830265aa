"""The verify, convert and info commands."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch

from conftest import REPO
from ribsr.build import build_sst
from ribsr.checkpoint import load_model
from ribsr.cli import main
from ribsr.config import SSTConfig

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
    from ribsr.kernels import cpu_attention

    folder = _one_case_folder(tmp_path)
    assert main(["verify", str(folder)]) == 0
    out = capsys.readouterr().out
    kernel = cpu_attention.available()
    assert f"OK: {4 if kernel else 3} runs" in out and "direct_x2_cyclic" in out
    assert ("cpu_kernel" in out) == kernel


def test_verify_default_paths_leave_out_a_kernel_that_does_not_build(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RIBSR_CPU_KERNEL", "0")
    folder = _one_case_folder(tmp_path)
    assert main(["verify", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "OK: 3 runs" in out and "cpu_kernel" not in out


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


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_convert_and_export_write_files_with_the_umask_mode(tmp_path, capsys, mask, mode):
    """Not 0600 (what the safetensors library gives the files it writes)."""
    src = FIXTURES / "pixelshuffle_x3.pth"
    network_g = json.loads((FIXTURES / "cases.json").read_text())["pixelshuffle_x3"]["network_g"]
    cfg_file = tmp_path / "opt.json"
    cfg_file.write_text(json.dumps({"network_g": network_g}))
    config = SSTConfig.from_network_g(network_g)
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    state = {"iteration": 4, "model": build_sst(config).state_dict(), "optimizer": {}, "scheduler": {},
             "options": {"name": "tiny"}, "config": config.to_json()}
    torch.save(state, run / "iter_00000004.pt")
    old = os.umask(mask)
    try:
        assert main(["convert", str(src), str(tmp_path / "c.safetensors"), "--config", str(cfg_file)]) == 0
        assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "e.safetensors")]) == 0
    finally:
        os.umask(old)
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert written == ["c.safetensors", "e.pth", "e.safetensors", "opt.json"]
    for name in ("c.safetensors", "e.safetensors", "e.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_hostile_config_metadata_is_an_error_naming_file_and_field(tmp_path, capsys):
    from safetensors.torch import save_file

    network_g = json.loads((FIXTURES / "cases.json").read_text())["pixelshuffle_x3"]["network_g"]
    tensors = build_sst(SSTConfig.from_network_g(network_g)).state_dict()
    path = tmp_path / "bad.safetensors"
    for text, problem in (("{oops", "not valid JSON"), (json.dumps({"n_blocks": 10**9}), "missing field 'dim'")):
        save_file(tensors, str(path), metadata={"ribsr_config": text})
        assert main(["info", str(path)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "metadata field 'ribsr_config'" in err and problem in err, err


@pytest.mark.parametrize("command", ["upscale", "convert"])
def test_an_option_file_without_network_g_is_an_error_naming_it(tmp_path, capsys, command):
    opt = tmp_path / "train.yml"
    opt.write_text("name: x\nscale: 3\nn_blocks: 2\ndatasets:\n  train:\n    name: T91\n")  # network_g left out
    src = str(FIXTURES / "pixelshuffle_x3.pth")
    args = {"upscale": ["upscale", src, "-o", str(tmp_path / "out"), "--model", src],
            "convert": ["convert", src, str(tmp_path / "c.safetensors")]}[command]
    assert main([*args, "--config", str(opt)]) == 2
    err = capsys.readouterr().err
    assert str(opt.name) in err and "no network_g block" in err, err


def test_verify_fails_when_a_difference_is_nan(tmp_path, capsys):
    folder = _one_case_folder(tmp_path)
    io_path = folder / "direct_x2_cyclic_io.pt"
    io = torch.load(io_path, weights_only=True)
    io["output"][0, 0, 0, 0] = float("nan")
    torch.save(io, io_path)
    assert main(["verify", str(folder), "--attention", "concat"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 1 runs, 1 with NaN or infinite differences" in out and "nan" in out


@pytest.mark.parametrize("text,problem", [("{oops", "not valid JSON"), ("[1, 2]", "expected an object"),
                                          ('{"a": {"checkpoint": "a.pth"}}', "case 'a' must be an object with a "
                                                                             "network_g object")])
def test_verify_names_a_bad_cases_json(tmp_path, capsys, text, problem):
    (tmp_path / "cases.json").write_text(text)
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cases.json") in err and problem in err, err


def _nan_checkpoint(tmp_path):
    model = build_sst(SSTConfig.from_network_g(
        json.loads((FIXTURES / "cases.json").read_text())["pixelshuffle_x3"]["network_g"]))
    state = model.state_dict()
    state["proj.weight"].view(-1)[:3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save({"params_ema": state}, path)
    return path


@pytest.mark.parametrize("command", ["info", "convert", "export-onnx", "upscale"])
def test_non_finite_weights_are_refused_by_every_command(tmp_path, capsys, command):
    src = str(_nan_checkpoint(tmp_path))
    network_g = json.loads((FIXTURES / "cases.json").read_text())["pixelshuffle_x3"]["network_g"]
    cfg = tmp_path / "opt.json"
    cfg.write_text(json.dumps({"network_g": network_g}))
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    args = {"info": ["info", src],
            "convert": ["convert", src, str(tmp_path / "c.safetensors"), "--config", str(cfg)],
            "export-onnx": ["export-onnx", src, "-o", str(tmp_path / "m.onnx"), "--config", str(cfg)],
            "upscale": ["upscale", str(image), "-o", str(tmp_path / "out"), "--model", src, "--config", str(cfg)]}
    assert main(args[command]) == 2
    err = capsys.readouterr().err
    assert "3 non-finite weights (NaN or infinite) in 1 tensor, the first in proj.weight (3 NaN" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "nan.pth", "opt.json"]


@pytest.mark.parametrize("writer", ["safetensors", "torch"])
def test_export_to_a_full_disk_is_a_clear_error(tmp_path, capsys, monkeypatch, writer):
    """What the writers raise on a full disk (measured on a full 64 KiB tmpfs): safetensors its own
    SafetensorError, torch.save a RuntimeError; both were tracebacks, and a failed .pth left the .safetensors
    of the export alone. Both files are written or neither: nothing new is left, and --overwrite keeps the old."""
    config = SSTConfig.from_network_g(json.loads((FIXTURES / "cases.json").read_text())["pixelshuffle_x3"]["network_g"])
    ckpt = tmp_path / "iter_00000004.pt"
    torch.save({"iteration": 4, "model": build_sst(config).state_dict(), "optimizer": {}, "scheduler": {},
                "options": {"name": "tiny"}, "config": config.to_json()}, ckpt)
    if writer == "safetensors":
        import safetensors.torch
        from safetensors import SafetensorError

        def full(*args, **kwargs):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(safetensors.torch, "save_file", full)
    else:
        def full(obj, f, *args, **kwargs):
            f.write(b"PK\x03\x04")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

        monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "out" / "e.safetensors"
    assert main(["export", str(ckpt), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ribsr export: error: cannot write " in err and "MiB free on the disk holding" in err, err
    assert "No space left" in err if writer == "safetensors" else "most likely the disk is full" in err
    assert sorted(p.name for p in out.parent.iterdir()) == []
    out.write_bytes(b"old export")
    out.with_suffix(".pth").write_bytes(b"old pth")
    assert main(["export", str(ckpt), "-o", str(out), "--overwrite"]) == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["e.pth", "e.safetensors"]
    assert out.read_bytes() == b"old export" and out.with_suffix(".pth").read_bytes() == b"old pth"
