"""The SST network's modules (nn.Modules only)."""

from ribsr.model.attention import BACKENDS, WindowAttention, make_backend
from ribsr.model.positional import RIB, RPB, CacheBudget, FlashBias, NoPE, PositionalScheme, RoPE
from ribsr.model.sst import POSITIONAL, SST, ResidualBlock, TransformerLayer, make_positional

__all__ = [
    "BACKENDS", "POSITIONAL", "RIB", "RPB", "SST", "CacheBudget", "FlashBias", "NoPE", "PositionalScheme",
    "ResidualBlock", "RoPE", "TransformerLayer", "WindowAttention", "make_backend", "make_positional",
]
