"""hubconf.py through torch.hub.load(..., source="local"), compared with ribsr.build_model / ribsr.load_model."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ribsr
from ribsr.assets import NoBundledModelError, bundled_scales
from ribsr.config import PRESETS

REPO = Path(__file__).resolve().parents[1]
TINY = dict(dim=24, window_sizes=(8, 16), num_heads=(3, 3), ranks=(4, 8), n_blocks=1, rib_hidden_dim=8, rib_n_freqs=2)


def hub_load(entry: str, *args, **kwargs):
    return torch.hub.load(str(REPO), entry, *args, source="local", **kwargs)


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


@pytest.fixture
def light_pth(tmp_path) -> Path:
    """SST-light x2 weights in the paper's layout (params_ema, no config)."""
    path = tmp_path / "SST_light_x2.pth"
    torch.save({"params_ema": _perturbed(ribsr.build_model("light", scale=2)).state_dict()}, path)
    return path


def test_the_entry_points_are_what_torch_hub_list_shows():
    """torch.hub.list (GitHub only in this torch) shows the public callables of hubconf: no stray imports."""
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    listed = {name for name in dir(module) if callable(getattr(module, name)) and not name.startswith("_")}
    presets = {"sst_" + name.replace("+", "_plus") for name in PRESETS}
    assert listed == {"sst", "sst_default", "sst_real", "escrib"} | presets
    assert all(importlib.util.find_spec(name) for name in module.dependencies)


def test_fresh_network_equals_build_model():
    torch.manual_seed(3)
    model = hub_load("sst", "light", scale=3)
    torch.manual_seed(3)
    ref = ribsr.build_model("light", scale=3)
    assert model.config == ref.config and model.training
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())


def test_preset_entry_and_overrides():
    model = hub_load("sst_light_plus", scale=4, n_blocks=2)
    assert model.config == ribsr.build_model("light+", scale=4, n_blocks=2).config


def test_paper_weights_from_a_file_equal_load_models(light_pth):
    ref = ribsr.load_model(light_pth, config="light", scale=2)
    for model in (hub_load("sst", "light", scale=2, weights=str(light_pth)), hub_load("sst_light", weights=light_pth)):
        assert not model.training and model.config == ref.config
        assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())


def test_our_weights_give_load_models_output(tmp_path):
    """A .safetensors carrying its config (a small network: `light` pads every input to its 64-pixel window)."""
    path = ribsr.save_model(_perturbed(ribsr.build_model(dict(TINY), scale=3)), tmp_path / "tiny_x3.safetensors")
    model = hub_load("sst", weights=str(path))
    ref = ribsr.load_model(path)
    assert not model.training and model.config == ref.config
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))  # same weights, same code: bit for bit


def test_weights_by_url_come_from_the_cache_offline(light_pth, tmp_path, monkeypatch):
    """A URL whose file is in the torch.hub cache is read from there: the server (a closed port) is never asked."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    shutil.copy(light_pth, cache / light_pth.name)
    url = f"http://127.0.0.1:9/models/{light_pth.name}"
    model = hub_load("sst", "light", weights=url, progress=False)
    ref = ribsr.load_model(light_pth, config="light")
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())


def test_bad_arguments_are_errors(light_pth):
    with pytest.raises(ValueError, match="pass a config"):
        hub_load("sst")
    with pytest.raises(ValueError, match="overrides"):
        hub_load("sst", "light", weights=str(light_pth), n_blocks=2)


def test_bundled_model_equals_load_model_default():
    model = hub_load("sst_default", scale=2)
    ref = ribsr.load_model("default", scale=2)
    assert not model.training and model.config == ref.config
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_a_scale_without_a_bundled_model_lists_the_bundled_ones():
    assert 7 not in bundled_scales()
    with pytest.raises(NoBundledModelError, match=r"no bundled default model for x7 \(bundled: x2"):
        hub_load("sst_default", scale=7)


def test_imports_ribsr_from_src_when_it_is_not_installed():
    """Without an installed ribsr, hubconf.py puts the repository's src/ on sys.path."""
    script = f"""
import importlib.util, sys
from pathlib import Path
src = Path({str(REPO / "src")!r})
sys.path = [p for p in sys.path if Path(p or ".").resolve() != src]
if importlib.util.find_spec("ribsr") is not None:
    print("SKIP: ribsr is installed outside src/")
    raise SystemExit(0)
import torch
model = torch.hub.load({str(REPO)!r}, "sst", "light", scale=2, source="local")
import ribsr
print(type(model).__name__, Path(ribsr.__file__).resolve().parent)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/",
                          env=env)
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("SKIP"):
        pytest.skip(done.stdout.strip())
    assert done.stdout.split() == ["SST", str(REPO / "src" / "ribsr")]


def test_bundled_real_model_and_its_blend():
    model = hub_load("sst_real", scale=4)
    ref = ribsr.load_model("real", scale=4)
    assert not model.training and model.config == ref.config
    blended = hub_load("sst_real", scale=4, denoise=0.0)
    default = ribsr.load_model("default", scale=4)
    assert all(torch.equal(v, default.state_dict()[k]) for k, v in blended.state_dict().items())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
