"""Where a network runs: device and dtype names, and the device/dtype a model's parameters live on."""

from __future__ import annotations

import torch
from torch import nn

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; otherwise ``torch.device(device)`` (ValueError for a name
    torch does not know, or CUDA asked for where there is none).

    ``"auto"`` means the same everywhere (the CLI and :class:`ribsr.Upscaler`): the fastest device this
    machine has. Pass a device to keep a model where it is.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:  # torch's message lists its every device type
        raise ValueError(f"unknown device {str(device)!r}: use auto, cpu, cuda or cuda:N ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``/None: float32 on CPU; on CUDA bfloat16 where supported, else float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def parameter_place(
    model: nn.Module,
    default_device: torch.device | str = "cpu",
    default_dtype: torch.dtype = torch.float32,
) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of a model's first parameter (the defaults for a model without any)."""
    param = next(iter(model.parameters()), None)
    if param is None:
        return torch.device(default_device), default_dtype
    return param.device, param.dtype
