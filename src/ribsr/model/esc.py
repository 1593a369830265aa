"""ESC-RIB: the ESC network with one RIB window attention per block and large-kernel convolutional attention.

The authors' ESC design (Lee et al.) with each block's window attention given 64x64 windows and the RIB
positional term (:class:`~ribsr.model.positional.RIB`), as released beside SST. Structure (state-dict
prefixes in brackets, the released checkpoints' names)::

    kernel = dihedral_average(plk_filter)            [plk_filter] (pdim, pdim, k, k), shared by all blocks
    feat = proj(x)                                   [proj]
    h    = blocks(feat, kernel)                      [blocks.0 .. blocks.{n_blocks-1}: ESCBlock]
    feat = last(h) + feat                            [last.0: LayerNorm2d, last.1: 3x3 conv]
    out  = upsampler(feat, x)                        [upsampler]

One block (:class:`ESCBlock`)::

    y = proj(ln_proj(x))                             [ln_proj, proj: ConvFFN with 4*dim channels]
    y = y + attn(ln_attn(y))                         [ln_attn, attn: WindowAttention, never shifted]
    for each unit j:                                 (conv_blocks units)
        y = y + pconvs[j](convffns[j](lns[j](y)), kernel)
                                                     [lns.j: LayerNorm2d or identity, convffns.j: ConvFFN,
                                                      pconvs.j: ConvAttention]
    return conv_out(ln_out(y)) + x                   [ln_out, conv_out: 3x3 conv]

The large kernel is averaged over the 8 flips and rotations of its taps on every call ("geometric
re-parameterisation"): a projection, so averaging an already averaged kernel changes it only by rounding,
and checkpoints saved before or after :meth:`ESCRIB.fold_kernel` (the paper's ``convert()``) load alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ribsr.model.attention import WindowAttention
from ribsr.model.layers import ConvFFN, LayerNorm2d
from ribsr.model.positional import share_bias_budget

if TYPE_CHECKING:  # model/ never imports the config at run time: ribsr.build reads it and builds these modules
    from ribsr.config import ESCRIBConfig

# Bytes of dense positional biases one network keeps between eval calls (all blocks together): the five
# 64x64-window RIB biases of the published ESC-RIB (4 heads, 4096 x 4096 float32: 256 MiB each).
DEFAULT_BIAS_CACHE_BYTES = 1280 * 2**20

DYNAMIC_KERNEL = 3  # side of the per-image depthwise kernel added to the large one


def dihedral_average(kernel: torch.Tensor) -> torch.Tensor:
    """The mean of the 8 flips and 90-degree rotations of a kernel's (kh, kw) taps: (..., k, k) -> same shape.

    The result is symmetric under all 8, and averaging it again returns it (up to rounding).
    """
    t = kernel.transpose(-2, -1)  # the transpose and the flips of both give all 8
    flips = ((), (-1,), (-2,), (-2, -1))
    return (sum(kernel.flip(f) if f else kernel for f in flips) + sum(t.flip(f) if f else t for f in flips)) / 8


class ESCConvFFN(ConvFFN):
    """:class:`~ribsr.model.layers.ConvFFN` under ESC's parameter names: the output 1x1 conv, ``agg`` here, is
    stored and loaded as ``aggr``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(dim, hidden)
        self._register_state_dict_hook(_agg_to_aggr)
        self._register_load_state_dict_pre_hook(_aggr_to_agg)


def _agg_to_aggr(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "agg.")]:
        state_dict[prefix + "aggr." + key[len(prefix) + 4:]] = state_dict.pop(key)
    return state_dict


