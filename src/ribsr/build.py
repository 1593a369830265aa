"""Building SST networks: one resolver from what users pass (a preset name, a dict, a YAML/JSON file, an
:class:`~ribsr.config.SSTConfig`) to a config, and the builder that turns a config into modules.

Imports go one way: ``ribsr.model`` (modules and their registries) <- ``ribsr.config`` (reads the
registries' names) <- ``ribsr.build`` (reads the config, builds the modules) <- ``ribsr.checkpoint``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ribsr.config import NETWORK_G_KEYS, PRESETS, ConfigError, SSTConfig, preset, preset_name
from ribsr.model.attention import AttentionFn, WindowAttention, make_backend
from ribsr.model.layers import GATES, ConvFFN
from ribsr.model.positional import POSITIONAL
from ribsr.model.sst import DEFAULT_BIAS_CACHE_BYTES, SST, ResidualBlock, TransformerLayer
from ribsr.model.upsampler import UPSAMPLERS

ConfigSpec = str | Path | Mapping[str, Any] | SSTConfig

CONFIG_SUFFIXES = (".yml", ".yaml", ".json")

# Keys that make a mapping describe a network (a network_g block or SSTConfig fields); name and scale alone
# do not (a training option file has both at its top level).
_FIELDS = frozenset(f.name for f in dataclasses.fields(SSTConfig))
_NETWORK_KEYS = (NETWORK_G_KEYS | _FIELDS) - {"name", "scale", "type"}
# Top-level keys of the paper's (BasicSR) option files: a mapping with one of them and no network_g is an
# option file that lacks its network.
_OPTION_FILE_KEYS = frozenset({"datasets", "train", "val", "logger", "path", "manual_seed", "network_d"})
# Keys only the paper's network_g blocks use: a mapping with one of them is read as network_g.
_PAPER_ONLY_KEYS = frozenset({"type", "upscaling_factor", "upsampler_type"})


# ------------------------------------------------------------------------------------------ resolving
def resolve_config(spec: ConfigSpec, scale: int | None = None, **overrides: Any) -> SSTConfig:
    """The :class:`SSTConfig` that ``spec`` describes.

    ``spec`` is a preset name (any spelling :func:`~ribsr.config.preset_name` accepts), an ``SSTConfig``,
    a mapping (see :func:`config_from_mapping`), or the path of a YAML/JSON file holding such a mapping
    (the paper's option files included). ``scale``, when given, sets the scale whatever the input (presets
    default to x2, the others keep theirs); ``overrides`` replace fields (e.g. ``n_blocks=2``).
    """
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise ConfigError([f"unknown field {k!r} (the fields: {sorted(_FIELDS)})" for k in unknown])
    source = None
    if isinstance(spec, SSTConfig):
        config = spec
    elif isinstance(spec, Mapping):
        config = config_from_mapping(spec)
    else:
        key = preset_name(str(spec))
        if key is not None:
            return preset(key, scale=2 if scale is None else scale, **overrides)
        path = Path(spec)
        if path.suffix.lower() not in CONFIG_SUFFIXES and not path.exists():
            raise ValueError(
                f"config {str(spec)!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an existing "
                "YAML/JSON file"
            )
        source = str(path)
        config = config_from_mapping(_read_mapping(path), source)
    changes = dict(overrides) if scale is None else {**overrides, "scale": scale}
    if not changes:
        return config
    try:
        return config.replace(**changes)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None


def config_from_mapping(data: Mapping[str, Any], source: str | None = None) -> SSTConfig:
    """The config in a mapping: an option file's contents (its ``network_g`` block is used), a bare
    ``network_g`` block (it has ``type``, ``upscaling_factor`` or ``upsampler_type``), or SSTConfig fields.

    ``source`` (a file name) is named in the errors.
    """
    if "network_g" in data:
        return SSTConfig.from_network_g(data["network_g"], source)
    option_keys = sorted(_OPTION_FILE_KEYS & set(data))
    if option_keys:  # a training option file (it has no network fields at its top level)
        raise ConfigError(
            [f"no network_g block: this looks like an option file (it has {option_keys}), and its network "
             f"is described by network_g; keys: {sorted(map(str, data))}"],
            source,
        )
    if not _NETWORK_KEYS & set(data):
        raise ConfigError(
            [f"no network_g block and no network fields (such as dim, window_sizes, num_heads); keys: "
             f"{sorted(map(str, data))}"],
            source,
        )
    if _PAPER_ONLY_KEYS & set(data):
        return SSTConfig.from_network_g(data, source)
    return SSTConfig.from_dict(data, source)


def _read_mapping(path: Path) -> Mapping[str, Any]:
    if not path.is_file() and not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    from ribsr.safeyaml import YAMLFileError, read_yaml

    try:
        data = read_yaml(path, "config file")  # JSON is YAML too; bounded in size and in alias expansion
    except YAMLFileError as exc:
        raise ConfigError([exc.detail], str(path)) from None
    if not isinstance(data, Mapping):
        raise ConfigError([f"the file does not hold a mapping (got {type(data).__name__})"], str(path))
    return data


# ------------------------------------------------------------------------------------------ building
def build_model(
    spec: ConfigSpec = "light", scale: int | None = None, attention: str = "auto", **overrides: Any
) -> SST:
    """A freshly initialised SST for ``spec`` (see :func:`resolve_config`), e.g. ``build_model("base+", scale=4)``.

    ``scale`` sets the scale for every kind of ``spec``; ``overrides`` replace config fields;
    ``attention`` names the attention path (see :func:`ribsr.model.attention.make_backend`).
    """
    return build_sst(resolve_config(spec, scale=scale, **overrides), attention=attention)


def build_sst(
    config: SSTConfig,
    attention: str | AttentionFn = "auto",
    bias_cache_bytes: int = DEFAULT_BIAS_CACHE_BYTES,
) -> SST:
    """The SST network ``config`` describes, freshly initialised.

    ``attention`` is a backend name or an attention function; it changes speed and memory, never the
    parameters. ``bias_cache_bytes`` bounds the dense positional biases kept between eval calls.
    """
    backend = make_backend(attention) if isinstance(attention, str) else attention
    name = attention if isinstance(attention, str) else getattr(attention, "__name__", "custom")
    # Every residual block repeats the same layer pattern (window sizes, heads and ranks cycle).
    blocks = [
        ResidualBlock([transformer_layer(config, j, backend) for j in range(config.n_layers)], config.dim)
        for _ in range(config.n_blocks)
    ]
    upsampler = UPSAMPLERS[config.upsampler](config.dim, config.scale, config.intermediate_dim)
    return SST(config, blocks, upsampler, attention=name, bias_cache_bytes=bias_cache_bytes)


def transformer_layer(config: SSTConfig, j: int, backend: AttentionFn) -> TransformerLayer:
    """Layer ``j`` of a residual block: the j-th window size, head count and rank of ``config``."""
    dim, ws, heads, rank = config.dim, config.window_sizes[j], config.num_heads[j], config.ranks[j]
    pos = POSITIONAL[config.attn_type](
        heads=heads, head_dim=dim // heads, rank=rank, window_size=ws,
        hidden_dim=config.rib_hidden_dim, n_freqs=config.rib_n_freqs,
    )
    gate = GATES[config.gate_type](dim) if config.gate_type != "none" else None
    # Shifted windows only where every layer has the same window size (otherwise the sizes alternate).
    shift = config.shifted and j % 2 == 1
    attn = WindowAttention(dim, ws, heads, pos, gate=gate, shift=shift, backend=backend)
    cpe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if config.attn_type == "CPE" else None
    return TransformerLayer(dim, attn, ConvFFN(dim, config.ffn_hidden), cpe=cpe)


__all__ = ["CONFIG_SUFFIXES", "build_model", "build_sst", "config_from_mapping", "resolve_config", "transformer_layer"]
