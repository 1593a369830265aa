from __future__ import annotations

import json

import pytest

from ribsr.build import resolve_config
from ribsr.config import LIMITS, PRESETS, ConfigError, SSTConfig, preset

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


@pytest.mark.parametrize(
    "field,value,shown",
    [
        ("exp_ratio", float("nan"), "nan"),
        ("exp_ratio", float("inf"), "inf"),
        ("exp_ratio", -float("inf"), "-inf"),
        ("exp_ratio", 1e-9, "1e-09"),
        ("exp_ratio", -1.5, "-1.5"),
        ("exp_ratio", 1e6, "1000000.0"),
        ("exp_ratio", True, "True"),
        ("exp_ratio", "1.5", "'1.5'"),
        ("n_blocks", 10**9, "1000000000"),
        ("n_blocks", 0, "0"),
        ("n_blocks", 2.0, "2.0"),
        ("n_blocks", True, "True"),
        ("dim", 10**6, "1000000"),
        ("dim", 24.0, "24.0"),
        ("dim", True, "True"),
        ("intermediate_dim", 10**7, "10000000"),
        ("rib_hidden_dim", 10**7, "10000000"),
        ("rib_n_freqs", 10**4, "10000"),
        ("rib_n_freqs", -1, "-1"),
        ("window_sizes", (100000, 16), "[100000, 16]"),
        ("window_sizes", (8, 16.0), "[8, 16.0]"),
        ("num_heads", (3, 10**6), "[3, 1000000]"),
        ("ranks", (4, 10**6), "[4, 1000000]"),
        ("ranks", (True, 8), "[True, 8]"),
        ("scale", 2.0, "2.0"),
        ("scale", True, "True"),
        ("scale", 10**9, "1000000000"),
    ],
)
def test_out_of_range_and_non_finite_values_are_refused(field, value, shown):
    """Every numeric field is bounded (non-finite, absurd, non-integer and bool values refused), naming the
    field and the value; nothing is allocated for the value."""
    with pytest.raises(ConfigError) as info:
        SSTConfig(**{**SIZES, field: value})
    text = str(info.value)
    assert field in text and shown in text, text


def test_the_bounds_admit_every_preset_and_are_listed_in_the_docs():
    for name in PRESETS:
        for scale in (2, 3, 4):
            assert not preset(name, scale=scale).problems()
    doc = SSTConfig.__doc__
    for key, (lo, hi) in LIMITS.items():
        assert f"{lo}..{hi}" in doc or f"[{lo}, {hi}]" in doc, key


def test_per_layer_lists_are_bounded_in_length_and_huge_values_are_shown_short():
    with pytest.raises(ConfigError) as info:
        SSTConfig(**{**SIZES, "window_sizes": (8,) * 10**6, "num_heads": 3, "ranks": (10**5000,)})
    text = str(info.value)
    assert "window_sizes must be a list of 1 to 32" in text and "(1000000 items)" in text
    assert "ranks" in text and len(text) < 1000, text


def test_an_int_for_a_list_and_names_of_the_wrong_type_are_config_errors():
    with pytest.raises(ConfigError) as info:  # was a TypeError (len of an int), then unhashable-list errors
        SSTConfig(**{**SIZES, "window_sizes": 8, "num_heads": 3, "attn_type": ["RIB"], "upsampler": {}})
    text = str(info.value)
    assert "window_sizes" in text and "attn_type must be a name" in text and "upsampler must be a name" in text


def test_exp_ratio_must_leave_the_feed_forward_layer_channels():
    with pytest.raises(ConfigError, match="no channels"):
        SSTConfig(**{**SIZES, "dim": 6, "num_heads": (3, 3), "exp_ratio": 0.125})


@pytest.mark.parametrize(
    "text,problem",
    [("{not json", "not valid JSON"), ("[1, 2]", "must be an object"), ("1" * 5000, "not valid JSON"),
     ("[" * 100000, "not valid JSON"),
     (json.dumps({**preset("light").to_dict(), "dim": "48"}), "dim must be an integer")],
)
def test_from_json_names_the_source_and_the_problem(text, problem):
    with pytest.raises(ConfigError) as info:
        SSTConfig.from_json(text, source="m.safetensors")
    assert "m.safetensors" in str(info.value) and problem in str(info.value)


def test_mixed_key_types_are_listed_not_a_type_error():
    with pytest.raises(ConfigError, match="unknown field 1"):
        SSTConfig.from_dict({**SIZES, 1: 2, "colour": "red"})
    with pytest.raises(ConfigError, match="unknown network_g key 1"):
        SSTConfig.from_network_g({**SIZES, 1: 2, "colour": "red"})
