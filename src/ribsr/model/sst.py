"""SST: the Scalable SR Transformer with RIB window attention (Lee et al., 2026).

Structure (state-dict prefixes in brackets)::

    feat = proj(x)                                  [proj]
    feat = feat + body(feat)                        [body.0 .. body.{n_blocks-1}: ResidualBlock,
                                                     body.{n_blocks}: LayerNorm2d, body.{n_blocks+1}: conv]
    out  = upsampler(feat, x)                       [upsampler]
"""

from __future__ import annotations

import torch
from torch import nn

from ribsr.config import SSTConfig
from ribsr.model.attention import AttentionFn, WindowAttention, make_backend
from ribsr.model.layers import ConvFFN, LayerNorm2d
from ribsr.model.positional import RIB, NoPE, PositionalScheme
from ribsr.model.upsampler import UPSAMPLERS


def make_positional(config: SSTConfig, heads: int, rank: int, window_size: int) -> PositionalScheme:
    """The positional scheme of one attention layer, as ``config.attn_type`` names it."""
    if config.attn_type == "RIB":
        return RIB(heads, rank, config.rib_hidden_dim, config.rib_n_freqs)
    if config.attn_type == "NoPE":
        return NoPE()
    raise ValueError(f"attn_type {config.attn_type!r} is not available in this build")


class TransformerLayer(nn.Module):
    """Pre-norm layer: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: SSTConfig, index: int, backend: AttentionFn) -> None:
        super().__init__()
        ws, heads, rank = config.window_sizes[index], config.num_heads[index], config.ranks[index]
        self.norm_attn = LayerNorm2d(config.dim)
        self.attn = WindowAttention(
            config.dim, ws, heads,
            pos=make_positional(config, heads, rank, ws),
            gate=config.gate_type,
            shift=config.shifted and index % 2 == 1,
            backend=backend,
        )
        self.norm_ffn = LayerNorm2d(config.dim)
        self.ffn = ConvFFN(config.dim, config.ffn_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x))
        return x + self.ffn(self.norm_ffn(x))


class ResidualBlock(nn.Sequential):
    """Transformer layers with cycling window sizes, then a 3x3 conv; returns x + block(x)."""

    def __init__(self, config: SSTConfig, backend: AttentionFn) -> None:
        layers = [TransformerLayer(config, j, backend) for j in range(config.n_layers)]
        super().__init__(*layers, nn.Conv2d(config.dim, config.dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class SST(nn.Module):
    """The SST super-resolution network: (B, 3, h, w) in [0, 1] -> (B, 3, s*h, s*w), any h and w.

    ``attention`` names the attention path (see :func:`ribsr.model.attention.make_backend`); it
    changes speed and memory, never the architecture or the parameters.
    """

    def __init__(self, config: SSTConfig, attention: str | AttentionFn = "auto") -> None:
        super().__init__()
        self.config = config
        backend = make_backend(attention) if isinstance(attention, str) else attention
        self.attention = attention if isinstance(attention, str) else getattr(attention, "__name__", "custom")
        self.proj = nn.Conv2d(3, config.dim, 3, padding=1)
        self.body = nn.Sequential(
            *[ResidualBlock(config, backend) for _ in range(config.n_blocks)],
            LayerNorm2d(config.dim),
            nn.Conv2d(config.dim, config.dim, 3, padding=1),
        )
        self.upsampler = UPSAMPLERS[config.upsampler](config.dim, config.scale, config.intermediate_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation: 1x1 convs truncated-normal(0.02), conv biases zero, 3x3 default."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if isinstance(m, nn.Linear) or m.kernel_size == (1, 1):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"SST expects an RGB batch of shape (B, 3, H, W), got {tuple(x.shape)}")
        # The trunk runs in channels_last memory format: per-pixel LayerNorm and the window partition
        # then read contiguous channels, and oneDNN convolutions prefer it.
        x = x.contiguous(memory_format=torch.channels_last)
        feat = self.proj(x)
        feat = feat + self.body(feat)
        return self.upsampler(feat, x).contiguous()
