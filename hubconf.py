"""torch.hub entry points of ribsr: SST and ESC-RIB networks by preset, with weights from a file or URL, and the
bundled models.

    import torch
    model = torch.hub.load(REPO, "sst", "light", scale=2)                            # fresh (training mode)
    model = torch.hub.load(REPO, "sst", "light", scale=2, weights="SST_light_x2.pth")  # or an https:// URL
    model = torch.hub.load(REPO, "sst_default", scale=2)                             # the bundled x2 model
    model = torch.hub.load(REPO, "sst_real", scale=4, denoise=0.5)                   # the real-world x4 model
    model = torch.hub.load(REPO, "escrib", scale=2, weights="ESCRIB_DFLIP_X2.pth")   # ESC-RIB, the paper's weights

``REPO`` is this repository's folder (with ``source="local"``) or its GitHub ``owner/name``. The installed
``ribsr`` is used when there is one; otherwise the package is imported from this repository's ``src/``.
"""

import importlib.util as _importlib_util
import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch", "numpy", "PIL", "safetensors", "yaml", "tqdm"]

if _importlib_util.find_spec("ribsr") is None:  # not installed: the package in this repository's src/
    _sys.path.insert(0, str(_Path(__file__).resolve().parent / "src"))


def sst(config=None, scale=None, weights=None, *, sha256=None, progress=True, device="cpu", attention="auto",
        **overrides):
    """An SST network (ribsr.SST), or an ESC-RIB (ribsr.model.ESCRIB) for an ESC-RIB config.

    config: a preset name ("light", "light+", "base", "base+", "large", "large+", "xl+"; "escrib" for ESC-RIB),
        the path of a YAML option file, a network_g dict or a config object (ribsr.SSTConfig,
        ribsr.config.ESCRIBConfig); may be omitted for our .safetensors weights (they carry their config).
    scale: the upscaling factor (default: the config's, else the weights'; presets default to 2). It must
        equal the scale of the weights.
    weights: None for a freshly initialised network (training mode), or a checkpoint path or http(s) URL
        (the paper's .pth or our .safetensors) for a network in eval mode; a URL is downloaded once into
        torch.hub.get_dir()/checkpoints, checked against sha256 when that is given, and read from there after.
    progress: show a download progress bar (on a terminal).
    device, attention: where the network lives and its attention path (see ribsr.build_model).
    overrides: config fields replaced in a fresh network (e.g. n_blocks=2); not with weights.
    """
    import ribsr

    if weights is None:
        if config is None:
            raise ValueError("sst: pass a config (a preset name such as 'light', or a YAML file) or weights")
        return ribsr.build_model(config, scale=scale, attention=attention, **overrides).to(device)
    if overrides:
        raise ValueError(f"sst: config overrides {sorted(overrides)} apply to fresh networks, not to weights")
    return ribsr.load_model(weights, config=config, scale=scale, sha256=sha256, progress=progress, device=device,
                            attention=attention)


def sst_default(scale=2, *, device="cpu", attention="auto"):
    """The bundled default model of ``scale`` (trained with ``ribsr train``, see docs/models.md), in eval mode.

    A scale without a bundled model raises an error that lists the bundled scales.
    """
    import ribsr
    from ribsr.assets import default_model_path

    return ribsr.load_model(default_model_path(scale), device=device, attention=attention)


def sst_real(scale=4, denoise=None, *, device="cpu", attention="auto"):
    """The bundled real-world model of ``scale`` (the default model fine-tuned on Real-ESRGAN-style degradations,
    see docs/models.md), in eval mode. ``denoise`` (0..1) blends the bundled default (0) and real-world (1)
    weights, as ``ribsr upscale --denoise``.
    """
    from ribsr.checkpoint import resolve_model

    return resolve_model("real", scale=scale, device=device, attention=attention, denoise=denoise)


def _preset_entry(name):
    def entry(scale=None, weights=None, **kwargs):
        return sst(name, scale=scale, weights=weights, **kwargs)

    entry.__name__ = entry.__qualname__ = "sst_" + name.replace("+", "_plus")
    entry.__doc__ = f'SST-{name}: the same as sst("{name}", scale, weights, ...) (see sst).'
    return entry


sst_light = _preset_entry("light")
sst_light_plus = _preset_entry("light+")
sst_base = _preset_entry("base")
sst_base_plus = _preset_entry("base+")
sst_large = _preset_entry("large")
sst_large_plus = _preset_entry("large+")
sst_xl_plus = _preset_entry("xl+")


def escrib(scale=None, weights=None, **kwargs):
    """ESC-RIB (the published network of the paper's ESCRIB_X2/X3/X4.yaml): the same as sst("escrib", scale,
    weights, ...) (see sst). The paper's released .pth files (params_ema, before or after their convert()) load
    as they are."""
    return sst("escrib", scale=scale, weights=weights, **kwargs)
