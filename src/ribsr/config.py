"""The network configurations (:class:`SSTConfig`, :class:`ESCRIBConfig`) and the published presets.

Each architecture has its frozen config class; both share :class:`NetworkConfig` (copying, JSON and dict
conversion, the checks common to both). :data:`ARCHITECTURES` maps an architecture's name, stored in the JSON
of every config but SST's (SST's JSON predates the others and names none), to its class.

The names a configuration may use for its upsampler, gate and positional scheme are the keys of the
module registries (``ribsr.model.UPSAMPLERS``, ``GATES``, ``POSITIONAL``): this module reads them from
``ribsr.model``, which never imports it back. Turning names, dicts and files into configs, and configs into
networks, is :mod:`ribsr.build`'s work.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ribsr.errors import ProblemsError
from ribsr.model.layers import GATES
from ribsr.model.positional import POSITIONAL
from ribsr.model.upsampler import UPSAMPLERS

ATTN_TYPES = tuple(POSITIONAL)
# Names the paper's code and YAML files use for the same schemes.
ATTN_TYPE_ALIASES = {
    "rib": "RIB",
    "rpb": "RPB",
    "naive": "RPB",
    "sdpa": "RPB",
    "flex": "RPB",
    "flashbias": "FlashBias",
    "rope": "RoPE",
    "ropevit": "RoPE",
    "nope": "NoPE",
    "cpe": "CPE",
}


class ConfigError(ProblemsError):
    """One or more fields of a network configuration are invalid (all are listed)."""

    what = "invalid SST configuration"


# Inclusive bounds of the numeric fields (see SSTConfig's docstring): wide around the published presets,
# narrow enough that no config makes the network allocate without bound. "layers" bounds the per-layer lists'
# length; window_size, num_heads and rank bound each of their entries.
LIMITS: dict[str, tuple[Any, Any]] = {
    "dim": (1, 1024),
    "n_blocks": (1, 64),
    "layers": (1, 32),
    "window_size": (1, 128),
    "num_heads": (1, 64),
    "rank": (1, 256),
    "intermediate_dim": (1, 1024),
    "rib_hidden_dim": (1, 1024),
    "rib_n_freqs": (0, 32),
    "exp_ratio": (0.125, 16),
}


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened to about ``limit`` characters (a hostile value may be huge)."""
    if isinstance(value, (list, tuple, str, bytes)) and len(value) > limit:
        unit = "items" if isinstance(value, (list, tuple)) else "characters"
        return f"{_show(value[:16], limit)[:limit]}... ({len(value)} {unit})"
    try:
        text = repr(value)
    except ValueError:  # it holds an int too long to print
        return f"<a {type(value).__name__} too large to print>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _as_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def _bounded_int(p: list[str], name: str, value: Any, limits: tuple[int, int]) -> bool:
    """Append a problem to ``p`` unless ``value`` is an int (not a bool) in ``limits``; True when it is."""
    lo, hi = limits
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        p.append(f"{name} must be an integer in [{lo}, {hi}], got {_show(value)}")
        return False
    return True


