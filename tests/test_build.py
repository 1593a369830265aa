"""ribsr.build: one resolver for preset names, dicts, YAML/JSON files and configs, and the networks it builds."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

import ribsr
from ribsr.build import build_model, build_sst, resolve_config
from ribsr.config import ATTN_TYPE_ALIASES, PRESETS, ConfigError, SSTConfig, preset
from ribsr.model import GATES, POSITIONAL, UPSAMPLERS

# A tiny network in the paper's network_g spelling (x3, so that a wrong scale cannot pass for the default x2).
TINY_G = {
    "type": "SST", "dim": 12, "window_sizes": [4, 8], "num_heads": [2, 2], "ranks": [4, 4], "n_blocks": 1,
    "exp_ratio": 1.5, "attn_type": "RIB", "rib_hidden_dim": 8, "rib_n_freqs": 2, "upscaling_factor": 3,
    "upsampler_type": "pixelshuffle_direct", "gate_type": "DWC", "intermediate_dim": 16,
}


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data) if path.suffix == ".json" else yaml.safe_dump(data))
    return path


def _specs(tmp_path: Path) -> dict[str, object]:
    """The same x3 network in every form the resolver reads."""
    fields = SSTConfig.from_network_g(TINY_G).to_dict()
    return {
        "option file": _write(tmp_path / "train_SST_x3.yml", {"name": "train", "scale": 3, "network_g": TINY_G}),
        "network_g file": _write(tmp_path / "network_g.yaml", TINY_G),
        "fields file": _write(tmp_path / "config.json", fields),
        "option dict": {"name": "train", "network_g": TINY_G},
        "network_g dict": TINY_G,
        "fields dict": fields,
        "SSTConfig": SSTConfig.from_dict(fields),
    }


KINDS = ["option file", "network_g file", "fields file", "option dict", "network_g dict", "fields dict", "SSTConfig"]


@pytest.mark.parametrize("spelling", ["base+", "base-plus", "base_plus", "BASE+", " Base_Plus "])
def test_every_entry_point_reads_preset_names_alike(spelling):
    expected = preset("base+")
    with torch.device("meta"):
        built = build_model(spelling).config
    for config in (preset(spelling), resolve_config(spelling), built):
        assert config == expected and config.name == "base+"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_input_gives_the_same_network(kind, tmp_path):
    config = resolve_config(_specs(tmp_path)[kind])
    assert config == SSTConfig.from_network_g(TINY_G) and config.scale == 3


@pytest.mark.parametrize("kind", KINDS)
def test_scale_is_honoured_for_every_kind_of_input(kind, tmp_path):
    model = build_model(_specs(tmp_path)[kind], scale=4).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 5, 6)).shape == (1, 3, 20, 24)
    assert model.config == SSTConfig.from_network_g({**TINY_G, "upscaling_factor": 4})


def test_presets_default_to_x2_and_overrides_apply_to_every_input(tmp_path):
    assert resolve_config("light").scale == 2
    assert resolve_config("light", scale=4, n_blocks=1) == preset("light", scale=4, n_blocks=1)
    config = resolve_config(_specs(tmp_path)["option file"], attn_type="rpb", n_blocks=2)
    assert (config.attn_type, config.n_blocks, config.scale) == ("RPB", 2, 3)


def test_a_file_without_a_network_says_so(tmp_path):
    path = _write(tmp_path / "datasets.yml", {"name": "x", "scale": 2, "datasets": {"train": {"type": "Paired"}}})
    with pytest.raises(ConfigError, match="no network_g block: this looks like an option file") as info:
        build_model(path)
    assert str(path) in str(info.value)


def test_file_errors_name_the_file(tmp_path):
    bad = _write(tmp_path / "bad.yml", {"network_g": {**TINY_G, "dim": -1}})
    with pytest.raises(ConfigError, match="bad.yml") as info:
        resolve_config(bad)
    assert info.value.problems == ["dim must be an integer in [1, 1024], got -1"]
    with pytest.raises(ConfigError, match=r"network.yml(.|\n)*scale \(upscaling_factor\) must be 2, 3 or 4, got 7"):
        resolve_config(_write(tmp_path / "network.yml", TINY_G), scale=7)
    (tmp_path / "list.yml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yml.*\n.*not hold a mapping"):
        resolve_config(tmp_path / "list.yml")
    with pytest.raises(FileNotFoundError, match="missing.yml"):
        resolve_config(tmp_path / "missing.yml")


def test_unknown_names_and_fields_are_listed():
    with pytest.raises(ValueError, match="'huge' is neither a preset") as info:
        build_model("huge")
    assert all(name in str(info.value) for name in PRESETS)
    with pytest.raises(ConfigError, match="unknown field 'blocks'"):
        build_model("light", blocks=2)


@pytest.mark.parametrize(
    "field,registry", [("upsampler", UPSAMPLERS), ("gate_type", GATES), ("attn_type", POSITIONAL)]
)
def test_name_errors_list_exactly_the_registry(field, registry):
    with pytest.raises(ConfigError) as info:
        preset("light", **{field: "Bogus"})
    [problem] = info.value.problems
    assert "'Bogus'" in problem
    assert ast.literal_eval(re.search(r"one of (\[[^]]*\])", problem).group(1)) == list(registry)


def test_paper_spellings_name_registered_schemes():
    assert set(ATTN_TYPE_ALIASES.values()) <= set(POSITIONAL)


@pytest.mark.parametrize("gate", [*GATES, None])
def test_every_gate_builds_a_working_network(gate):
    model = build_model(TINY_G, gate_type=gate).eval()
    gates = [m.attn.gate for m in model.modules() if isinstance(m, ribsr.model.TransformerLayer)]
    assert all(isinstance(g, GATES[gate]) for g in gates) if gate else all(g is None for g in gates)
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(1, 3, 6, 5))).all()


def test_build_sst_names_its_attention_path():
    config = SSTConfig.from_network_g(TINY_G)
    assert build_sst(config, attention="concat").attention == "concat"

    def my_attention(q, k, v, pos, ws):
        return torch.zeros_like(q)

    model = build_sst(config, attention=my_attention).eval()
    assert model.attention == "my_attention"
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 24, 24)


def _ribsr_imports(folder: str) -> dict[str, list[str]]:
    """The ribsr modules each file of ``folder`` imports (type-checking imports aside)."""
    found = {}
    for path in sorted((Path(ribsr.__file__).parent / folder).glob("*.py")):
        tree = ast.parse(path.read_text())
        names = []
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node):
                names += [sub.module or ""] if isinstance(sub, ast.ImportFrom) else []
                names += [a.name for a in sub.names] if isinstance(sub, ast.Import) else []
        found[path.name] = [n for n in names if n.startswith("ribsr")]
    return found


def test_model_modules_never_import_the_config_or_the_builders():
    """The import direction: ribsr.kernels <- ribsr.model <- ribsr.config <- ribsr.build."""
    for name, imports in _ribsr_imports("model").items():
        outside = [n for n in imports if not n.startswith(("ribsr.model", "ribsr.kernels"))]
        assert not outside, (name, outside)
    for name, imports in _ribsr_imports("kernels").items():  # compute only: nothing of the networks
        assert set(imports) <= {"ribsr.files"}, (name, imports)


def test_the_package_exports_both_networks_and_their_configs():
    import ribsr

    for name in ("SST", "SSTConfig", "ESCRIB", "ESCRIBConfig"):
        assert name in ribsr.__all__ and getattr(ribsr, name) is not None
    net = ribsr.build_model("escrib-tiny", scale=2)
    assert isinstance(net, ribsr.ESCRIB) and isinstance(net.config, ribsr.ESCRIBConfig)
