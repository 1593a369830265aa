"""The SST network's modules (nn.Modules only)."""

from ribsr.model.attention import BACKENDS, WindowAttention, make_backend
from ribsr.model.positional import RIB, NoPE, PositionalScheme
from ribsr.model.sst import SST, ResidualBlock, TransformerLayer

__all__ = [
    "BACKENDS", "RIB", "SST", "NoPE", "PositionalScheme", "ResidualBlock", "TransformerLayer",
    "WindowAttention", "make_backend",
]
