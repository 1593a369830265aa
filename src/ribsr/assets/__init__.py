"""Files shipped inside the package: the bundled default models (x2, x3, x4) and a sample image."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DEFAULT_MODEL = "default"  # the name load_model and --model accept for the bundled model
SAMPLE_IMAGE = ASSETS / "butterfly.png"  # Set5 "butterfly", the 128x128 bicubic x2 LR copy


class NoBundledModelError(ValueError):
    """This installation ships no default model for the requested scale."""


def default_model_path(scale: int = 2) -> Path:
    """The bundled model of ``scale`` (trained by ``ribsr train``, see docs/models.md)."""
    path = ASSETS / f"ribsr-default-x{scale}.safetensors"
    if path.is_file():
        return path
    have = bundled_scales()
    raise NoBundledModelError(
        f"no bundled default model for x{scale} (bundled: {', '.join(f'x{s}' for s in have) or 'none'}); "
        "pass --model PATH with an SST checkpoint (the paper's .pth files need --config PRESET, e.g. "
        "--config light; our .safetensors files carry their config)"
    )


def bundled_scales() -> list[int]:
    """The scales that have a bundled default model."""
    found = []
    for path in ASSETS.glob("ribsr-default-x*.safetensors"):
        suffix = path.stem.removeprefix("ribsr-default-x")
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)
