"""The SST and ESC-RIB networks' modules (nn.Modules only, and the registries of the named ones); ribsr.build
assembles them."""

from ribsr.model.attention import BACKENDS, WindowAttention, make_backend, window_partition, window_unpartition
from ribsr.model.esc import ESCRIB, ESCBlock
from ribsr.model.layers import GATES
from ribsr.model.positional import POSITIONAL, RIB, RPB, CacheBudget, FlashBias, NoPE, PositionalScheme, RoPE
from ribsr.model.sst import SST, ResidualBlock, TransformerLayer
from ribsr.model.upsampler import UPSAMPLERS

__all__ = [
    "BACKENDS", "ESCRIB", "GATES", "POSITIONAL", "RIB", "RPB", "SST", "UPSAMPLERS", "CacheBudget", "ESCBlock",
    "FlashBias", "NoPE", "PositionalScheme", "ResidualBlock", "RoPE", "TransformerLayer", "WindowAttention",
    "make_backend", "window_partition", "window_unpartition",
]