def _shared_problems(cfg: Any, p: list[str], dim_ok: bool, limits: Mapping[str, tuple[Any, Any]]) -> None:
    """The checks of the fields both architectures have: the upsampler's width, the RIB MLP, the feed-forward
    ratio, the names (upsampler, positional scheme, gate), ``name`` and ``scale``; appended to ``p``."""
    for key in ("intermediate_dim", "rib_hidden_dim", "rib_n_freqs"):
        _bounded_int(p, key, getattr(cfg, key), limits[key])
    lo, hi = limits["exp_ratio"]
    ratio = cfg.exp_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not lo <= ratio <= hi:  # NaN fails too
        p.append(f"exp_ratio must be a finite number in [{lo}, {hi}], got {_show(ratio)}")
    elif dim_ok and int(cfg.dim * ratio) < 1:
        p.append(f"exp_ratio {ratio!r} leaves the feed-forward layer no channels (int(dim * exp_ratio) = 0)")
    for key in ("upsampler", "attn_type", "gate_type"):
        if not isinstance(getattr(cfg, key), str):
            p.append(f"{key} must be a name (a string), got {_show(getattr(cfg, key))}")
    if cfg.name is not None and not isinstance(cfg.name, str):
        p.append(f"name must be a string or None, got {_show(cfg.name)}")
    scales = (2, 3, 4, 8) if cfg.upsampler == "nn+conv" else (2, 3, 4)
    if isinstance(cfg.scale, bool) or not isinstance(cfg.scale, int) or cfg.scale not in scales:
        p.append(f"scale (upscaling_factor) must be {', '.join(map(str, scales[:-1]))} or {scales[-1]}"
                 f"{' with this upsampler' if cfg.upsampler == 'nn+conv' else ''}, got {_show(cfg.scale)}")
    if isinstance(cfg.upsampler, str) and cfg.upsampler not in UPSAMPLERS:
        p.append(f"upsampler (upsampler_type) must be one of {list(UPSAMPLERS)}, got {cfg.upsampler!r}")
    if isinstance(cfg.gate_type, str) and cfg.gate_type not in GATES and cfg.gate_type != "none":
        p.append(f"gate_type must be one of {list(GATES)} or null ('none'), got {cfg.gate_type!r}")
    if isinstance(cfg.attn_type, str) and cfg.attn_type not in POSITIONAL:
        p.append(f"attn_type must be one of {list(POSITIONAL)}, got {cfg.attn_type!r}")


def _normalise_names(cfg: Any) -> None:
    """The paper's spellings of the positional scheme (``Flex``, ``rib``) as ours, and a null gate as ``'none'``."""
    if isinstance(cfg.attn_type, str):
        object.__setattr__(cfg, "attn_type", ATTN_TYPE_ALIASES.get(cfg.attn_type.lower(), cfg.attn_type))
    if cfg.gate_type is None:
        object.__setattr__(cfg, "gate_type", "none")


class NetworkConfig:
    """What the configs of all architectures share: validation on creation (every problem listed in one
    :class:`ConfigError`), :meth:`replace`, and conversion to and from dicts and JSON.

    Subclasses are frozen dataclasses that set ``architecture`` (the key of :data:`ARCHITECTURES`) and
    ``error`` (the :class:`ConfigError` subclass naming the architecture), implement :meth:`problems`, and
    have ``dim``, ``exp_ratio``, ``scale``, ``upsampler`` and ``window_sizes`` (the window size of every attention
    layer of a block: what tiles are aligned to), as a field or a property.
    """

    architecture: ClassVar[str]
    error: ClassVar[type[ConfigError]]

    def problems(self) -> list[str]:
        """Every problem with this configuration, as readable messages (empty when valid)."""
        raise NotImplementedError

    def _validate(self) -> None:
        problems = self.problems()
        if problems:
            raise self.error(problems)

    @property
    def ffn_hidden(self) -> int:
        """Channels of the feed-forward layers (SST's layers, ESC-RIB's convolutional units): int(dim * exp_ratio)."""
        return int(self.dim * self.exp_ratio)  # type: ignore[attr-defined]

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """The fields (tuples as lists), led by ``architecture`` for every architecture but SST."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return d if self.architecture == DEFAULT_ARCHITECTURE else {"architecture": self.architecture, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> Any:
        """Build from a dict of fields (as :meth:`to_dict` writes); unknown and missing fields are listed. An
        ``architecture`` entry, when present, must name this class's."""
        error = getattr(cls, "error", ConfigError)
        if not isinstance(d, Mapping):
            raise error([f"a config must be a mapping of fields, got {type(d).__name__}"], source)
        d = dict(d)
        problems = []
        architecture = d.pop("architecture", cls.architecture)
        if architecture != cls.architecture:
            problems.append(f"architecture must be {cls.architecture!r} for {cls.__name__}, got {_show(architecture)}")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        problems += [f"unknown field {_show(k)}" for k in sorted(set(d) - {f.name for f in fields}, key=repr)]
        problems += [f"missing field {f.name!r}" for f in fields if f.name not in d and _required(f)]
        if problems:
            raise error(problems, source)
        try:
            return cls(**d)
        except ConfigError as exc:
            raise type(exc)(exc.problems, source) from None

    @classmethod
    def from_json(cls, text: str, source: str | None = None) -> Any:
        """Build from the JSON :meth:`to_json` writes; text that is not a JSON object is a :class:`ConfigError`."""
        return cls.from_dict(_json_object(text, source), source)


