"""Files shipped inside the package: the bundled models and a sample image.

Bundled models, by the name ``load_model`` and ``--model`` accept:

- ``default``: trained on bicubic downscaling (x2, x3, x4);
- ``real``: the ``default`` network fine-tuned on Real-ESRGAN-style degradations (blur, noise, resizing, JPEG) for
  photos that were downscaled and compressed (x4);
- ``escrib``: a small ESC-RIB trained with the ``default`` x2 recipe (x2).

All are trained by ``ribsr train`` with the recipes in ``configs/local`` (docs/models.md).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DEFAULT_MODEL = "default"  # the name load_model and --model accept for the bundled bicubic model
REAL_MODEL = "real"  # ... and for the bundled real-world model
ESCRIB_MODEL = "escrib"  # ... and for the bundled ESC-RIB
BUNDLED_MODELS = (DEFAULT_MODEL, REAL_MODEL, ESCRIB_MODEL)
SAMPLE_IMAGE = ASSETS / "butterfly.png"  # Set5 "butterfly", the 128x128 bicubic x2 LR copy


class NoBundledModelError(ValueError):
    """This installation ships no bundled model of that name for the requested scale."""


def bundled_model_path(name: str = DEFAULT_MODEL, scale: int | None = None) -> Path:
    """The file of the bundled model ``name`` (``default``, ``real`` or ``escrib``) at ``scale`` (default: x2 where
    it ships, else the only scale that does)."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"bundled models are {', '.join(BUNDLED_MODELS)}, got {name!r}")
    have = bundled_scales(name)
    if scale is None:
        scale = 2 if 2 in have or not have else have[0]
    path = ASSETS / f"ribsr-{name}-x{scale}.safetensors"
    if path.is_file():
        return path
    raise NoBundledModelError(
        f"no bundled {name} model for x{scale} (bundled: {', '.join(f'x{s}' for s in have) or 'none'}); "
        "pass --model PATH with an SST checkpoint (the paper's .pth files need --config PRESET, e.g. "
        "--config light; our .safetensors files carry their config)"
    )


def default_model_path(scale: int = 2) -> Path:
    """The bundled bicubic model of ``scale`` (trained by ``ribsr train``, see docs/models.md)."""
    return bundled_model_path(DEFAULT_MODEL, scale)


def bundled_scales(name: str = DEFAULT_MODEL) -> list[int]:
    """The scales that have a bundled model of ``name``."""
    found = []
    for path in ASSETS.glob(f"ribsr-{name}-x*.safetensors"):
        suffix = path.stem.removeprefix(f"ribsr-{name}-x")
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)
