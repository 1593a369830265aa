"""The ESC-RIB entry point of hubconf.py through torch.hub.load(..., source="local"), against ribsr's own loaders."""

from __future__ import annotations

from pathlib import Path

import torch

import ribsr
from ribsr.config import preset
from ribsr.model import ESCRIB

REPO = Path(__file__).resolve().parents[1]


def hub_load(entry: str, *args, **kwargs):
    return torch.hub.load(str(REPO), entry, *args, source="local", **kwargs)


def test_fresh_escrib_is_the_published_network():
    model = hub_load("escrib", scale=3)
    assert isinstance(model, ESCRIB) and model.training and model.config == preset("escrib", scale=3)
    assert sum(p.numel() for p in model.parameters()) == 1_016_451


def test_released_weights_load_as_load_model_loads_them(tmp_path):
    torch.manual_seed(2)
    source = ribsr.build_model("escrib")
    path = tmp_path / "ESCRIB_DFLIP_X2.pth"
    torch.save({"params_ema": source.state_dict()}, path)
    model = hub_load("escrib", weights=str(path))
    ref = ribsr.load_model(path, config="escrib")
    assert not model.training and model.config == ref.config == preset("escrib")
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())


def test_our_safetensors_through_the_generic_entry(tmp_path):
    path = ribsr.save_model(ribsr.build_model("escrib-tiny", scale=4).eval(), tmp_path / "tiny.safetensors")
    model = hub_load("sst", weights=str(path))
    assert isinstance(model, ESCRIB) and model.config == preset("escrib-tiny", scale=4)
    x = torch.rand(1, 3, 9, 10)
    with torch.no_grad():
        assert torch.equal(model(x), ribsr.load_model(path)(x))
