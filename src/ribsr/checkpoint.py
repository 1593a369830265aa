"""Reading and writing checkpoints (the paper's ``.pth`` files and our ``.safetensors``), of SST and ESC-RIB.

Our files carry their config (with its architecture) in the metadata. The paper's files carry none: their
architecture shows in their parameter names (:func:`state_architecture`), their sizes in the shapes, but not
their window sizes, so loading one takes a config (a preset name such as ``light`` or ``escrib``, or the
``network_g`` it was trained with).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import pickle
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from ribsr.assets import BUNDLED_MODELS, DEFAULT_MODEL, REAL_MODEL, bundled_model_path
from ribsr.build import ConfigSpec, Network, build_network, resolve_config
from ribsr.config import (
    ALL_PRESETS,
    DEFAULT_ARCHITECTURE,
    ESCRIBConfig,
    NetworkConfig,
    SSTConfig,
    config_from_json,
    preset,
    preset_name,
)
from ribsr.devices import resolve_device
from ribsr.files import atomic_write, disk_space_hint, not_a_file
from ribsr.hub import fetch, is_url, redact

log = logging.getLogger(__name__)

FORMAT_NAME = "ribsr-sst"
StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or does not fit the configuration it is loaded into."""


# ------------------------------------------------------------------------------------------ reading
def _strip_prefix(state: StateDict) -> StateDict:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def read_checkpoint(
    path: str | Path, sha256: str | None = None, progress: bool = True, param_key: str | None = None
) -> tuple[StateDict, SSTConfig | None]:
    """The state dict in a checkpoint file and the config it carries (None for the paper's files).

    ``path`` may be an ``http(s)://`` URL, downloaded once into the torch.hub cache (see
    :func:`ribsr.hub.fetch`); with ``sha256`` the file is checked against that hash.

    ``.pth``/``.pt``: a dict with ``params_ema`` and/or ``params`` (``params_ema`` preferred; ``param_key``
    names the one to take, as BasicSR's ``path.param_key_g``), or a bare state dict, optionally with ``module.``
    prefixes; read with ``torch.load(weights_only=True)``. ``.safetensors``: our format, with the config in the
    metadata.
    """
    return _read_local(fetch(path, sha256=sha256, progress=progress), path, param_key)


def _read_local(local: Path, origin: str | Path, param_key: str | None = None) -> tuple[StateDict, SSTConfig | None]:
    """:func:`read_checkpoint` of the local file ``local`` that ``origin`` (a path or URL) gave."""
    what = not_a_file(local)
    if what == "not there":
        raise FileNotFoundError(f"checkpoint not found: {local}")
    if what is not None:
        raise CheckpointError(f"{local}: is {what}, not a checkpoint file")
    try:
        return read_state(local, "safetensors" if local.suffix == ".safetensors" else "torch", param_key)
    except CheckpointError as exc:
        if is_url(origin):  # a cached copy that went bad (or was stored by an older version)
            raise CheckpointError(f"{exc}\n  it is the cached copy of {redact(str(origin))}: delete it to download "
                                  f"it again (rm {shlex.quote(str(local))})") from None
        raise


def read_state(path: Path, fmt: str, param_key: str | None = None) -> tuple[StateDict, SSTConfig | None]:
    """The state dict and config of a checkpoint file whose format is ``fmt`` (``"safetensors"`` or ``"torch"``,
    whatever its name), as :func:`read_checkpoint` reads them (``param_key``: the entry of a ``.pth`` to take);
    its tensors checked by :func:`check_tensors`."""
    if fmt == "safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
        config = None
        if "ribsr_config" in meta:  # a JSON object of config fields (ConfigError names the file and field)
            config = config_from_json(meta["ribsr_config"], source=f"{path}, metadata field 'ribsr_config'")
        check_tensors(state, str(path))
        return _strip_prefix(state), config
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):  # a corrupt pickle, not torch's refusal of one
            raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint (UnpicklingError: {exc})") from None
        # torch's refusal of objects beyond tensors and plain data; its advice on loading the file anyway is dropped
        raise CheckpointError(f"{path}: refused: {_unpickling_detail(str(exc))}; a checkpoint holds only tensors, "
                              "numbers, strings and containers, so this file is not one (it may run code when "
                              "unpickled)") from None
    except Exception as exc:  # torch raises many types for corrupt pickles
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    if param_key is not None and not isinstance(obj.get(param_key), Mapping) and ("params" in obj
                                                                                 or "params_ema" in obj):
        raise CheckpointError(f"{path}: no {param_key!r} entry (path.param_key_g); it holds {sorted(obj)}")
    preference = ("params_ema", "params", "state_dict", "model")
    for key in (param_key, *preference) if param_key else preference:  # in order of preference
        if key in obj and isinstance(obj[key], Mapping):
            log.debug("%s: using %r", path, key)
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors (keys: {sorted(obj)[:8]})")
    check_tensors(state, str(path))
    return _strip_prefix(state), None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# Sentences of torch's refusal that tell how to load the file anyway: never repeated.
