"""Reconstruction heads: features (B, dim, h, w) plus the input image -> (B, 3, s*h, s*w)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PixelShuffleDirect(nn.Module):
    """One 3x3 conv to 3*s*s channels plus the input repeated s*s times, then pixel shuffle (light models)."""

    def __init__(self, dim: int, scale: int, intermediate_dim: int = 64) -> None:
        super().__init__()
        self.scale = scale
        self.up_conv = nn.Conv2d(dim, 3 * scale * scale, 3, padding=1)

    def forward(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # (B, 3*s*s, h, w): channel c*s*s + i*s + j becomes pixel (i, j) of colour c.
        y = self.up_conv(feat) + torch.repeat_interleave(x, self.scale * self.scale, dim=1)
        return F.pixel_shuffle(y, self.scale)


class PixelShuffle(nn.Module):
    """3x3 conv + LeakyReLU, 3x3 conv to F*s*s, pixel shuffle, 3x3 conv to RGB, plus nearest-upsampled input."""

    def __init__(self, dim: int, scale: int, intermediate_dim: int = 64) -> None:
        super().__init__()
        self.scale = scale
        self.feature_conv = nn.Conv2d(dim, intermediate_dim, 3, padding=1)
        self.up_conv = nn.Conv2d(intermediate_dim, intermediate_dim * scale * scale, 3, padding=1)
        self.final_conv = nn.Conv2d(intermediate_dim, 3, 3, padding=1)

    def forward(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.feature_conv(feat), 0.1)
        y = self.final_conv(F.pixel_shuffle(self.up_conv(y), self.scale))
        return y + F.interpolate(x, scale_factor=self.scale, mode="nearest")


class NearestConv(nn.Module):
    """Nearest-neighbour upsampling by 2 (or 3) with 3x3 convs; the image enters through ``f_img``.

    Parameter names follow the paper's ``nn+conv`` upsampler: ``f.*`` (the upsampling stack) and
    ``f_img.*`` (1x1, 7x7, LeakyReLU, 1x1 on the input image, added to the features).
    """

    def __init__(self, dim: int, scale: int, intermediate_dim: int = 64) -> None:
        super().__init__()
        if scale == 3:
            steps = [3]
        elif scale > 0 and scale & (scale - 1) == 0:
            steps = [2] * int(math.log2(scale))
        else:
            raise ValueError(f"nn+conv upsampler supports scales 2**n and 3, got {scale}")
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(dim, intermediate_dim, 3, padding=1), nn.LeakyReLU(0.1)]
        for step in steps:
            layers += [
                nn.Upsample(scale_factor=step, mode="nearest"),
                nn.Conv2d(intermediate_dim, intermediate_dim, 3, padding=1),
                nn.LeakyReLU(0.1),
            ]
        layers.append(nn.Conv2d(intermediate_dim, 3, 3, padding=1))
        self.f = nn.Sequential(*layers)
        self.f_img = nn.Sequential(
            nn.Conv2d(3, dim, 1), nn.Conv2d(dim, dim, 7, padding=3), nn.LeakyReLU(0.1), nn.Conv2d(dim, dim, 1)
        )

    def forward(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.f(feat + self.f_img(x))


# SSTConfig.upsampler -> the head's class, called with (dim, scale, intermediate_dim).
UPSAMPLERS: dict[str, type[nn.Module]] = {
    "pixelshuffle_direct": PixelShuffleDirect,
    "pixelshuffle": PixelShuffle,
    "nn+conv": NearestConv,
}