@dataclass(frozen=True)
class SSTConfig(NetworkConfig):
    """Hyper-parameters of one SST network; everything needed to rebuild it.

    Per-layer fields (``window_sizes``, ``num_heads``, ``ranks``) describe the layers of one
    residual block; every block repeats them. ``ranks`` is the RIB/FlashBias rank per layer. The size
    fields have no defaults (the presets give them, :func:`preset`); the others default to the values
    the paper's YAML files assume when they leave them out (except ``gate_type``: see :meth:`from_network_g`).

    Bounds (:data:`LIMITS`; every published preset lies well inside them, and they keep what a config makes
    the network allocate bounded): ``dim`` 1..1024 (presets 48-224), ``n_blocks`` 1..64 (5-10), layers per
    block (the length of ``window_sizes``, ``num_heads``, ``ranks``) 1..32 (6), each window size 1..128
    (8-96), each head count 1..64 and a divisor of ``dim`` (3-7), each rank 1..256 (16-34),
    ``intermediate_dim`` 1..1024 (64, 96), ``rib_hidden_dim`` 1..1024 (32), ``rib_n_freqs`` 0..32 (10),
    ``exp_ratio`` a finite number in [0.125, 16] (1.25-2); ``scale`` 2, 3 or 4 (``nn+conv`` also takes 8).
    Integer fields take Python ints only (not bools, not floats such as ``48.0``).
    """

    dim: int
    window_sizes: tuple[int, ...]
    num_heads: tuple[int, ...]
    ranks: tuple[int, ...]
    n_blocks: int
    exp_ratio: float = 1.5
    scale: int = 2
    upsampler: str = "pixelshuffle_direct"
    intermediate_dim: int = 64
    attn_type: str = "RIB"
    rib_hidden_dim: int = 32
    rib_n_freqs: int = 10
    gate_type: str = "DWC"
    name: str | None = field(default=None, compare=False)

    architecture: ClassVar[str] = "SST"
    error: ClassVar[type[ConfigError]] = ConfigError

    def __post_init__(self) -> None:
        # Accept lists (YAML/JSON) but store tuples so the config stays hashable and frozen.
        for key in ("window_sizes", "num_heads", "ranks"):
            value = _as_tuple(getattr(self, key))
            layers = _as_tuple(self.window_sizes)
            if isinstance(value, int) and key != "window_sizes" and isinstance(layers, tuple):
                value = (value,) * min(len(layers), LIMITS["layers"][1] + 1)  # one per layer; more is refused
            object.__setattr__(self, key, value)
        _normalise_names(self)
        self._validate()

    # ------------------------------------------------------------------ validation
    def problems(self) -> list[str]:
        """Every problem with this configuration, as readable messages (empty when valid)."""
        p: list[str] = []
        dim_ok = _bounded_int(p, "dim", self.dim, LIMITS["dim"])
        _bounded_int(p, "n_blocks", self.n_blocks, LIMITS["n_blocks"])
        _shared_problems(self, p, dim_ok, LIMITS)

        seqs = {}
        max_layers = LIMITS["layers"][1]
        for key, what in (("window_sizes", "window_size"), ("num_heads", "num_heads"), ("ranks", "rank")):
            value = getattr(self, key)
            lo, hi = LIMITS[what]
            if not isinstance(value, tuple) or not 1 <= len(value) <= max_layers:
                p.append(f"{key} must be a list of 1 to {max_layers} integers (one per layer), got {_show(value)}")
                continue
            if any(isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi for v in value):
                p.append(f"{key} must hold integers in [{lo}, {hi}], got {_show(list(value))}")
                continue
            seqs[key] = value
        lengths = {k: len(v) for k, v in seqs.items()}
        if len(set(lengths.values())) > 1:
            p.append(f"window_sizes, num_heads and ranks must have one entry per layer, got lengths {lengths}")
        if "num_heads" in seqs and dim_ok:
            bad_heads = sorted({h for h in seqs["num_heads"] if self.dim % h})
            if bad_heads:
                p.append(f"dim {self.dim} is not divisible by num_heads {bad_heads}")
            elif self.attn_type == "RoPE":
                odd = sorted({self.dim // h for h in seqs["num_heads"] if (self.dim // h) % 2})
                if odd:
                    p.append(f"attn_type RoPE needs even head dimensions (dim / num_heads), got {odd}")
        return p

    # ------------------------------------------------------------------ derived facts
    @property
    def n_layers(self) -> int:
        """Transformer layers per residual block."""
        return len(self.window_sizes)

    @property
    def shifted(self) -> bool:
        """True when odd layers use shifted windows (only when all window sizes are equal)."""
        return len(set(self.window_sizes)) == 1

    # ------------------------------------------------------------------ conversion
    def to_network_g(self) -> dict[str, Any]:
        """The equivalent ``network_g`` block of the paper's YAML files."""
        return {
            "type": "SST",
            "dim": self.dim,
            "window_sizes": list(self.window_sizes),
            "num_heads": list(self.num_heads),
            "ranks": list(self.ranks),
            "n_blocks": self.n_blocks,
            "exp_ratio": self.exp_ratio,
            "attn_type": self.attn_type,
            "rib_hidden_dim": self.rib_hidden_dim,
            "rib_n_freqs": self.rib_n_freqs,
            "upscaling_factor": self.scale,
            "upsampler_type": self.upsampler,
            "gate_type": None if self.gate_type == "none" else self.gate_type,
            "intermediate_dim": self.intermediate_dim,
        }

    @classmethod
    def from_network_g(cls, network_g: Mapping[str, Any], source: str | None = None) -> SSTConfig:
        """Build from a ``network_g`` dict as in the paper's YAML files (``type`` is ignored)."""
        if not isinstance(network_g, Mapping):
            raise ConfigError([f"network_g must be a mapping, got {type(network_g).__name__}"], source)
        rename = {"upscaling_factor": "scale", "upsampler_type": "upsampler"}
        allowed = NETWORK_G_KEYS | {f.name for f in dataclasses.fields(cls)}
        problems = [f"unknown network_g key {_show(k)}" for k in sorted(set(network_g) - allowed, key=repr)]
        missing = [k for k in ("dim", "window_sizes", "num_heads", "n_blocks") if k not in network_g]
        problems += [f"missing network_g key {k!r}" for k in missing]
        if problems:
            raise ConfigError(problems, source)
        kwargs = {rename.get(k, k): v for k, v in network_g.items() if k != "type"}
        if kwargs.get("ranks") is None:
            kwargs["ranks"] = [16] * len(_as_tuple(kwargs["window_sizes"]) or ())
        if "gate_type" in kwargs and kwargs["gate_type"] is None:
            kwargs["gate_type"] = "none"
        elif "gate_type" not in kwargs:
            kwargs["gate_type"] = "none"  # the paper's class default is no gate
        return cls.from_dict(kwargs, source)


def _json_object(text: str, source: str | None) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long ints, deep nesting
        raise ConfigError([f"not valid JSON ({str(exc)[:200]})"], source) from None
    if not isinstance(data, dict):
        raise ConfigError([f"the JSON must be an object of config fields, got {type(data).__name__}"], source)
    return data


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


# The keys of the paper's network_g blocks (``type`` is ignored).
NETWORK_G_KEYS = frozenset({
    "type", "dim", "window_sizes", "num_heads", "ranks", "n_blocks", "exp_ratio", "attn_type", "rib_hidden_dim",
    "rib_n_freqs", "upscaling_factor", "upsampler_type", "gate_type", "intermediate_dim",
})


# ---------------------------------------------------------------------- ESC-RIB
class ESCRIBConfigError(ConfigError):
    """One or more fields of an ESC-RIB configuration are invalid (all are listed)."""

    what = "invalid ESC-RIB configuration"


# Inclusive bounds of ESCRIBConfig's numeric fields (see its docstring); the shared ones as SST's.
ESCRIB_LIMITS: dict[str, tuple[Any, Any]] = {
    **{k: LIMITS[k] for k in ("dim", "n_blocks", "window_size", "num_heads", "rank", "intermediate_dim",
                              "rib_hidden_dim", "rib_n_freqs", "exp_ratio")},
    "pdim": (2, 1024),
    "kernel_size": (1, 63),
    "conv_blocks": (1, 32),
}


@dataclass(frozen=True)
class ESCRIBConfig(NetworkConfig):
    """Hyper-parameters of one ESC-RIB network (:class:`ribsr.model.esc.ESCRIB`); everything needed to rebuild it.

    ``n_blocks`` blocks, each: one window attention (``window_size``, ``num_heads``, RIB ``rank``, no shift)
    and ``conv_blocks`` convolutional attention units whose first ``pdim`` channels go through the network's
    shared ``kernel_size`` x ``kernel_size`` filter. ``use_ln`` puts a LayerNorm before each unit. The size
    fields and ``rank`` have no defaults (the presets give them, :func:`preset`); the others default to the
    paper's class defaults, except ``attn_type`` (``RIB`` here; :meth:`from_network_g` gives a block without
    one the paper's default, RPB).

    Bounds (:data:`ESCRIB_LIMITS`; the published preset in brackets): ``dim`` 1..1024 (64), ``pdim`` 2..1024
    and at most ``dim`` (16), ``kernel_size`` an odd integer in 1..63 (13), ``n_blocks`` 1..64 (5),
    ``conv_blocks`` 1..32 (5), ``window_size`` 1..128 (64), ``num_heads`` 1..64 and a divisor of ``dim`` (4),
    ``rank`` 1..256 (16), ``intermediate_dim`` 1..1024, ``rib_hidden_dim`` 1..1024 (32), ``rib_n_freqs``
    0..32 (10), ``exp_ratio`` a finite number in [0.125, 16] (1.25); ``scale`` 2, 3 or 4 (``nn+conv`` also
    takes 8). Integer fields take Python ints only (not bools, not floats).
    """

    dim: int
    pdim: int
    kernel_size: int
    n_blocks: int
    conv_blocks: int
    window_size: int
    num_heads: int
    rank: int
    exp_ratio: float = 2.0
    scale: int = 2
    upsampler: str = "pixelshuffle_direct"
    intermediate_dim: int = 64
    attn_type: str = "RIB"
    rib_hidden_dim: int = 64
    rib_n_freqs: int = 10
    gate_type: str = "none"
    use_ln: bool = False
    name: str | None = field(default=None, compare=False)

    architecture: ClassVar[str] = "ESCRIB"
    error: ClassVar[type[ConfigError]] = ESCRIBConfigError

    def __post_init__(self) -> None:
        _normalise_names(self)
        self._validate()

    def problems(self) -> list[str]:
        """Every problem with this configuration, as readable messages (empty when valid)."""
        p: list[str] = []
        lim = ESCRIB_LIMITS
        dim_ok = _bounded_int(p, "dim", self.dim, lim["dim"])
        for key in ("n_blocks", "conv_blocks", "window_size", "rank"):
            _bounded_int(p, key, getattr(self, key), lim[key])
        if _bounded_int(p, "pdim", self.pdim, lim["pdim"]) and dim_ok and self.pdim > self.dim:
            p.append(f"pdim {self.pdim} exceeds dim {self.dim} (the large kernel acts on the first pdim channels)")
        if _bounded_int(p, "kernel_size", self.kernel_size, lim["kernel_size"]) and self.kernel_size % 2 == 0:
            p.append(f"kernel_size must be odd (the large kernel keeps the image size), got {self.kernel_size}")
        if _bounded_int(p, "num_heads", self.num_heads, lim["num_heads"]) and dim_ok:
            if self.dim % self.num_heads:
                p.append(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
            elif self.attn_type == "RoPE" and (head_dim := self.dim // self.num_heads) % 2:
                p.append(f"attn_type RoPE needs an even head dimension (dim / num_heads), got {head_dim}")
        if not isinstance(self.use_ln, bool):
            p.append(f"use_ln must be true or false, got {_show(self.use_ln)}")
        _shared_problems(self, p, dim_ok, lim)
        if self.attn_type == "CPE":
            p.append("attn_type CPE is an SST layer's scheme (a convolution on the layer input); ESC-RIB has none")
        return p

    # ------------------------------------------------------------------ derived facts
    @property
    def window_sizes(self) -> tuple[int, ...]:
        """The window size of the attention layer of a block, as a one-entry tuple (as SSTConfig's field)."""
        return (self.window_size,)

    # ------------------------------------------------------------------ conversion
    def to_network_g(self) -> dict[str, Any]:
        """The equivalent ``network_g`` block of the paper's YAML files."""
        return {
            "type": "ESCRIB",
            "dim": self.dim,
            "pdim": self.pdim,
            "kernel_size": self.kernel_size,
            "n_blocks": self.n_blocks,
            "conv_blocks": self.conv_blocks,
            "window_size": self.window_size,
            "num_heads": self.num_heads,
            "upscaling_factor": self.scale,
            "exp_ratio": self.exp_ratio,
            "attn_type": self.attn_type,
            "use_ln": self.use_ln,
            "rank": self.rank,
            "rib_hidden_dim": self.rib_hidden_dim,
            "rib_n_freqs": self.rib_n_freqs,
            "gate_type": None if self.gate_type == "none" else self.gate_type,
            "upsampler_type": self.upsampler,
            "intermediate_dim": self.intermediate_dim,
        }

    @classmethod
    def from_network_g(cls, network_g: Mapping[str, Any], source: str | None = None) -> ESCRIBConfig:
        """Build from a ``network_g`` dict as in the paper's YAML files (``type: ESCRIB``; ``type`` is not checked).

        Keys left out, or null, take the paper's class defaults: ``attn_type`` its ``Flex`` (RPB here), ``rank``
        ``flashbias_rank`` or else 256 - dim / num_heads, ``rib_hidden_dim`` 64 (null: 32), ``rib_n_freqs`` 10,
        ``gate_type`` none, ``exp_ratio`` 2.
        """
        if not isinstance(network_g, Mapping):
            raise ESCRIBConfigError([f"network_g must be a mapping, got {type(network_g).__name__}"], source)
        rename = {"upscaling_factor": "scale", "upsampler_type": "upsampler"}
        allowed = ESCRIB_NETWORK_G_KEYS | {f.name for f in dataclasses.fields(cls)}
        problems = [f"unknown network_g key {_show(k)}" for k in sorted(set(network_g) - allowed, key=repr)]
        required = ("dim", "pdim", "kernel_size", "n_blocks", "conv_blocks", "window_size", "num_heads")
        problems += [f"missing network_g key {k!r}" for k in required if k not in network_g]
        if problems:
            raise ESCRIBConfigError(problems, source)
        kwargs = {rename.get(k, k): v for k, v in network_g.items() if k not in ("type", "flashbias_rank")}
        if kwargs.get("rank") is None:  # the paper's WindowAttention2D: rank, else flashbias_rank, else 256 - D
            rank = network_g.get("flashbias_rank")
            dim, heads = kwargs["dim"], kwargs["num_heads"]
            if rank is None and isinstance(dim, int) and isinstance(heads, int) and heads > 0:
                rank = 256 - dim // heads
            kwargs["rank"] = rank
        kwargs.setdefault("attn_type", "RPB")  # the paper's class default, 'Flex': relative position bias
        if kwargs.get("rib_hidden_dim", 64) is None:
            kwargs["rib_hidden_dim"] = 32  # the paper's attention layer takes null as 32
        if kwargs.get("rib_n_freqs", 10) is None:
            kwargs["rib_n_freqs"] = 10
        return cls.from_dict(kwargs, source)


# The keys of the paper's ESCRIB network_g blocks (``type`` is ignored).
ESCRIB_NETWORK_G_KEYS = frozenset({
    "type", "dim", "pdim", "kernel_size", "n_blocks", "conv_blocks", "window_size", "num_heads", "upscaling_factor",
    "exp_ratio", "attn_type", "use_ln", "flashbias_rank", "rank", "rib_hidden_dim", "rib_n_freqs", "gate_type",
    "upsampler_type", "intermediate_dim",
})

# Architecture name (a config's ``architecture``, the JSON's "architecture" entry) -> its config class.
DEFAULT_ARCHITECTURE = "SST"  # what a config's JSON without an "architecture" entry describes
ARCHITECTURES: dict[str, type[NetworkConfig]] = {"SST": SSTConfig, "ESCRIB": ESCRIBConfig}
# The ``type`` of a paper's network_g block -> the class that reads it (its from_network_g).
NETWORK_G_TYPES: dict[str, type[NetworkConfig]] = {"SST": SSTConfig, "ESCRIB": ESCRIBConfig}


def config_from_dict(d: Mapping[str, Any], source: str | None = None) -> SSTConfig | ESCRIBConfig:
    """The config a dict of fields describes (as :meth:`NetworkConfig.to_dict` writes), of the architecture its
    ``architecture`` entry names (SST without one)."""
    if not isinstance(d, Mapping):
        raise ConfigError([f"a config must be a mapping of fields, got {type(d).__name__}"], source)
    name = d.get("architecture", DEFAULT_ARCHITECTURE)
    cls = ARCHITECTURES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError([f"architecture must be one of {list(ARCHITECTURES)}, got {_show(name)}"], source)
    return cls.from_dict(d, source)


def config_from_json(text: str, source: str | None = None) -> SSTConfig | ESCRIBConfig:
    """The config in the JSON :meth:`NetworkConfig.to_json` writes (a checkpoint's metadata), of any architecture."""
    return config_from_dict(_json_object(text, source), source)


# ---------------------------------------------------------------------- presets
_PLUS_WINDOWS = (16, 32, 48, 32, 48, 96)

PRESETS: dict[str, dict[str, Any]] = {
    "light": dict(
        dim=48, num_heads=(3,) * 6, window_sizes=(8, 16, 32, 16, 32, 64), ranks=(16, 16, 16, 24, 24, 24),
        n_blocks=5, exp_ratio=1.5, upsampler="pixelshuffle_direct",
    ),
    "light+": dict(
        dim=48, num_heads=(3,) * 6, window_sizes=_PLUS_WINDOWS, ranks=(16, 16, 16, 24, 24, 24),
        n_blocks=5, exp_ratio=1.5, upsampler="pixelshuffle_direct",
    ),
    "base": dict(
        dim=180, num_heads=(6,) * 6, window_sizes=(16, 32, 64, 16, 32, 64), ranks=(18, 18, 18, 34, 34, 34),
        n_blocks=6, exp_ratio=1.25, upsampler="pixelshuffle", intermediate_dim=64,
    ),
    "base+": dict(
        dim=180, num_heads=(6,) * 6, window_sizes=_PLUS_WINDOWS, ranks=(18, 18, 18, 34, 34, 34),
        n_blocks=6, exp_ratio=1.25, upsampler="pixelshuffle", intermediate_dim=64,
    ),
    "large": dict(
        dim=192, num_heads=(6,) * 6, window_sizes=(16, 32, 64, 16, 32, 64), ranks=(16, 16, 16, 32, 32, 32),
        n_blocks=8, exp_ratio=2.0, upsampler="pixelshuffle", intermediate_dim=96,
    ),
    "large+": dict(
        dim=192, num_heads=(6,) * 6, window_sizes=_PLUS_WINDOWS, ranks=(16, 16, 16, 32, 32, 32),
        n_blocks=8, exp_ratio=2.0, upsampler="pixelshuffle", intermediate_dim=96,
    ),
    "xl+": dict(
        dim=224, num_heads=(7,) * 6, window_sizes=_PLUS_WINDOWS, ranks=(16, 16, 16, 32, 32, 32),
        n_blocks=10, exp_ratio=2.0, upsampler="pixelshuffle", intermediate_dim=96,
    ),
}

# Published parameter counts in millions (x2, x3, x4), from the paper's tables.
PUBLISHED_PARAMS_M: dict[str, tuple[float, float, float]] = {
    "light": (0.893, 0.900, 0.909),
    "light+": (0.893, 0.900, 0.909),
    "base": (11.677, 11.861, 12.120),
    "base+": (11.677, 11.861, 12.120),
    "large": (20.315, 20.730, 21.311),
    "large+": (20.315, 20.730, 21.311),
    "xl+": (33.892, 34.307, 34.889),
}


# ESC-RIB: the network_g of the paper's options/test/ESCRIB_X{2,3,4}.yaml (the three differ only in the scale),
# and a tiny network of the same structure for tests.
ESCRIB_PRESETS: dict[str, dict[str, Any]] = {
    "escrib": dict(
        dim=64, pdim=16, kernel_size=13, n_blocks=5, conv_blocks=5, window_size=64, num_heads=4, rank=16,
        exp_ratio=1.25, attn_type="RIB", rib_hidden_dim=32, rib_n_freqs=10, gate_type="DWC",
        upsampler="pixelshuffle_direct",
    ),
    "escrib-tiny": dict(
        dim=16, pdim=4, kernel_size=5, n_blocks=2, conv_blocks=2, window_size=8, num_heads=2, rank=4,
        exp_ratio=1.25, attn_type="RIB", rib_hidden_dim=8, rib_n_freqs=2, gate_type="DWC",
        upsampler="pixelshuffle_direct",
    ),
}

#: Every preset name, SST's (:data:`PRESETS`) and ESC-RIB's (:data:`ESCRIB_PRESETS`).
ALL_PRESETS: tuple[str, ...] = (*PRESETS, *ESCRIB_PRESETS)


def preset_name(name: str) -> str | None:
    """The preset key (of :data:`PRESETS` or :data:`ESCRIB_PRESETS`) a spelling names, or None: case is ignored,
    ``_plus``/``-plus`` mean ``+`` (``"BASE_plus"`` -> ``"base+"``), and ``_`` is ``-`` and ``esc-rib`` is
    ``escrib`` (``"ESC_RIB"`` -> ``"escrib"``)."""
    key = name.strip().lower().replace("_plus", "+").replace("-plus", "+")
    if key in PRESETS:
        return key
    key = key.replace("_", "-").replace("esc-rib", "escrib")
    return key if key in ESCRIB_PRESETS else None


def preset(name: str, scale: int = 2, **overrides: Any) -> SSTConfig | ESCRIBConfig:
    """The configuration of a published model (``light``, ``base+``, ..., ``escrib``; see :func:`preset_name`)
    at ``scale``: an :class:`SSTConfig`, or an :class:`ESCRIBConfig` for the ESC-RIB presets.

    ``overrides`` replace fields (e.g. ``n_blocks=2``); the config keeps the preset's name.
    """
    key = preset_name(name)
    if key is None:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(ALL_PRESETS)}")
    if key in ESCRIB_PRESETS:
        return ESCRIBConfig(**{**ESCRIB_PRESETS[key], "scale": scale, "name": key, **overrides})
    return SSTConfig(**{**PRESETS[key], "scale": scale, "name": key, **overrides})


def param_count_m(n_params: int) -> float:
    """Parameters in millions, rounded as the paper's tables round them."""
    return math.floor(n_params / 1000 + 0.5) / 1000