_ADVICE = ("weights_only", "trust", "safe_globals", "allowlist", "documentation of torch.load", "you have two options",
           "recommended steps")


def _unpickling_detail(message: str) -> str:
    """What a refused pickle asked for, from torch's message, without its advice on loading it anyway."""
    message = _ANSI.sub("", message)
    if match := _GLOBAL.search(message):
        return f"its pickle asks for the Python object {match.group(1)}"
    kept = []
    for line in message.splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        sentences = [s for s in re.split(r"(?<=\.)\s+", line) if s and not any(a in s for a in _ADVICE)]
        if sentences and not line.startswith("Weights only load failed"):
            kept.append(" ".join(sentences))
    return f"its pickle holds more than tensors and plain data ({'; '.join(kept)})" if kept else \
        "its pickle holds more than tensors and plain data"


def check_tensors(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` (naming ``source``) for weights no network should get: tensors that are not
    floating point (integer, bool or complex weights would be cast to float32 and give garbage), or NaN or
    infinite values (an all-black image); the first bad key and the counts are named."""
    odd = [f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in state.items() if not v.is_floating_point()]
    if odd:
        shown = ", ".join(odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        raise CheckpointError(f"{source}: {len(odd)} tensor{'s are' if len(odd) != 1 else ' is'} not floating point: "
                              f"{shown}; network weights are float32, float16, bfloat16 or float64")
    first, n_bad, n_tensors = None, 0, 0
    for key, value in state.items():
        if value.numel() == 0 or bool(torch.isfinite(value).all()):
            continue
        bad = int(value.numel() - torch.isfinite(value).sum())
        if first is None:
            first = (key, int(torch.isnan(value).sum()), bad)
        n_bad, n_tensors = n_bad + bad, n_tensors + 1
    if first is not None:
        key, nan, bad = first
        raise CheckpointError(
            f"{source}: {n_bad} non-finite weight{'s' if n_bad != 1 else ''} (NaN or infinite) in {n_tensors} "
            f"tensor{'s' if n_tensors != 1 else ''}, the first in {key} ({nan} NaN, {bad - nan} infinite of "
            f"{state[key].numel()}); the file is damaged or its training diverged"
        )


@functools.lru_cache(maxsize=64)
def _expected_shapes(config: SSTConfig | ESCRIBConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_network(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def checkpoint_scale(state: StateDict, upsampler: str) -> int | None:
    """The scale a checkpoint's upsampler was trained for (None if it cannot be told)."""
    w = state.get("upsampler.up_conv.weight")
    if w is None or w.ndim != 4 or w.shape[1] == 0:
        return None
    ratio = w.shape[0] / 3 if upsampler == "pixelshuffle_direct" else w.shape[0] / w.shape[1]
    s = round(math.sqrt(ratio))
    return s if s * s == ratio else None


_BLOCK_KEY = re.compile(r"body\.(\d+)\.0\.")  # the first layer of residual block N
_LAYER_KEY = re.compile(r"body\.0\.(\d+)\.attn\.to_qkv\.")  # layer J of the first block


def _shape(state: StateDict, key: str, ndim: int) -> tuple[int, ...] | None:
    t = state.get(key)
    return tuple(t.shape) if isinstance(t, torch.Tensor) and t.ndim == ndim else None


_ESCRIB_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.ln_proj\.")  # ESC-RIB block N
_ESCRIB_UNIT_KEY = re.compile(r"blocks\.0\.pconvs\.(\d+)\.aggr\.")  # convolutional unit J of the first block
_ESCRIB_SIGNS = re.compile(r"plk_filter$|blocks\.\d+\.pconvs\.")
_SST_SIGNS = re.compile(r"body\.\d+\.\d+\.attn\.to_qkv\.")

# Architecture -> the words its parameter names are recognised by (for messages).
_SIGNS_SHOWN = {"ESCRIB": "plk_filter, blocks.N.pconvs.*", "SST": "body.N.J.attn.*"}


def state_architecture(state: StateDict) -> str | None:
    """The architecture a state dict's parameter names show: ``"ESCRIB"`` (``plk_filter``, ``blocks.N.pconvs.*``),
    ``"SST"`` (``body.N.J.attn.*``), or None (neither)."""
    if any(_ESCRIB_SIGNS.match(k) for k in state):
        return "ESCRIB"
    if any(_SST_SIGNS.match(k) for k in state):
        return "SST"
    return None


def structure_problems(state: StateDict, config: SSTConfig | ESCRIBConfig) -> list[str]:
    """The fields of ``config`` that a state dict's shapes contradict, found without building anything: first
    its architecture (when the names show one), then the checks of that architecture (:data:`STRUCTURE_CHECKS`).
    """
    shown = state_architecture(state)
    if shown is not None and shown != config.architecture:
        return [f"architecture: the config is {config.architecture}, the weights are {shown} ({_SIGNS_SHOWN[shown]}); "
                f"pass a config of an {shown} network"]
    return STRUCTURE_CHECKS[config.architecture](state, config)


def _sst_structure_problems(state: StateDict, config: SSTConfig) -> list[str]:
    """The SST fields of ``config`` that a state dict's shapes contradict, found without building anything.

    Checked: ``dim`` (``proj``), ``n_blocks`` (the residual blocks ``body.N``), the layers per block, and
    for each layer of the first block its head count and rank (RIB, FlashBias, RPB tensors), its window size
    where the weights hold one (RPB, FlashBias; RIB's weights do not) and its feed-forward width
    (``exp_ratio``). Other disagreements show when the shapes are compared key by key.
    """
    p: list[str] = []
    proj = _shape(state, "proj.weight", 4)
    if proj is not None and proj[0] != config.dim:
        p.append(f"dim: the config says {config.dim}, proj.weight has {proj[0]} output channels")
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))}
    if len(blocks) != config.n_blocks:
        p.append(f"n_blocks: the config says {config.n_blocks}, the weights hold {len(blocks)} residual block(s) "
                 "(body.N.0.*)")
    layers = {int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))}
    if len(layers) != config.n_layers:
        p.append(f"layers per block: the config has {config.n_layers} (window_sizes {list(config.window_sizes)}), "
                 f"the first block of the weights {len(layers)} (body.0.J.attn.to_qkv)")
        return p
    heads: list[int | None] = []  # per layer of the first block, as the weights tell (None: they do not)
    ranks: list[int | None] = []
    windows: list[int | None] = []
    for j in range(config.n_layers):
        pre = f"body.0.{j}.attn."
        rib = _shape(state, pre + "to_q", 3)  # (heads, rib_hidden_dim, rank)
        factors = _shape(state, pre + "flashbias_q", 3)  # (heads, ws * ws, rank)
        rpb = _shape(state, pre + "relative_position_bias", 2)  # (heads, (2 ws - 1)**2)
        h_r = rib or factors
        heads.append(h_r[0] if h_r else rpb[0] if rpb else None)
        ranks.append(h_r[2] if h_r else None)
        if factors is not None:
            side = math.isqrt(factors[1])
            windows.append(side if side * side == factors[1] else -1)
        elif rpb is not None:
            side = math.isqrt(rpb[1])
            windows.append((side + 1) // 2 if side * side == rpb[1] and side % 2 else -1)
        else:
            windows.append(None)
    for name, told, said in (("num_heads", heads, config.num_heads), ("ranks", ranks, config.ranks),
                             ("window_sizes", windows, config.window_sizes)):
        if any(t is not None and t != c for t, c in zip(told, said, strict=True)):
            shown = ", ".join("?" if t is None else "none" if t == -1 else str(t) for t in told)
            p.append(f"{name}: the config says {list(said)}, the first block's weights [{shown}]")
    return p + _ffn_problems(state, "body.0.0.ffn.proj.weight", config)


def _ffn_problems(state: StateDict, key: str, config: SSTConfig | ESCRIBConfig) -> list[str]:
    """The config's feed-forward width against the first feed-forward 1x1 conv's weight ``key`` (if present)."""
    ffn = _shape(state, key, 4)
    if ffn is None or ffn[0] == config.ffn_hidden:
        return []
    return [f"exp_ratio: the config's {config.exp_ratio} gives {config.ffn_hidden} feed-forward channels "
            f"(int(dim * exp_ratio)), {key} has {ffn[0]}"]


def _escrib_structure_problems(state: StateDict, config: ESCRIBConfig) -> list[str]:
    """The ESC-RIB fields of ``config`` that a state dict's shapes contradict: ``dim`` (``proj``), ``pdim`` and
    ``kernel_size`` (``plk_filter``), ``n_blocks`` (``blocks.N``), ``conv_blocks`` (the first block's units),
    the head count, rank and RIB width (``to_q``), the window size where the weights hold one (RPB,
    FlashBias) and the units' feed-forward width (``exp_ratio``)."""
    p: list[str] = []
    proj = _shape(state, "proj.weight", 4)
    if proj is not None and proj[0] != config.dim:
        p.append(f"dim: the config says {config.dim}, proj.weight has {proj[0]} output channels")
    plk = _shape(state, "plk_filter", 4)  # (pdim, pdim, k, k)
    if plk is not None and (plk[0], plk[2]) != (config.pdim, config.kernel_size):
        p.append(f"pdim, kernel_size: the config says {config.pdim}, {config.kernel_size}, plk_filter is {plk}")
    blocks = {int(m.group(1)) for k in state if (m := _ESCRIB_BLOCK_KEY.match(k))}
    if len(blocks) != config.n_blocks:
        p.append(f"n_blocks: the config says {config.n_blocks}, the weights hold {len(blocks)} block(s) (blocks.N.*)")
    units = {int(m.group(1)) for k in state if (m := _ESCRIB_UNIT_KEY.match(k))}
    if len(units) != config.conv_blocks:
        p.append(f"conv_blocks: the config says {config.conv_blocks}, the first block of the weights holds "
                 f"{len(units)} (blocks.0.pconvs.J)")
    pre = "blocks.0.attn."
    rib = _shape(state, pre + "to_q", 3)  # (heads, rib_hidden_dim, rank)
    told = {"num_heads": rib[0], "rib_hidden_dim": rib[1], "rank": rib[2]} if rib else {}
    if (factors := _shape(state, pre + "flashbias_q", 3)) is not None:  # (heads, ws * ws, rank)
        told.update(num_heads=factors[0], rank=factors[2], window_size=math.isqrt(factors[1]))
    if (rpb := _shape(state, pre + "relative_position_bias", 2)) is not None:  # (heads, (2 ws - 1)**2)
        told.update(num_heads=rpb[0], window_size=(math.isqrt(rpb[1]) + 1) // 2)
    for name, value in told.items():
        if value != getattr(config, name):
            p.append(f"{name}: the config says {getattr(config, name)}, the first block's attention weights {value}")
    return p + _ffn_problems(state, "blocks.0.convffns.0.proj.weight", config)


# Architecture -> its structure check (see structure_problems).
STRUCTURE_CHECKS = {"SST": _sst_structure_problems, "ESCRIB": _escrib_structure_problems}


def fitting_configs(state: StateDict, candidates: Iterable[NetworkConfig]) -> list[NetworkConfig]:
    """The candidates whose parameter names and shapes equal the checkpoint's, in the candidates' order.

    Window sizes are not stored in the weights: candidates that differ only in them fit alike.
    """
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    # The cheap structure check first: building a candidate, even on the meta device, takes time.
    return [c for c in candidates if not structure_problems(state, c) and _expected_shapes(c) == shapes]


def matching_presets(state: StateDict) -> list[str]:
    """Preset names (with scale, e.g. ``light x2``) whose parameter names and shapes equal the checkpoint's."""
    candidates = (preset(name, scale=scale) for name in ALL_PRESETS for scale in (2, 3, 4))
    return [f"{config.name} x{config.scale}" for config in fitting_configs(state, candidates)]


def describe_state(state: StateDict) -> str:
    """What a state dict's shapes tell about its network (window sizes are not among them)."""
    if state_architecture(state) == "ESCRIB":
        return _describe_escrib_state(state)
    facts = []
    if (proj := _shape(state, "proj.weight", 4)) is not None:
        facts.append(f"dim={proj[0]}")
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))}
    layers = {int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))}
    facts.append(f"n_blocks={len(blocks)}, layers per block={len(layers)}")
    heads = [h for j in sorted(layers) if (h := _shape(state, f"body.0.{j}.attn.to_q", 3)) is not None]
    if heads:
        facts.append(f"num_heads={[h[0] for h in heads]}, ranks={[h[2] for h in heads]}, rib_hidden_dim={heads[0][1]}")
    facts.append(_upsampler_facts(state))
    return ", ".join(facts)


def _upsampler_facts(state: StateDict) -> str:
    kinds = {"upsampler.f_img.0.weight": "nn+conv", "upsampler.feature_conv.weight": "pixelshuffle"}
    upsampler = next((v for k, v in kinds.items() if k in state), "pixelshuffle_direct")
    scale = checkpoint_scale(state, upsampler)
    return f"upsampler={upsampler}" + (f" x{scale}" if scale else "")


def _describe_escrib_state(state: StateDict) -> str:
    facts = ["ESC-RIB"]
    if (proj := _shape(state, "proj.weight", 4)) is not None:
        facts.append(f"dim={proj[0]}")
    if (plk := _shape(state, "plk_filter", 4)) is not None:
        facts.append(f"pdim={plk[0]}, kernel_size={plk[2]}")
    blocks = {int(m.group(1)) for k in state if (m := _ESCRIB_BLOCK_KEY.match(k))}
    units = {int(m.group(1)) for k in state if (m := _ESCRIB_UNIT_KEY.match(k))}
    facts.append(f"n_blocks={len(blocks)}, conv_blocks={len(units)}")
    if (rib := _shape(state, "blocks.0.attn.to_q", 3)) is not None:
        facts.append(f"num_heads={rib[0]}, rank={rib[2]}, rib_hidden_dim={rib[1]}")
    facts.append(_upsampler_facts(state))
    return ", ".join(facts)


def resize_upsampler(state: StateDict, upsampler: str, from_scale: int, to_scale: int) -> StateDict:
    """Resize ``upsampler.up_conv`` from one scale to another as the paper's code does.

    The (groups * s * s) output channels are seen as an s x s sub-pixel grid per group (pixel-shuffle
    order) and resized bilinearly (align_corners=False) for every input channel and kernel tap.
    """
    if upsampler not in ("pixelshuffle_direct", "pixelshuffle"):
        raise CheckpointError(f"cannot change the scale of a {upsampler!r} upsampler ({from_scale} -> {to_scale})")
    state = dict(state)
    w, b = state.get("upsampler.up_conv.weight"), state.get("upsampler.up_conv.bias")
    if w is None or b is None or w.ndim != 4 or tuple(b.shape) != (w.shape[0],) or w.shape[0] % (from_scale ** 2):
        shapes = [None if t is None else tuple(t.shape) for t in (w, b)]
        raise CheckpointError(f"cannot resize the upsampler: upsampler.up_conv weight and bias {shapes} are not "
                              f"those of an x{from_scale} pixel-shuffle conv")
    groups = b.shape[0] // (from_scale * from_scale)
    oc, ic, kh, kw = w.shape
    # (groups*s*s, Cin, kh, kw) -> (Cin*kh*kw, groups, s, s)
    grid = w.reshape(groups, from_scale, from_scale, ic * kh * kw).permute(3, 0, 1, 2)
    grid = F.interpolate(grid.float(), size=(to_scale, to_scale), mode="bilinear", align_corners=False)
    # (Cin*kh*kw, groups, s', s') -> (groups*s'*s', Cin, kh, kw)
    state["upsampler.up_conv.weight"] = (
        grid.permute(1, 2, 3, 0).reshape(groups * to_scale * to_scale, ic, kh, kw).to(w.dtype)
    )
    bias = F.interpolate(b.float().reshape(1, groups, from_scale, from_scale), size=(to_scale, to_scale),
                         mode="bilinear", align_corners=False)
    state["upsampler.up_conv.bias"] = bias.reshape(-1).to(b.dtype)
    return state


def _fit_hint(state: StateDict) -> str:
    fits = matching_presets(state)
    hint = f"\n  the checkpoint looks like: {describe_state(state)}"
    return hint + (
        f"\n  it fits preset(s): {', '.join(fits)}"
        if fits
        else "\n  no preset fits it; pass the network_g of the YAML file it was trained with"
    )


def _check_fit(state: StateDict, config: NetworkConfig, path: Path, original: StateDict | None = None) -> None:
    what = f"{config.name or ''}{' ' if config.name else ''}x{config.scale}"
    # The fields the shapes contradict, found before anything is built: a config may claim far more than the
    # file holds (n_blocks=64 for one block), and building it even on the meta device would take long.
    structural = structure_problems(state, config)
    if structural:
        raise CheckpointError(
            f"{path} does not fit the configuration {what}:\n" + "\n".join(f"  - {p}" for p in structural)
            + _fit_hint(state if original is None else original)
        )
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if not (missing or unexpected or misshaped):
        return

    def listing(title: str, items: list[str]) -> str:
        if not items:
            return ""
        shown = "\n".join(f"    {i}" for i in items[:20])
        more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
        return f"\n  {title} ({len(items)}):\n{shown}{more}"

    raise CheckpointError(
        f"{path} does not fit the configuration {what}:"
        + listing("missing keys", missing)
        + listing("unexpected keys", unexpected)
        + listing("mis-shaped keys", misshaped)
        + _fit_hint(state if original is None else original)
    )


_resize = resize_upsampler  # load_model's argument of that name shadows the function


def _declared_scale(spec: ConfigSpec) -> int | None:
    """The scale a config states itself: a config object's, a network_g's ``upscaling_factor`` (or ``scale``), an
    option file's ``scale``; None for preset names and blocks without one (the dataclass default is no claim)."""
    if isinstance(spec, NetworkConfig):
        return spec.scale
    if isinstance(spec, Mapping):
        data: Mapping = spec
    elif preset_name(str(spec)) is not None:
        return None
    else:
        from ribsr.safeyaml import read_yaml

        data = read_yaml(spec, "config file")  # resolve_config has checked the file
    block = data["network_g"] if isinstance(data.get("network_g"), Mapping) else data
    for value in (block.get("upscaling_factor"), block.get("scale"), data.get("scale")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _at_scale(
    path: Path, state: StateDict, stored: NetworkConfig | None, config: ConfigSpec | None, scale: int | None,
    resize: bool,
) -> tuple[SSTConfig | ESCRIBConfig, StateDict]:
    """The config to build and the state dict to load: the scales of the weights, the config and ``scale``
    must agree unless ``resize`` (then the upsampler is resized to the asked scale)."""
    if config is None:
        if stored is None:
            fits = matching_presets(state)
            hint = f" (its shapes fit: {', '.join(fits)}; window sizes are not stored in weights)" if fits else ""
            shown = state_architecture(state)
            if shown is not None and shown != DEFAULT_ARCHITECTURE:  # SST's files went without saying so
                hint += f"; its parameter names are {shown}'s ({_SIGNS_SHOWN[shown]}): {describe_state(state)}"
            raise CheckpointError(f"{path} carries no configuration; pass a config (preset name or YAML){hint}")
        cfg, declared = stored, stored.scale
    else:
        cfg, declared = resolve_config(config), _declared_scale(config)
    resizable = cfg.upsampler in ("pixelshuffle_direct", "pixelshuffle")
    weights = stored.scale if stored is not None else checkpoint_scale(state, cfg.upsampler) if resizable else None
    opt_in = "resize_upsampler=True (CLI: --resize-upsampler; the resized upsampler is untrained, for fine-tuning)"
    if not resize:
        if weights is not None and declared is not None and weights != declared:
            raise CheckpointError(
                f"{path} holds x{weights} weights, but its config says x{declared}; pass a config of x{weights}, "
                f"or pass {opt_in}"
            )
        known = weights if weights is not None else declared
        if scale is not None and known is not None and scale != known:
            what = "weights" if weights is not None else "weights (by their config)"
            raise CheckpointError(
                f"{path} holds x{known} {what}, but scale {scale} (x{scale}) was asked for; ask for x{known}, "
                f"or pass {opt_in}"
            )
    target = next((s for s in (scale, declared, weights) if s is not None), cfg.scale)
    if cfg.scale != target:
        cfg = cfg.replace(scale=target)
    if resizable and weights is not None and weights != target:
        if stored is not None:  # the upsampler's shape, not the metadata, is what gets resized
            weights = checkpoint_scale(state, cfg.upsampler) or weights
        try:
            resized = _resize(state, cfg.upsampler, weights, target)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        _check_fit(resized, cfg, path, original=state)
        log.warning("%s holds x%d weights: resized its upsampler to x%d (untrained)", path.name, weights, target)
        return cfg, resized
    _check_fit(state, cfg, path)
    return cfg, state


def load_model(
    path: str | Path,
    config: ConfigSpec | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    attention: str = "auto",
    scale: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    resize_upsampler: bool = False,
) -> Network:
    """An eval-mode network (SST or ESC-RIB, as its config says) with the weights of a checkpoint.

    ``path`` ``"default"`` or ``"real"`` (when no such file exists) is the bundled bicubic or real-world model of
    ``scale`` (default: x2 where it ships, else its only scale), trained with ``ribsr train`` (docs/models.md).
    ``config`` is a preset name, a ``network_g`` dict, the path of a YAML file, or an :class:`SSTConfig`; it may
    be omitted for our ``.safetensors`` files (they carry theirs).
    ``scale`` (default: the config's, else the weights') must equal the scale of the weights (stored in our
    files, told by the upsampler's shape in others) and the scale the config states (YAML ``upscaling_factor``/
    ``scale``, an ``SSTConfig``; preset names state none): a mismatch is a :class:`CheckpointError`.
    ``resize_upsampler=True`` allows it, resizing the upsampler to ``scale`` (or the config's scale) as the
    paper's code does for fine-tuning (see :func:`resize_upsampler`; the resized upsampler is untrained).
    ``dtype`` (a floating-point ``torch.dtype`` or its name, ``"bfloat16"``) defaults to float32.
    ``path`` may be an ``http(s)://`` URL: downloaded once into ``torch.hub.get_dir()/checkpoints`` (with a
    progress bar on a terminal unless ``progress`` is False) and read from there after; ``sha256``, when
    given, is checked (see :func:`ribsr.hub.fetch`).
    """
    dtype = _weights_dtype(dtype)
    device = resolve_device(device)  # a bad name is a ValueError before anything is read
    if str(path) in BUNDLED_MODELS and not Path(path).exists():
        path = bundled_model_path(str(path), scale)
    origin, path = path, fetch(path, sha256=sha256, progress=progress)
    state, stored = _read_local(path, origin)
    cfg, state = _at_scale(path, state, stored, config, scale, resize_upsampler)
    model = build_network(cfg, attention=attention)
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def _weights_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """The floating-point dtype ``load_model`` is asked for: a ``torch.dtype``, its name (``"float32"``,
    ``"torch.bfloat16"``) or None (float32)."""
    if dtype is None:
        return torch.float32
    named = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(named, torch.dtype) or not named.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype or its name (float32, bfloat16, float16, "
                         f"float64), got {dtype!r}")
    return named


# ------------------------------------------------------------------------------------------ writing
def save_model(model: Network, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a model's weights and config as ``.safetensors`` (tensors made contiguous, on CPU)."""
    from safetensors.torch import save_file

    from ribsr import __version__

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_model writes .safetensors files, got {path}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT_NAME, "ribsr_version": __version__, "ribsr_config": model.config.to_json()}
    meta.update(metadata or {})
    from safetensors import SafetensorError

    try:
        with atomic_write(path) as tmp:
            save_file(state, str(tmp), metadata=meta)
    except SafetensorError as exc:  # a full disk, an I/O error: the safetensors library's own exception type
        raise OSError(f"cannot write {path}: {exc}{disk_space_hint(path)}") from None
    return path


def convert_checkpoint(src: str | Path, dst: str | Path, config: ConfigSpec) -> Path:
    """Convert one of the paper's ``.pth`` checkpoints to our ``.safetensors`` with its config."""
    model = load_model(src, config=config)
    return save_model(model, dst, metadata={"source": Path(src).name})


def resolve_model(
    spec: str | Path | None,
    config: ConfigSpec | None = None,
    scale: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    attention: str = "auto",
    sha256: str | None = None,
    progress: bool = True,
    resize_upsampler: bool = False,
    denoise: float | None = None,
) -> Network:
    """The model a ``--model`` option names: a checkpoint path or URL, ``"real"`` for the bundled real-world
    model, or None (or ``"default"``) for the bundled bicubic model, of ``scale``.

    ``denoise`` (0..1, with ``spec`` None or ``"real"``): the bundled bicubic and real-world models of ``scale``
    blended by :func:`blend_models` (0: the bicubic model, 1: the real-world one; Real-ESRGAN's ``-dn``).
    """
    if denoise is not None:
        if spec not in (None, REAL_MODEL) or config is not None or sha256 is not None or resize_upsampler:
            shown = redact(spec) if isinstance(spec, str) else spec
            raise ValueError(f"denoise blends the bundled default and real models; it does not apply to model "
                             f"{shown!r}" + (" with a config, a SHA-256 or a resized upsampler" if spec in
                                            (None, REAL_MODEL) else ""))
        path = bundled_model_path(REAL_MODEL, scale)
        real = load_model(path, attention=attention)
        base = load_model(DEFAULT_MODEL, scale=real.config.scale, attention=attention)
        return blend_models(base, real, denoise).to(device=resolve_device(device), dtype=_weights_dtype(dtype))
    return load_model(spec or DEFAULT_MODEL, config=config, device=device, dtype=dtype, attention=attention,
                      scale=scale, sha256=sha256, progress=progress, resize_upsampler=resize_upsampler)


def blend_models(base: Network, other: Network, strength: float) -> Network:
    """A new eval-mode network with ``base``'s config and the weights ``(1 - strength) * base + strength * other``
    (deep network interpolation, as Real-ESRGAN's ``-dn``): exactly ``base``'s at 0 and ``other``'s at 1.

    Both models must have the same config; ``strength`` must be in [0, 1]. Blending is done in float32 and the
    result has ``base``'s dtype and device.
    """
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number from 0 to 1, got {strength!r}")
    if base.config != other.config:
        raise CheckpointError(f"cannot blend models of different networks: {base.config.to_json()} and "
                              f"{other.config.to_json()}")
    a, b = base.state_dict(), other.state_dict()
    if strength == 0:
        state = {k: v.clone() for k, v in a.items()}
    elif strength == 1:
        state = {k: b[k].to(dtype=v.dtype, device=v.device).clone() for k, v in a.items()}
    else:
        state = {k: torch.lerp(v.float(), b[k].to(device=v.device).float(), float(strength)).to(v.dtype)
                 if v.is_floating_point() else v.clone() for k, v in a.items()}
    model = copy.deepcopy(base)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_pretrained(model: Network, path: str | Path, param_key: str = "params", strict: bool = True) -> None:
    """Load the weights of a training's ``path.pretrain_network_g`` into ``model``: the ``param_key`` entry of a
    ``.pth`` (a bare state dict as it is), or our ``.safetensors``; an upsampler trained for another scale is
    resized to the model's (fine-tuning x3/x4 from x2). ``strict`` False logs the missing and unexpected keys."""
    path = Path(path)
    state, _ = read_checkpoint(path, param_key=param_key)
    cfg = model.config
    src_scale = checkpoint_scale(state, cfg.upsampler)
    if src_scale is not None and src_scale != cfg.scale:
        state = resize_upsampler(state, cfg.upsampler, src_scale, cfg.scale)
        log.info("%s holds x%d weights: resized its upsampler to x%d", path.name, src_scale, cfg.scale)
    result = model.load_state_dict(state, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        log.warning("%s: missing keys %s, unexpected keys %s", path.name, result.missing_keys[:8],
                    result.unexpected_keys[:8])
    log.info("loaded pretrained weights from %s", path)


def describe(model: Network) -> str:
    """One line: architecture, preset/scale, parameters, attention path."""
    n = sum(p.numel() for p in model.parameters())
    c = model.config
    return f"{type(model).__name__} {c.name or 'custom'} x{c.scale} ({n / 1e6:.3f} M parameters, " \
        f"attention={model.attention})"


__all__ = [
    "CheckpointError", "checkpoint_scale", "convert_checkpoint", "describe", "fitting_configs", "load_pretrained",
    "load_model",
    "check_tensors", "matching_presets", "read_checkpoint", "read_state", "resize_upsampler", "resolve_model",
    "save_model", "state_architecture", "structure_problems",
]
