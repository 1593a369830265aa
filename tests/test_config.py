from __future__ import annotations

import pytest

from ribsr.config import PRESETS, ConfigError, SSTConfig, preset, resolve_config

SIZES = dict(dim=24, window_sizes=(8, 16), num_heads=(3, 3), ranks=(4, 8), n_blocks=1)


def test_presets_cycle_window_sizes_at_every_scale():
    for name in PRESETS:
        for scale in (2, 3, 4):
            cfg = preset(name, scale=scale)
            assert (cfg.scale, cfg.name) == (scale, name)
            assert not cfg.shifted  # all released models cycle window sizes


def test_unknown_preset_names_every_choice():
    with pytest.raises(ValueError, match="unknown preset 'huge'") as info:
        preset("huge")
    assert all(repr(name) in str(info.value) for name in PRESETS)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        SSTConfig(dim=48, num_heads=(3, 3), window_sizes=(8, 0), ranks=(4,), n_blocks=0, scale=5, upsampler="deconv")
    problems = info.value.problems
    assert len(problems) == 5, problems  # n_blocks, scale, upsampler, window_sizes, the lengths
    text = str(info.value)
    assert "n_blocks" in text and "scale" in text and "'deconv'" in text and "[8, 0]" in text and "lengths" in text


def test_heads_must_divide_dim():
    with pytest.raises(ConfigError, match=r"dim 50 is not divisible by num_heads \[3\]"):
        SSTConfig(**{**SIZES, "dim": 50})


def test_size_fields_have_no_defaults():
    with pytest.raises(ConfigError) as info:
        SSTConfig.from_dict({"dim": 24, "colour": "red"}, source="cfg.json")
    assert "cfg.json" in str(info.value)
    assert sorted(info.value.problems) == [
        "missing field 'n_blocks'", "missing field 'num_heads'", "missing field 'ranks'",
        "missing field 'window_sizes'", "unknown field 'colour'",
    ]


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


def test_resolve_config_is_still_importable_from_config():
    assert resolve_config("light+", scale=3) == preset("light+", scale=3)


def test_replace_validates():
    with pytest.raises(ConfigError, match="scale"):
        preset("light").replace(scale=7)
