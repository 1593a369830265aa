"""YAML files users give (option files, --config files): alias bombs, huge files, binary files and values Python
cannot build are refused with the file named, before any value is built or walked."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from ribsr.build import resolve_config
from ribsr.cli import main
from ribsr.config import ConfigError
from ribsr.safeyaml import MAX_BYTES, YAMLFileError, YAMLLimitError, expanded_size, load_yaml_text, read_yaml
from ribsr.train.options import OptionsError, load_options


def _bomb(levels: int, width: int = 9) -> str:
    """The 'billion laughs': each anchor a list of ``width`` aliases of the one before (width**levels values)."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_expanded_size_counts_aliases_without_expanding_them() -> None:
    node = yaml.compose("a: &x [1, 2]\nb: *x\nc: [*x, *x]\n")
    # the mapping, its 3 keys, [1, 2] (3 nodes) as a and b, and c: a list holding it twice
    assert expanded_size(node) == 1 + 3 + 3 + 3 + (1 + 2 * 3)
    t0 = time.perf_counter()
    with pytest.raises(YAMLLimitError, match="more than 100,000 values once its aliases"):
        expanded_size(yaml.compose(_bomb(12)))  # 9**12 values: counted, never built
    assert time.perf_counter() - t0 < 0.5


def test_a_value_that_holds_itself_is_refused() -> None:
    with pytest.raises(YAMLLimitError, match="alias refers to a value that holds it"):
        load_yaml_text("a: &a [1, *a]\n")


def test_an_option_file_with_an_unused_alias_bomb_is_refused(tmp_path: Path, capsys) -> None:
    """Even aliases no option reads hung the loader (the overrides copy walked the whole expanded value)."""
    path = tmp_path / "bomb.yml"
    path.write_text(_bomb(6) + "name: x\nscale: 2\nnetwork_g: {type: SST}\n")  # 531,441 values once expanded
    assert len(path.read_bytes()) < 700
    with pytest.raises(OptionsError) as info:
        load_options(path)
    assert info.value.source == str(path)
    assert info.value.problems[0].startswith("the document stands for more than 100,000 values")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "billion laughs" in err


def test_a_config_file_with_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    """The config error repr()ed the expanded value it complained about."""
    path = tmp_path / "bomb.yml"
    path.write_text(_bomb(6) + "network_g:\n  type: SST\n  embed_dim: *a5\n")
    with pytest.raises(ConfigError, match="more than 100,000 values") as info:
        resolve_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("content", "message"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text (byte 0x89 at offset 0): a binary file?"),
    (b"network_g:\n  type: SST\n  embed_dim: " + b"9" * 5000 + b"\n", "holds a value that cannot be read (Exceeds"),
    (b"[" * 700 + b"]" * 700, "nested too deeply"),
    (b"a: b\n" * (MAX_BYTES // 5 + 1), "bytes, more than the 1,048,576"),
])
def test_unreadable_yaml_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_bytes(content)
    with pytest.raises(YAMLFileError, match="config file") as info:
        read_yaml(path, "config file")
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), info.value
    with pytest.raises(ConfigError) as config_info:
        resolve_config(path)
    assert str(path) in str(config_info.value) and message in str(config_info.value)
    with pytest.raises(OptionsError) as options_info:
        load_options(path)
    assert options_info.value.source == str(path) and message in options_info.value.problems[0]


def test_an_option_file_with_a_nul_byte_is_named(tmp_path: Path) -> None:
    """PyYAML's reader refuses it while the loader is made (outside the try): it was a traceback."""
    path = tmp_path / "nul.yml"
    path.write_bytes(b"name: x\x00\n")
    with pytest.raises(OptionsError) as info:
        load_options(path)
    assert info.value.source == str(path) and info.value.problems[0].startswith("not valid YAML: unacceptable")


def test_an_override_alias_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "opt.yml"
    path.write_text("name: x\nscale: 2\nnetwork_g: {type: SST}\n")
    bomb = "[" + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}" if i else "1"] * 9) + "]" for i in range(7)) + "]"
    with pytest.raises(OptionsError) as info:
        load_options(path, [f"val={bomb}"])
    assert any(p.startswith("--set 'val=[&a0") and "more than 100,000 values" in p for p in info.value.problems)
