from __future__ import annotations

import pytest
import yaml

from ribsr.config import PRESETS, ConfigError, SSTConfig, preset, resolve_config


def test_presets_are_valid_for_every_scale():
    for name in PRESETS:
        for scale in (2, 3, 4):
            cfg = preset(name, scale=scale)
            assert cfg.scale == scale and cfg.name == name
            assert not cfg.shifted  # all released models cycle window sizes


def test_plus_spelling_is_accepted():
    assert preset("large_plus") == preset("large+")


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*light"):
        preset("huge")


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        SSTConfig(dim=50, num_heads=(3, 3), window_sizes=(8, 0), ranks=(4,), scale=5, upsampler="deconv")
    text = str(info.value)
    problems = info.value.problems
    assert len(problems) >= 4, problems
    assert "scale" in text and "'deconv'" in text and "window_sizes" in text


def test_heads_must_divide_dim():
    with pytest.raises(ConfigError, match=r"dim 50 is not divisible by num_heads \[3\]"):
        SSTConfig(dim=50)


def test_network_g_round_trip():
    cfg = preset("base+", scale=3)
    g = cfg.to_network_g()
    assert g["upscaling_factor"] == 3 and g["upsampler_type"] == "pixelshuffle"
    back = SSTConfig.from_network_g(g)
    assert back == cfg


def test_network_g_aliases_and_defaults():
    g = {"type": "SST", "dim": 32, "window_sizes": [8, 8], "num_heads": [2, 2], "ranks": [4, 4], "n_blocks": 1,
         "attn_type": "Naive", "upscaling_factor": 2}
    cfg = SSTConfig.from_network_g(g)
    assert cfg.attn_type == "RPB"
    assert cfg.gate_type == "none"  # the paper's class default is no gate
    assert cfg.shifted


def test_network_g_unknown_and_missing_keys_listed():
    with pytest.raises(ConfigError) as info:
        SSTConfig.from_network_g({"type": "SST", "dimm": 3, "window_sizes": [8]})
    msg = str(info.value)
    assert "'dimm'" in msg and "'dim'" in msg and "'num_heads'" in msg


def test_json_round_trip():
    cfg = preset("light", scale=4)
    assert SSTConfig.from_json(cfg.to_json()) == cfg


def test_yaml_option_file(tmp_path):
    opt = {"name": "train_SST_light_x2", "network_g": preset("light").to_network_g()}
    path = tmp_path / "opt.yml"
    path.write_text(yaml.safe_dump(opt))
    assert resolve_config(path) == preset("light")


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("network_g:\n  type: SST\n  dim: -1\n  window_sizes: [8]\n  num_heads: [1]\n  n_blocks: 1\n")
    with pytest.raises(ConfigError, match="bad.yml"):
        resolve_config(path)
    with pytest.raises(FileNotFoundError, match="missing.yml"):
        resolve_config(tmp_path / "missing.yml")


def test_resolve_preset_with_scale():
    assert resolve_config("light+", scale=3) == preset("light+", scale=3)


def test_replace_validates():
    with pytest.raises(ConfigError, match="scale"):
        preset("light").replace(scale=7)
