"""ESCRIBConfig: the published preset, the paper's network_g spelling and defaults, validation, and the JSON that
names its architecture (the shared NetworkConfig machinery, and the resolver in ribsr.build)."""

from __future__ import annotations

import json

import pytest
import yaml

from ribsr.build import resolve_config
from ribsr.config import (
    ARCHITECTURES,
    ESCRIB_LIMITS,
    ESCRIB_PRESETS,
    ConfigError,
    ESCRIBConfig,
    ESCRIBConfigError,
    SSTConfig,
    config_from_dict,
    config_from_json,
    preset,
)

# network_g of the paper's options/test/ESCRIB_X2.yaml (X3 and X4 differ only in upscaling_factor).
ESCRIB_X2_G = {
    "type": "ESCRIB", "dim": 64, "pdim": 16, "kernel_size": 13, "n_blocks": 5, "conv_blocks": 5, "window_size": 64,
    "num_heads": 4, "upscaling_factor": 2, "exp_ratio": 1.25, "attn_type": "RIB", "rank": 16, "rib_hidden_dim": 32,
    "rib_n_freqs": 10, "gate_type": "DWC",
}
TINY = {k: v for k, v in ESCRIB_PRESETS["escrib-tiny"].items()}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_preset_is_the_published_network_g(scale):
    config = preset("escrib", scale=scale)
    assert isinstance(config, ESCRIBConfig) and config.name == "escrib" and config.scale == scale
    assert ESCRIBConfig.from_network_g({**ESCRIB_X2_G, "upscaling_factor": scale}) == config
    assert config.window_sizes == (64,) and config.ffn_hidden == 80 and not config.use_ln


@pytest.mark.parametrize("spelling", ["escrib", "ESCRIB", "ESC-RIB", " esc_rib "])
def test_preset_spellings(spelling):
    assert preset(spelling).name == "escrib" and resolve_config(spelling, scale=4) == preset("escrib", 4)
    assert preset("ESCRIB_tiny").name == "escrib-tiny"


def test_network_g_round_trip_and_the_papers_defaults():
    config = preset("escrib-tiny", scale=3)
    assert ESCRIBConfig.from_network_g(config.to_network_g()) == config
    bare = {k: ESCRIB_X2_G[k] for k in ("dim", "pdim", "kernel_size", "n_blocks", "conv_blocks", "window_size",
                                       "num_heads")}
    defaults = ESCRIBConfig.from_network_g(bare)
    # the paper's ESCRIB class: attn_type 'Flex' (an RPB), rank 256 - head dim, RIB hidden 64, exp_ratio 2, no gate
    assert (defaults.attn_type, defaults.rank, defaults.rib_hidden_dim, defaults.exp_ratio, defaults.gate_type,
            defaults.scale, defaults.upsampler) == ("RPB", 240, 64, 2.0, "none", 2, "pixelshuffle_direct")
    nulls = ESCRIBConfig.from_network_g({**bare, "rank": None, "flashbias_rank": 8, "rib_hidden_dim": None,
                                         "gate_type": None, "attn_type": "Flex"})
    assert (nulls.rank, nulls.rib_hidden_dim, nulls.gate_type, nulls.attn_type) == (8, 32, "none", "RPB")


def test_network_g_unknown_and_missing_keys_listed():
    with pytest.raises(ESCRIBConfigError) as info:
        ESCRIBConfig.from_network_g({"type": "ESCRIB", "dim": 64, "windows": 64})
    text = str(info.value)
    assert "unknown network_g key 'windows'" in text
    for key in ("pdim", "kernel_size", "n_blocks", "conv_blocks", "window_size", "num_heads"):
        assert f"missing network_g key {key!r}" in text


