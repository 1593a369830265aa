"""Building networks: one resolver from what users pass (a preset name, a dict, a YAML/JSON file, an
:class:`~ribsr.config.SSTConfig` or :class:`~ribsr.config.ESCRIBConfig`) to a config, and the builders that turn
a config into modules, one per architecture (:data:`BUILDERS`, chosen by the config's ``architecture``).

Imports go one way: ``ribsr.model`` (modules and their registries) <- ``ribsr.config`` (reads the
registries' names) <- ``ribsr.build`` (reads the config, builds the modules) <- ``ribsr.checkpoint``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ribsr.config import (
    ALL_PRESETS,
    ESCRIB_NETWORK_G_KEYS,
    ESCRIB_PRESETS,
    NETWORK_G_KEYS,
    NETWORK_G_TYPES,
    ConfigError,
    ESCRIBConfig,
    NetworkConfig,
    SSTConfig,
    config_from_dict,
    preset,
    preset_name,
)
from ribsr.model.attention import AttentionFn, WindowAttention, make_backend
from ribsr.model.esc import DEFAULT_BIAS_CACHE_BYTES as ESCRIB_BIAS_CACHE_BYTES
from ribsr.model.esc import ESCRIB, ESCBlock
from ribsr.model.layers import GATES, ConvFFN
from ribsr.model.positional import POSITIONAL, PositionalScheme
from ribsr.model.sst import DEFAULT_BIAS_CACHE_BYTES, SST, ResidualBlock, TransformerLayer
from ribsr.model.upsampler import UPSAMPLERS

ConfigSpec = str | Path | Mapping[str, Any] | NetworkConfig
Network = SST | ESCRIB

CONFIG_SUFFIXES = (".yml", ".yaml", ".json")

# Keys that make a mapping describe a network (a network_g block or SSTConfig fields); name and scale alone
# do not (a training option file has both at its top level).
_FIELDS = frozenset(f.name for f in dataclasses.fields(SSTConfig))
_ESCRIB_FIELDS = frozenset(f.name for f in dataclasses.fields(ESCRIBConfig))
_NETWORK_KEYS = (NETWORK_G_KEYS | _FIELDS | ESCRIB_NETWORK_G_KEYS | _ESCRIB_FIELDS) - {"name", "scale", "type"}
# Top-level keys of the paper's (BasicSR) option files: a mapping with one of them and no network_g is an
# option file that lacks its network.
_OPTION_FILE_KEYS = frozenset({"datasets", "train", "val", "logger", "path", "manual_seed", "network_d"})
# Keys only the paper's network_g blocks use: a mapping with one of them is read as network_g.
_PAPER_ONLY_KEYS = frozenset({"type", "upscaling_factor", "upsampler_type"})


# ------------------------------------------------------------------------------------------ resolving
def _check_overrides(cls: type[NetworkConfig], overrides: Mapping[str, Any]) -> None:
    fields = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise cls.error([f"unknown field {k!r} (the fields: {fields})" for k in unknown])


def resolve_config(spec: ConfigSpec, scale: int | None = None, **overrides: Any) -> SSTConfig | ESCRIBConfig:
    """The config (:class:`SSTConfig` or :class:`ESCRIBConfig`) that ``spec`` describes.

    ``spec`` is a preset name (any spelling :func:`~ribsr.config.preset_name` accepts), a config,
    a mapping (see :func:`config_from_mapping`), or the path of a YAML/JSON file holding such a mapping
    (the paper's option files included). ``scale``, when given, sets the scale whatever the input (presets
    default to x2, the others keep theirs); ``overrides`` replace fields (e.g. ``n_blocks=2``).
    """
    source = None
    if isinstance(spec, NetworkConfig):
        config = spec
    elif isinstance(spec, Mapping):
        config = config_from_mapping(spec)
    else:
        key = preset_name(str(spec))
        if key is not None:
            _check_overrides(ESCRIBConfig if key in ESCRIB_PRESETS else SSTConfig, overrides)
            return preset(key, scale=2 if scale is None else scale, **overrides)
        path = Path(spec)
        if path.suffix.lower() not in CONFIG_SUFFIXES and not path.exists():
            raise ValueError(
                f"config {str(spec)!r} is neither a preset ({', '.join(sorted(ALL_PRESETS))}) nor an existing "
                "YAML/JSON file"
            )
        source = str(path)
        config = config_from_mapping(_read_mapping(path), source)
    _check_overrides(type(config), overrides)
    changes = dict(overrides) if scale is None else {**overrides, "scale": scale}
    if not changes:
        return config
    try:
        return config.replace(**changes)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None


def config_from_mapping(data: Mapping[str, Any], source: str | None = None) -> SSTConfig | ESCRIBConfig:
    """The config in a mapping: an option file's contents (its ``network_g`` block is used), a bare
    ``network_g`` block (it has ``type``, ``upscaling_factor`` or ``upsampler_type``), or config fields.

    A network_g block is read by the class its ``type`` names (:data:`~ribsr.config.NETWORK_G_TYPES`; SST for
    any other), fields by the class their ``architecture`` entry names (SST without one). ``source`` (a file
    name) is named in the errors.
    """
    if "network_g" in data:
        return _from_network_g(data["network_g"], source)
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
        return _from_network_g(data, source)
    return config_from_dict(data, source)


def _from_network_g(block: Any, source: str | None) -> SSTConfig | ESCRIBConfig:
    kind = block.get("type") if isinstance(block, Mapping) else None
    reader = NETWORK_G_TYPES.get(kind, SSTConfig) if isinstance(kind, str) else SSTConfig
    return reader.from_network_g(block, source)  # type: ignore[attr-defined]


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
) -> Network:
    """A freshly initialised network for ``spec`` (see :func:`resolve_config`), e.g. ``build_model("base+",
    scale=4)`` or ``build_model("escrib")``.

    ``scale`` sets the scale for every kind of ``spec``; ``overrides`` replace config fields;
    ``attention`` names the attention path (see :func:`ribsr.model.attention.make_backend`).
    """
    return build_network(resolve_config(spec, scale=scale, **overrides), attention=attention)


def build_network(
    config: SSTConfig | ESCRIBConfig, attention: str | AttentionFn = "auto", bias_cache_bytes: int | None = None
) -> Network:
    """The network ``config`` describes, freshly initialised, by the builder of its architecture (:data:`BUILDERS`).

    ``attention`` and ``bias_cache_bytes`` (None: the architecture's default) as :func:`build_sst` takes them.
    """
    builder = BUILDERS.get(getattr(config, "architecture", None))
    if builder is None:
        raise TypeError(f"no builder for {type(config).__name__}; the architectures: {sorted(BUILDERS)}")
    return builder(config, attention) if bias_cache_bytes is None else builder(config, attention, bias_cache_bytes)


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


def positional_scheme(config: SSTConfig | ESCRIBConfig, heads: int, rank: int, ws: int) -> PositionalScheme:
    """The positional scheme ``config.attn_type`` names, for one attention layer."""
    return POSITIONAL[config.attn_type](
        heads=heads, head_dim=config.dim // heads, rank=rank, window_size=ws,
        hidden_dim=config.rib_hidden_dim, n_freqs=config.rib_n_freqs,
    )


def _gate(config: SSTConfig | ESCRIBConfig) -> nn.Module | None:
    return GATES[config.gate_type](config.dim) if config.gate_type != "none" else None


def transformer_layer(config: SSTConfig, j: int, backend: AttentionFn) -> TransformerLayer:
    """Layer ``j`` of a residual block: the j-th window size, head count and rank of ``config``."""
    dim, ws, heads, rank = config.dim, config.window_sizes[j], config.num_heads[j], config.ranks[j]
    pos = positional_scheme(config, heads, rank, ws)
    gate = _gate(config)
    # Shifted windows only where every layer has the same window size (otherwise the sizes alternate).
    shift = config.shifted and j % 2 == 1
    attn = WindowAttention(dim, ws, heads, pos, gate=gate, shift=shift, backend=backend)
    cpe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if config.attn_type == "CPE" else None
    return TransformerLayer(dim, attn, ConvFFN(dim, config.ffn_hidden), cpe=cpe)


def build_escrib(
    config: ESCRIBConfig,
    attention: str | AttentionFn = "auto",
    bias_cache_bytes: int = ESCRIB_BIAS_CACHE_BYTES,
) -> ESCRIB:
    """The ESC-RIB network ``config`` describes, freshly initialised (``attention``, ``bias_cache_bytes`` as
    :func:`build_sst` takes them). Every block's window attention is unshifted."""
    backend = make_backend(attention) if isinstance(attention, str) else attention
    name = attention if isinstance(attention, str) else getattr(attention, "__name__", "custom")
    dim, ws, heads = config.dim, config.window_size, config.num_heads
    blocks = [
        ESCBlock(
            dim, config.pdim,
            WindowAttention(dim, ws, heads, positional_scheme(config, heads, config.rank, ws), gate=_gate(config),
                            shift=False, backend=backend),
            config.conv_blocks, config.ffn_hidden, use_ln=config.use_ln,
        )
        for _ in range(config.n_blocks)
    ]
    upsampler = UPSAMPLERS[config.upsampler](dim, config.scale, config.intermediate_dim)
    return ESCRIB(config, blocks, upsampler, attention=name, bias_cache_bytes=bias_cache_bytes)


# A config's ``architecture`` -> the function building its network, called with (config, attention[,
# bias_cache_bytes]).
BUILDERS: dict[str, Callable[..., Network]] = {"SST": build_sst, "ESCRIB": build_escrib}


__all__ = [
    "BUILDERS", "CONFIG_SUFFIXES", "build_escrib", "build_model", "build_network", "build_sst", "config_from_mapping",
    "positional_scheme", "resolve_config", "transformer_layer",
]
