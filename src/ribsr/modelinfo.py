"""What the inference code needs to know about a super-resolution network, as one typed descriptor.

:func:`model_info` reads it from a model: a module that carries a :class:`ModelInfo` as its ``info``
attribute describes itself (stand-ins, wrappers, other architectures); an SST is described from its
config. Nothing else in the inference code looks at a model's attributes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

ALL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class ModelInfo:
    """A network's contract with the inference code.

    ``scale``: output side / input side. ``multiple_of``: the alignment unit; tiles are sized and placed
    on multiples of it so that they are cut into the same attention windows as the whole image (the lcm
    of the window sizes for SST). ``dtypes``: the dtypes the network may run in. ``set_bias_cache``: sets
    how many bytes of dense positional biases the network may keep between calls (None: it keeps none).
    ``width`` (feature channels) and ``bias_bytes`` (the largest float32 dense positional bias of one
    layer) feed the modelled memory cost (:func:`ribsr.planning.modelled_memory_cost`).
    """

    scale: int
    multiple_of: int = 1
    dtypes: tuple[torch.dtype, ...] = ALL_DTYPES
    set_bias_cache: Callable[[int], None] | None = None
    width: int = 64
    bias_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("scale", "multiple_of", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelInfo.{name} must be a positive integer, got {value!r}")
        if self.bias_bytes < 0:
            raise ValueError(f"ModelInfo.bias_bytes must be >= 0, got {self.bias_bytes!r}")
        if not self.dtypes:
            raise ValueError("ModelInfo.dtypes must name at least one dtype")


def model_info(model: nn.Module, *, scale: int | None = None, multiple_of: int | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of ``model``; ``scale``/``multiple_of`` override what the model says.

    A model with no ``info`` and no SST-like ``config`` (``scale``, ``window_sizes``; ``num_heads`` a list or one
    count) needs both overrides.
    """
    info = getattr(model, "info", None)
    if not isinstance(info, ModelInfo):
        info = _from_config(model)
    if info is None:
        if scale is None or multiple_of is None:
            raise ValueError(
                f"{type(model).__name__} has neither a ModelInfo (.info) nor config.scale / config.window_sizes; "
                "pass scale= and align= explicitly"
            )
        setter = getattr(model, "set_bias_cache", None)
        return ModelInfo(scale, multiple_of, set_bias_cache=setter if callable(setter) else None)
    if scale is not None or multiple_of is not None:
        info = replace(info, scale=scale or info.scale, multiple_of=multiple_of or info.multiple_of)
    return info


def _from_config(model: nn.Module) -> ModelInfo | None:
    """The descriptor of an SST (anything with its ``config`` fields), or None."""
    config = getattr(model, "config", None)
    scale = getattr(config, "scale", None)
    windows = tuple(int(w) for w in getattr(config, "window_sizes", None) or ())
    if not isinstance(scale, int) or not windows:
        return None
    heads = getattr(config, "num_heads", None) or (1,) * len(windows)
    heads = (heads,) * len(windows) if isinstance(heads, int) else tuple(heads)  # ESC-RIB: one count for all
    setter = getattr(model, "set_bias_cache", None)
    return ModelInfo(
        scale=scale,
        multiple_of=math.lcm(*windows),
        set_bias_cache=setter if callable(setter) else None,
        width=int(getattr(config, "dim", 64)),
        bias_bytes=max(int(h) * ws**4 * 4 for ws, h in zip(windows, heads, strict=False)),
    )