def test_every_problem_is_listed_at_once():
    bad = {**TINY, "dim": 12, "pdim": 16, "kernel_size": 6, "num_heads": 5, "conv_blocks": 0, "use_ln": "yes",
           "exp_ratio": float("nan"), "scale": 5, "attn_type": "CPE", "gate_type": "Bogus", "rank": 10**6}
    with pytest.raises(ConfigError) as info:
        ESCRIBConfig(**bad)
    assert isinstance(info.value, ESCRIBConfigError)
    text = str(info.value)
    assert text.startswith("invalid ESC-RIB configuration")
    for needle in ("pdim 16 exceeds dim 12", "kernel_size must be odd", "not divisible by num_heads 5",
                   "conv_blocks must be an integer in [1, 32], got 0", "use_ln must be true or false",
                   "exp_ratio must be a finite number", "scale (upscaling_factor) must be 2, 3 or 4",
                   "attn_type CPE", "gate_type must be one of", "rank must be an integer in [1, 256]"):
        assert needle in text, needle
    assert len(info.value.problems) == 10


def test_bounds_admit_the_presets_and_are_in_the_docstring():
    for name in ESCRIB_PRESETS:
        for scale in (2, 3, 4):
            assert not preset(name, scale=scale).problems()
    for key, (lo, hi) in ESCRIB_LIMITS.items():
        assert f"{lo}..{hi}" in ESCRIBConfig.__doc__ or f"[{lo}, {hi}]" in ESCRIBConfig.__doc__, key


def test_json_names_the_architecture_and_is_read_back_by_it():
    config = preset("escrib", scale=4)
    data = json.loads(config.to_json())
    assert data["architecture"] == "ESCRIB" and ARCHITECTURES["ESCRIB"] is ESCRIBConfig
    assert config_from_json(config.to_json()) == config and ESCRIBConfig.from_json(config.to_json()) == config
    # SST's JSON, as every file written before ESC-RIB, names none and is read as SST
    sst = preset("light")
    assert "architecture" not in json.loads(sst.to_json()) and config_from_json(sst.to_json()) == sst
    assert config_from_dict({**sst.to_dict(), "architecture": "SST"}) == sst


def test_json_of_one_architecture_is_not_read_as_another():
    with pytest.raises(ConfigError, match="architecture must be 'SST' for SSTConfig, got 'ESCRIB'"):
        SSTConfig.from_json(preset("escrib").to_json(), source="m.safetensors")
    with pytest.raises(ConfigError, match=r"architecture must be one of \['SST', 'ESCRIB'\], got 'ESC'"):
        config_from_json(json.dumps({**preset("escrib").to_dict(), "architecture": "ESC"}))
    with pytest.raises(ESCRIBConfigError, match="m.safetensors") as info:
        config_from_json(json.dumps({**preset("escrib").to_dict(), "pdim": 1}), source="m.safetensors")
    assert "pdim must be an integer in [2, 1024], got 1" in str(info.value)


def test_replace_validates_and_keeps_the_class():
    config = preset("escrib").replace(n_blocks=2)
    assert isinstance(config, ESCRIBConfig) and config.n_blocks == 2 and config.name == "escrib"
    with pytest.raises(ESCRIBConfigError, match="kernel_size"):
        config.replace(kernel_size=14)


def test_the_resolver_reads_every_form(tmp_path):
    expected = preset("escrib", scale=3)
    g = {**ESCRIB_X2_G, "upscaling_factor": 3}
    option_file = tmp_path / "ESCRIB_X3.yml"
    option_file.write_text(yaml.safe_dump({"name": "ESCRIB_X3", "scale": 3, "network_g": g}))
    fields_file = tmp_path / "config.json"
    fields_file.write_text(expected.to_json())
    for spec in (option_file, fields_file, g, {"network_g": g}, expected.to_dict(), expected):
        assert resolve_config(spec) == expected, spec
    assert resolve_config(g, n_blocks=1) == expected.replace(n_blocks=1)
    with pytest.raises(ESCRIBConfigError, match="unknown field 'window_sizes'.*'window_size'"):
        resolve_config("escrib", window_sizes=(8,))
    with pytest.raises(ConfigError, match="unknown field 'pdim'"):
        resolve_config("light", pdim=4)
