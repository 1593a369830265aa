"""ESC-RIB checkpoints: the paper's released format (params_ema, saved before or after its convert()), our
.safetensors round trip for every ESC-RIB preset, and what a file that does not fit its config is told."""

from __future__ import annotations

import json

import pytest
import torch

from ribsr.build import build_model
from ribsr.checkpoint import (
    CheckpointError,
    convert_checkpoint,
    describe,
    load_model,
    matching_presets,
    read_checkpoint,
    save_model,
    state_architecture,
)
from ribsr.config import ESCRIB_PRESETS, preset
from ribsr.model.esc import ESCRIB, dihedral_average

pytestmark = pytest.mark.usefixtures("one_thread")


def _perturbed(model: ESCRIB) -> ESCRIB:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k, v in sa.items():
        assert torch.equal(v, sb[k]), k


@pytest.mark.parametrize("name,scale", [(name, s) for name in ESCRIB_PRESETS for s in (2, 3, 4)])
def test_safetensors_round_trip_of_every_preset(name, scale, tmp_path):
    """config -> model -> .safetensors (the config, with its architecture, in the metadata) -> load: the same
    config, the same weights, an ESC-RIB network, no config needed."""
    model = _perturbed(build_model(name, scale=scale))
    path = save_model(model, tmp_path / f"{name}_x{scale}.safetensors")
    state, stored = read_checkpoint(path)
    assert stored == model.config and stored.name == name and stored.architecture == "ESCRIB"
    loaded = load_model(path)
    assert isinstance(loaded, ESCRIB) and loaded.config == model.config and not loaded.training
    _same_weights(loaded, model)
    assert f"{name} x{scale}" in matching_presets(state)


def test_round_trip_gives_the_same_output(tmp_path):
    model = _perturbed(build_model("escrib-tiny", scale=3))
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    x = torch.rand(1, 3, 10, 9)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("key", ["params_ema", "params"])
def test_released_pth_before_and_after_convert_load_as_they_are(key, tmp_path):
    """The paper's files: {'params_ema': state_dict}, plk_filter raw (as training saves it) or already averaged
    (after convert()); both load into the same network and give the same output."""
    model = _perturbed(build_model("escrib-tiny"))
    x = torch.rand(1, 3, 12, 11)
    with torch.no_grad():
        expected = model(x)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    folded = {**raw, "plk_filter": dihedral_average(raw["plk_filter"])}
    assert not torch.allclose(folded["plk_filter"], raw["plk_filter"])
    outputs = []
    for form, state in (("raw", raw), ("folded", folded)):
        path = tmp_path / f"ESCRIB_{form}_X2.pth"
        torch.save({key: state}, path)
        loaded = load_model(path, config="escrib-tiny")
        assert torch.equal(loaded.plk_filter, state["plk_filter"])  # loaded as it is, averaged on use
        with torch.no_grad():
            outputs.append(loaded(x))
    for out in outputs:
        assert (out - expected).abs().max() <= 1e-5


def test_a_model_saved_after_folding_reloads_alike(tmp_path):
    model = _perturbed(build_model("escrib-tiny"))
    x = torch.rand(1, 3, 9, 12)
    with torch.no_grad():
        before = model(x)
        model.fold_kernel()
        loaded = load_model(save_model(model, tmp_path / "folded.safetensors"))
        assert not loaded.folded  # averaging a folded kernel again changes it only by rounding
        assert (loaded(x) - before).abs().max() <= 1e-5


def test_module_prefix_and_network_g_config(tmp_path):
    model = _perturbed(build_model("escrib-tiny", scale=4))
    path = tmp_path / "ddp.pth"
    torch.save({"params_ema": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    loaded = load_model(path, config=model.config.to_network_g())
    assert loaded.config == model.config.replace(name=None)
    _same_weights(loaded, model)


def test_the_architecture_shows_in_the_names_and_a_wrong_one_is_named(tmp_path):
    esc = _perturbed(build_model("escrib-tiny"))
    assert state_architecture(esc.state_dict()) == "ESCRIB"
    assert state_architecture(build_model("light", n_blocks=1).state_dict()) == "SST"
    path = tmp_path / "ESCRIB_X2.pth"
    torch.save({"params_ema": esc.state_dict()}, path)
    with pytest.raises(CheckpointError, match="carries no configuration") as info:
        load_model(path)
    text = str(info.value)
    assert "escrib-tiny x2" in text and "ESCRIB's (plk_filter, blocks.N.pconvs.*)" in text and "ESC-RIB" in text
    with pytest.raises(CheckpointError, match=r"architecture: the config is SST, the weights are ESCRIB"):
        load_model(path, config="light")
    sst = tmp_path / "SST.pth"
    torch.save({"params_ema": build_model("light", n_blocks=1).state_dict()}, sst)
    with pytest.raises(CheckpointError, match=r"architecture: the config is ESCRIB, the weights are SST"):
        load_model(sst, config="escrib")


def test_a_config_of_other_sizes_lists_every_field_the_shapes_contradict(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"params_ema": _perturbed(build_model("escrib-tiny")).state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path, config=preset("escrib-tiny", pdim=8, conv_blocks=3, n_blocks=1, rank=6, exp_ratio=2.0))
    text = str(info.value)
    for needle in ("pdim, kernel_size: the config says 8, 5, plk_filter is (4, 4, 5, 5)", "n_blocks: the config says 1",
                   "conv_blocks: the config says 3", "rank: the config says 6", "exp_ratio: the config's 2.0",
                   "it fits preset(s): escrib-tiny x2"):
        assert needle in text, needle


def test_scale_change_needs_the_opt_in(tmp_path):
    path = tmp_path / "x2.pth"
    torch.save({"params_ema": _perturbed(build_model("escrib-tiny")).state_dict()}, path)
    with pytest.raises(CheckpointError, match="holds x2 weights, but scale 4"):
        load_model(path, config="escrib-tiny", scale=4)
    resized = load_model(path, config="escrib-tiny", scale=4, resize_upsampler=True)
    assert resized.config.scale == 4 and resized.upsampler.up_conv.weight.shape[0] == 48


def test_convert_and_describe(tmp_path):
    src = tmp_path / "ESCRIB_X3.pth"
    model = _perturbed(build_model("escrib-tiny", scale=3))
    torch.save({"params_ema": model.state_dict()}, src)
    dst = convert_checkpoint(src, tmp_path / "escrib_x3.safetensors", config="escrib-tiny")
    from safetensors import safe_open

    with safe_open(str(dst), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["ribsr_config"])["architecture"] == "ESCRIB" and meta["source"] == src.name
    loaded = load_model(dst)
    _same_weights(loaded, model)
    assert describe(loaded).startswith("ESCRIB escrib-tiny x3 (0.0")
