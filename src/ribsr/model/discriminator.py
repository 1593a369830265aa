"""Real-ESRGAN's U-Net discriminator with spectral normalization (``network_d: {type: UNetDiscriminatorSN}``).

The layers and their names are Real-ESRGAN's: ``conv0`` (3x3), ``conv1``..``conv3`` (4x4, stride 2, down),
``conv4``..``conv6`` (3x3 after a bilinear x2 upsampling, with skip connections), ``conv7``/``conv8`` (3x3) and
``conv9`` (3x3 to one channel); every convolution but ``conv0`` and ``conv9`` is spectrally normalised.

Real-ESRGAN's ``net_d`` files load. Real-ESRGAN uses the older hook-based ``torch.nn.utils.spectral_norm``, whose
state-dict keys are ``convN.weight_orig``, ``convN.weight_u`` and ``convN.weight_v``; this module uses
``torch.nn.utils.parametrizations.spectral_norm``, whose keys are ``convN.parametrizations.weight.original``,
``convN.parametrizations.weight.0._u`` and ``convN.parametrizations.weight.0._v`` (same shapes, same meaning).
:func:`convert_state_dict` renames the former to the latter, and :meth:`UNetDiscriminatorSN.load_state_dict`
accepts either. With the same tensors both give the same output in eval mode; in training mode each forward
runs one power iteration, which the older code does in the other order (v, then u), so the estimate of the
largest singular value differs slightly until it has converged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["UNetDiscriminatorSN", "convert_state_dict"]

# The hook-based spectral norm's names -> the parametrization's.
_OLD_SN = re.compile(r"^(.*)\.weight_(orig|u|v)$")
_NEW_SN = {"orig": "parametrizations.weight.original", "u": "parametrizations.weight.0._u",
           "v": "parametrizations.weight.0._v"}


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A discriminator state dict with the hook-based spectral norm's keys (``weight_orig``, ``weight_u``,
    ``weight_v``, as Real-ESRGAN's ``net_d`` files have them) under the parametrization's names; other keys
    unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _OLD_SN.match(key)
        out[f"{m.group(1)}.{_NEW_SN[m.group(2)]}" if m else key] = value
    return out


class UNetDiscriminatorSN(nn.Module):
    """U-Net discriminator with spectral normalization: (N, num_in_ch, H, W) -> (N, 1, H, W) realness logits.

    H and W must be multiples of 8 (three stride-2 steps down, three x2 steps up, joined by skip connections).
    ``skip_connection`` adds each down level's features to the up level of the same size.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        self.skip_connection = skip_connection
        f = num_feat

        def sn(cin: int, cout: int, k: int, s: int) -> nn.Module:
            return spectral_norm(nn.Conv2d(cin, cout, k, s, 1, bias=False))

        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        self.conv1 = sn(f, f * 2, 4, 2)
        self.conv2 = sn(f * 2, f * 4, 4, 2)
        self.conv3 = sn(f * 4, f * 8, 4, 2)
        self.conv4 = sn(f * 8, f * 4, 3, 1)
        self.conv5 = sn(f * 4, f * 2, 3, 1)
        self.conv6 = sn(f * 2, f, 3, 1)
        self.conv7 = sn(f, f, 3, 1)
        self.conv8 = sn(f, f, 3, 1)
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def act(t: torch.Tensor) -> torch.Tensor:
            return F.leaky_relu(t, negative_slope=0.2)

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

        x0 = act(self.conv0(x))  # (N, f, H, W)
        x1 = act(self.conv1(x0))  # (N, 2f, H/2, W/2)
        x2 = act(self.conv2(x1))  # (N, 4f, H/4, W/4)
        x3 = act(self.conv3(x2))  # (N, 8f, H/8, W/8)
        x4 = act(self.conv4(up(x3)))  # (N, 4f, H/4, W/4)
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))  # (N, 2f, H/2, W/2)
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))  # (N, f, H, W)
        if self.skip_connection:
            x6 = x6 + x0
        out = act(self.conv7(x6))
        out = act(self.conv8(out))
        return self.conv9(out)  # (N, 1, H, W)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """As :meth:`torch.nn.Module.load_state_dict`; Real-ESRGAN's keys are accepted too
        (:func:`convert_state_dict`)."""
        return super().load_state_dict(convert_state_dict(state_dict), strict=strict, assign=assign)
