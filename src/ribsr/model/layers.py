"""Small building blocks shared by the SST network: per-pixel LayerNorm, ConvFFN, the attention gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of every pixel of a (B, C, H, W) map."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H, W, C): a free view when x is channels_last in memory.
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)  # back to (B, C, H, W), channels_last strides

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class ConvFFN(nn.Module):
    """Feed-forward block: 1x1 expand, GELU, residual depthwise 3x3 with GELU, 1x1 project."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, hidden, 1)
        self.dwc = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.agg = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.proj(x))
        h = h + F.gelu(self.dwc(h))
        return self.agg(h)


class DWCGate(nn.Sequential):
    """The convolutional local branch: sigmoid(1x1(depthwise 3x3(x))), multiplied onto attention."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.Conv2d(dim, dim, 1), nn.Sigmoid())


class LinearGate(nn.Sequential):
    """A pointwise gate, sigmoid(1x1(x)) (the paper's ``gate_type: Linear`` ablation)."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Conv2d(dim, dim, 1), nn.Sigmoid())


# SSTConfig.gate_type -> the gate's class, called with (dim); "none" (no gate) is not a module.
GATES: dict[str, type[nn.Module]] = {"DWC": DWCGate, "Linear": LinearGate}
