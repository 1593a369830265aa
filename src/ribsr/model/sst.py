"""SST: the Scalable SR Transformer with RIB window attention (Lee et al., 2026).

Structure (state-dict prefixes in brackets)::

    feat = proj(x)                                  [proj]
    feat = feat + body(feat)                        [body.0 .. body.{n_blocks-1}: ResidualBlock,
                                                     body.{n_blocks}: LayerNorm2d, body.{n_blocks+1}: conv]
    out  = upsampler(feat, x)                       [upsampler]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ribsr.model.attention import WindowAttention
from ribsr.model.layers import LayerNorm2d
from ribsr.model.positional import share_bias_budget

if TYPE_CHECKING:  # model/ never imports the config at run time: ribsr.build reads it and builds these modules
    from ribsr.config import SSTConfig

# Bytes of dense positional biases one network keeps between calls in eval mode (all layers together):
# enough for every bias of ``light`` (its five 64x64-window biases take 5 x 192 MiB), which saves about a
# quarter of those layers' attention time on the CPU; beyond it biases are rebuilt per call.
DEFAULT_BIAS_CACHE_BYTES = 1280 * 2**20


class TransformerLayer(nn.Module):
    """Pre-norm layer: x + attn(norm(x)), then x + ffn(norm(x)).

    ``cpe``, when given (the CPE scheme's depthwise 3x3 conv), first adds a conditional positional
    encoding to the layer input: ``x = x + cpe(x)``.
    """

    def __init__(self, dim: int, attn: WindowAttention, ffn: nn.Module, cpe: nn.Module | None = None) -> None:
        super().__init__()
        self.cpe = cpe
        self.norm_attn = LayerNorm2d(dim)
        self.attn = attn
        self.norm_ffn = LayerNorm2d(dim)
        self.ffn = ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpe is not None:
            x = x + self.cpe(x)
        x = x + self.attn(self.norm_attn(x))
        return x + self.ffn(self.norm_ffn(x))


class ResidualBlock(nn.Sequential):
    """The given layers, then a 3x3 conv; returns x + block(x)."""

    def __init__(self, layers: Sequence[nn.Module], dim: int) -> None:
        super().__init__(*layers, nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class SST(nn.Module):
    """The SST super-resolution network: (B, 3, h, w) in [0, 1] -> (B, 3, s*h, s*w), any h and w.

    Built by :func:`ribsr.build.build_sst` (or ``ribsr.build_model``) from ``config``, which it keeps as
    ``self.config`` (checkpoints store it): ``blocks`` are the residual blocks of the body and ``upsampler``
    maps (features, input) to the output. ``attention`` is the name of the attention path the layers use
    (for descriptions only). ``bias_cache_bytes`` bounds the dense positional biases all layers together keep
    between calls in eval mode (see :meth:`set_bias_cache`). The constructor re-initialises all parameters
    as the paper does (:meth:`reset_parameters`).
    """

    def __init__(
        self,
        config: SSTConfig,
        blocks: Sequence[nn.Module],
        upsampler: nn.Module,
        attention: str = "auto",
        bias_cache_bytes: int = DEFAULT_BIAS_CACHE_BYTES,
    ) -> None:
        super().__init__()
        self.config = config
        self.attention = attention
        self.proj = nn.Conv2d(3, config.dim, 3, padding=1)
        self.body = nn.Sequential(
            *blocks,
            LayerNorm2d(config.dim),
            nn.Conv2d(config.dim, config.dim, 3, padding=1),
        )
        self.upsampler = upsampler
        self.reset_parameters()
        self.set_bias_cache(bias_cache_bytes)

    def set_bias_cache(self, max_bytes: int) -> None:
        """Let all layers together keep at most ``max_bytes`` of dense biases between eval calls (0: none).

        Biases are cached first come, first served (the first layers to run); the rest are rebuilt on
        every call. Clears what is cached now.
        """
        share_bias_budget(self, max_bytes)

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
