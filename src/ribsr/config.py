"""The network configuration (:class:`SSTConfig`) and the published presets.

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
from typing import Any

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


@dataclass(frozen=True)
class SSTConfig:
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

    def __post_init__(self) -> None:
        # Accept lists (YAML/JSON) but store tuples so the config stays hashable and frozen.
        for key in ("window_sizes", "num_heads", "ranks"):
            value = _as_tuple(getattr(self, key))
            layers = _as_tuple(self.window_sizes)
            if isinstance(value, int) and key != "window_sizes" and isinstance(layers, tuple):
                value = (value,) * min(len(layers), LIMITS["layers"][1] + 1)  # one per layer; more is refused
            object.__setattr__(self, key, value)
        if isinstance(self.attn_type, str):
            object.__setattr__(
                self, "attn_type", ATTN_TYPE_ALIASES.get(self.attn_type.lower(), self.attn_type)
            )
        if self.gate_type is None:
            object.__setattr__(self, "gate_type", "none")
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    # ------------------------------------------------------------------ validation
    def problems(self) -> list[str]:
        """Every problem with this configuration, as readable messages (empty when valid)."""
        p: list[str] = []

        def bounded_int(name: str, value: Any, limits: tuple[int, int]) -> bool:
            lo, hi = limits
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                p.append(f"{name} must be an integer in [{lo}, {hi}], got {_show(value)}")
                return False
            return True

        dim_ok = bounded_int("dim", self.dim, LIMITS["dim"])
        for key in ("n_blocks", "intermediate_dim", "rib_hidden_dim", "rib_n_freqs"):
            bounded_int(key, getattr(self, key), LIMITS[key])
        lo, hi = LIMITS["exp_ratio"]
        ratio = self.exp_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not lo <= ratio <= hi:  # NaN fails too
            p.append(f"exp_ratio must be a finite number in [{lo}, {hi}], got {_show(ratio)}")
        elif dim_ok and int(self.dim * ratio) < 1:
            p.append(f"exp_ratio {ratio!r} leaves the feed-forward layer no channels (int(dim * exp_ratio) = 0)")
        for key in ("upsampler", "attn_type", "gate_type"):
            if not isinstance(getattr(self, key), str):
                p.append(f"{key} must be a name (a string), got {_show(getattr(self, key))}")
        if self.name is not None and not isinstance(self.name, str):
            p.append(f"name must be a string or None, got {_show(self.name)}")
        scales = (2, 3, 4, 8) if self.upsampler == "nn+conv" else (2, 3, 4)
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale not in scales:
            p.append(f"scale (upscaling_factor) must be {', '.join(map(str, scales[:-1]))} or {scales[-1]}"
                     f"{' with this upsampler' if self.upsampler == 'nn+conv' else ''}, got {_show(self.scale)}")
        if isinstance(self.upsampler, str) and self.upsampler not in UPSAMPLERS:
            p.append(f"upsampler (upsampler_type) must be one of {list(UPSAMPLERS)}, got {self.upsampler!r}")
        if isinstance(self.gate_type, str) and self.gate_type not in GATES and self.gate_type != "none":
            p.append(f"gate_type must be one of {list(GATES)} or null ('none'), got {self.gate_type!r}")
        if isinstance(self.attn_type, str) and self.attn_type not in POSITIONAL:
            p.append(f"attn_type must be one of {list(POSITIONAL)}, got {self.attn_type!r}")

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

    @property
    def ffn_hidden(self) -> int:
        return int(self.dim * self.exp_ratio)

    # ------------------------------------------------------------------ conversion
    def replace(self, **changes: Any) -> SSTConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("window_sizes", "num_heads", "ranks"):
            d[key] = list(d[key])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> SSTConfig:
        """Build from a dict of fields (as :meth:`to_dict` writes); unknown and missing fields are listed."""
        fields = dataclasses.fields(cls)
        if not isinstance(d, Mapping):
            raise ConfigError([f"a config must be a mapping of fields, got {type(d).__name__}"], source)
        problems = [f"unknown field {_show(k)}" for k in sorted(set(d) - {f.name for f in fields}, key=repr)]
        problems += [f"missing field {f.name!r}" for f in fields if f.name not in d and _required(f)]
        if problems:
            raise ConfigError(problems, source)
        try:
            return cls(**dict(d))
        except ConfigError as exc:
            raise ConfigError(exc.problems, source) from None

    @classmethod
    def from_json(cls, text: str, source: str | None = None) -> SSTConfig:
        """Build from the JSON :meth:`to_json` writes; text that is not a JSON object is a :class:`ConfigError`."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long ints, deep nesting
            raise ConfigError([f"not valid JSON ({str(exc)[:200]})"], source) from None
        if not isinstance(data, dict):
            raise ConfigError([f"the JSON must be an object of config fields, got {type(data).__name__}"], source)
        return cls.from_dict(data, source)

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


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


# The keys of the paper's network_g blocks (``type`` is ignored).
NETWORK_G_KEYS = frozenset({
    "type", "dim", "window_sizes", "num_heads", "ranks", "n_blocks", "exp_ratio", "attn_type", "rib_hidden_dim",
    "rib_n_freqs", "upscaling_factor", "upsampler_type", "gate_type", "intermediate_dim",
})


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


def preset_name(name: str) -> str | None:
    """The :data:`PRESETS` key a spelling names, or None: case is ignored and ``_plus``/``-plus`` mean ``+``
    (``"BASE_plus"`` -> ``"base+"``)."""
    key = name.strip().lower().replace("_plus", "+").replace("-plus", "+")
    return key if key in PRESETS else None


def preset(name: str, scale: int = 2, **overrides: Any) -> SSTConfig:
    """The configuration of a published model (``light``, ``base+``, ...; see :func:`preset_name`) at ``scale``.

    ``overrides`` replace fields (e.g. ``n_blocks=2``); the config keeps the preset's name.
    """
    key = preset_name(name)
    if key is None:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return SSTConfig(**{**PRESETS[key], "scale": scale, "name": key, **overrides})


def param_count_m(n_params: int) -> float:
    """Parameters in millions, rounded as the paper's tables round them."""
    return math.floor(n_params / 1000 + 0.5) / 1000