def _aggr_to_agg(state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    for key in [k for k in state_dict if k.startswith(prefix + "aggr.")]:
        state_dict[prefix + "agg." + key[len(prefix) + 5:]] = state_dict.pop(key)


class PartialLargeKernelConv(nn.Module):
    """The first ``pdim`` channels convolved with the shared large kernel plus a 3x3 depthwise kernel that each
    image predicts from itself; the other channels pass unchanged.

    The predictor ``dwc_proj`` is global average pooling, 1x1 conv to pdim // 2, GELU, 1x1 conv to pdim * 9
    (zero-initialised, so the dynamic kernel starts at zero).
    """

    def __init__(self, pdim: int) -> None:
        super().__init__()
        self.pdim = pdim
        k2 = DYNAMIC_KERNEL * DYNAMIC_KERNEL
        self.dwc_proj = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(pdim, pdim // 2, 1), nn.GELU(), nn.Conv2d(pdim // 2, pdim * k2, 1)
        )
        nn.init.zeros_(self.dwc_proj[-1].weight)
        nn.init.zeros_(self.dwc_proj[-1].bias)

    def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p, s = self.pdim, DYNAMIC_KERNEL
        part, rest = x[:, :p], x[:, p:]
        # (B, pdim*9, 1, 1) -> (B*pdim, 1, 3, 3): one depthwise kernel per image and channel
        dynamic = self.dwc_proj(part).reshape(b * p, 1, s, s)
        # (B, pdim, H, W) -> (1, B*pdim, H, W): every channel of every image is a group of its own
        local = F.conv2d(part.reshape(1, b * p, h, w), dynamic, padding=s // 2, groups=b * p)
        part = F.conv2d(part, kernel, padding=kernel.shape[-1] // 2) + local.reshape(b, p, h, w)
        return torch.cat([part, rest], dim=1)

    def extra_repr(self) -> str:
        return f"pdim={self.pdim}"


class ConvAttention(nn.Module):
    """ESC's convolutional attention unit: :class:`PartialLargeKernelConv` (``plk``), then a 1x1 conv (``aggr``)."""

    def __init__(self, dim: int, pdim: int) -> None:
        super().__init__()
        self.plk = PartialLargeKernelConv(pdim)
        self.aggr = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return self.aggr(self.plk(x, kernel))


class ESCBlock(nn.Module):
    """One ESC-RIB block (see the module docstring): a 4x-wide ConvFFN, the window attention ``attn`` (built
    by the caller with its positional scheme), ``conv_blocks`` units of ConvFFN (``ffn_hidden`` channels) and
    convolutional attention, a LayerNorm and a 3x3 conv; returns x + that. ``use_ln`` puts a LayerNorm before
    each unit (identity otherwise, as in the published model)."""

    def __init__(
        self, dim: int, pdim: int, attn: WindowAttention, conv_blocks: int, ffn_hidden: int, use_ln: bool = False
    ) -> None:
        super().__init__()
        self.ln_proj = LayerNorm2d(dim)
        self.proj = ESCConvFFN(dim, 4 * dim)
        self.ln_attn = LayerNorm2d(dim)
        self.attn = attn
        self.lns = nn.ModuleList([LayerNorm2d(dim) if use_ln else nn.Identity() for _ in range(conv_blocks)])
        self.pconvs = nn.ModuleList([ConvAttention(dim, pdim) for _ in range(conv_blocks)])
        self.convffns = nn.ModuleList([ESCConvFFN(dim, ffn_hidden) for _ in range(conv_blocks)])
        self.ln_out = LayerNorm2d(dim)
        self.conv_out = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.ln_proj(x))
        y = y + self.attn(self.ln_attn(y))
        for ln, pconv, ffn in zip(self.lns, self.pconvs, self.convffns, strict=True):
            y = y + pconv(ffn(ln(y)), kernel)
        return self.conv_out(self.ln_out(y)) + x


class ESCRIB(nn.Module):
    """The ESC-RIB super-resolution network: (B, 3, h, w) in [0, 1] -> (B, 3, s*h, s*w), any h and w.

    Built by :func:`ribsr.build.build_escrib` (or ``ribsr.build_model("escrib")``) from ``config``, kept as
    ``self.config`` (checkpoints store it): ``blocks`` are :class:`ESCBlock` s and ``upsampler`` maps (features,
    input) to the output. ``attention`` names the attention path (for descriptions only); ``bias_cache_bytes``
    bounds the dense positional biases kept between eval calls (:meth:`set_bias_cache`). The shared kernel
    ``plk_filter`` (pdim, pdim, k, k) is orthogonally initialised; the other weights keep PyTorch's defaults
    (RIB's its own), as the paper's code leaves them.
    """

    def __init__(
        self,
        config: ESCRIBConfig,
        blocks: Sequence[ESCBlock],
        upsampler: nn.Module,
        attention: str = "auto",
        bias_cache_bytes: int = DEFAULT_BIAS_CACHE_BYTES,
    ) -> None:
        super().__init__()
        self.config = config
        self.attention = attention
        k = config.kernel_size
        self.plk_filter = nn.Parameter(torch.empty(config.pdim, config.pdim, k, k))
        nn.init.orthogonal_(self.plk_filter)
        self.folded = False  # True after fold_kernel(): plk_filter is used as it is
        self.proj = nn.Conv2d(3, config.dim, 3, padding=1)
        self.blocks = nn.ModuleList(blocks)
        self.last = nn.Sequential(LayerNorm2d(config.dim), nn.Conv2d(config.dim, config.dim, 3, padding=1))
        self.upsampler = upsampler
        self.set_bias_cache(bias_cache_bytes)

    @property
    def scale(self) -> int:
        return self.config.scale

    def kernel(self) -> torch.Tensor:
        """The large kernel the blocks use: ``plk_filter`` averaged over its 8 symmetries (as it is once folded)."""
        return self.plk_filter if self.folded else dihedral_average(self.plk_filter)

    @torch.no_grad()
    def fold_kernel(self) -> None:
        """Store the averaged kernel in ``plk_filter`` and stop averaging (the paper's ``convert()``, for
        inference: training a folded network no longer keeps the kernel symmetric)."""
        self.plk_filter.copy_(dihedral_average(self.plk_filter))
        self.folded = True

    def set_bias_cache(self, max_bytes: int) -> None:
        """Let all blocks together keep at most ``max_bytes`` of dense biases between eval calls (0: none);
        first come, first served. Clears what is cached now."""
        share_bias_budget(self, max_bytes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ESCRIB expects an RGB batch of shape (B, 3, H, W), got {tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last)  # as SST: per-pixel LayerNorm reads contiguous channels
        kernel = self.kernel()
        feat = self.proj(x)
        h = feat
        for block in self.blocks:
            h = block(h, kernel)
        feat = self.last(h) + feat
        return self.upsampler(feat, x).contiguous()
