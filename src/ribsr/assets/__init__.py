"""Files shipped inside the package (sample images, and the default model once one is released)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DEFAULT_MODEL_NAME = "ribsr-default.safetensors"


class NoBundledModelError(ValueError):
    """This installation ships no default model; the user must name a checkpoint."""


def default_model_path() -> Path:
    """The bundled default model, or an error saying which weights to pass instead."""
    path = ASSETS / DEFAULT_MODEL_NAME
    if path.is_file():
        return path
    raise NoBundledModelError(
        "this ribsr installation ships no default model yet: pass --model PATH with a released SST "
        "checkpoint (the paper's .pth files need --config PRESET, e.g. --config light; "
        "our .safetensors files carry their config), or convert one with `ribsr convert`"
    )
