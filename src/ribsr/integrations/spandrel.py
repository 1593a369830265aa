"""SST checkpoints in spandrel, the model loader of chaiNNer, ComfyUI and other upscaling tools.

    import spandrel
    from ribsr.integrations.spandrel import register

    register()  # adds SST to spandrel.MAIN_REGISTRY (once; calling again is harmless)
    model = spandrel.ModelLoader().load_from_file("SST_light_x2.pth")
    sr = model(image)  # (1, 3, H, W) in [0, 1] -> (1, 3, 2H, 2W), any H and W

spandrel hands an architecture only the checkpoint's tensors (it drops the metadata of our
``.safetensors`` files), and window sizes are not stored in the weights. So the config of a
checkpoint is the first *known* config whose parameter names and shapes equal the checkpoint's
(:func:`ribsr.checkpoint.fitting_configs`, as ``ribsr info`` matches presets), taken at the
checkpoint's scale. The known configs are, in order: those given to :func:`register` (preset names,
``network_g`` dicts, YAML files, :class:`~ribsr.SSTConfig`), the bundled default models', then the
presets. The ``+`` presets have the same shapes as their namesakes (``light+`` as ``light``), so a
``+`` checkpoint needs ``register(configs=["light+"])``; otherwise it loads as ``light`` (with a
warning naming both).

This module needs the ``spandrel`` extra (``pip install 'ribsr[spandrel]'``); ``import ribsr`` never
imports it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import spandrel
from spandrel import Architecture, ArchRegistry, ArchSupport, ImageModelDescriptor, ModelTiling, SizeRequirements
from spandrel.util import KeyCondition

from ribsr.assets import bundled_scales, default_model_path
from ribsr.build import ConfigSpec, build_sst, resolve_config
from ribsr.checkpoint import (
    CheckpointError,
    StateDict,
    checkpoint_scale,
    describe_state,
    fitting_configs,
    read_checkpoint,
)
from ribsr.config import PRESETS, ConfigError, SSTConfig, preset
from ribsr.model import SST

log = logging.getLogger(__name__)

ARCH_ID = "ribsr-SST"

# Keys every SST has, whatever its positional scheme, gate and upsampler.
_DETECT = KeyCondition.has_all(
    "proj.weight",
    "body.0.0.norm_attn.weight",
    "body.0.0.attn.to_qkv.weight",
    "body.0.0.attn.to_out.weight",
    "body.0.0.norm_ffn.weight",
    "body.0.0.ffn.proj.weight",
    "body.0.0.ffn.dwc.weight",
    "body.0.0.ffn.agg.weight",
    KeyCondition.has_any("upsampler.up_conv.weight", "upsampler.f.0.weight"),
)

# Both run on the CPU near float32 (README.md, "Use it elsewhere"; benchmarks/bench_spandrel_dtypes.py,
# tests/integrations/test_spandrel.py).
SUPPORTS_HALF = True
SUPPORTS_BFLOAT16 = True


def bundled_configs() -> list[SSTConfig]:
    """The configs of the bundled default models (from their metadata, read once per process)."""
    return list(_bundled_configs())


@functools.cache
def _bundled_configs() -> tuple[SSTConfig, ...]:
    configs = (read_checkpoint(default_model_path(scale))[1] for scale in bundled_scales())
    return tuple(config for config in configs if config is not None)


class SSTArch(Architecture[SST]):
    """spandrel's description of SST: detection by parameter names, config by shapes (see the module doc)."""

    def __init__(self, configs: Iterable[ConfigSpec] = ()) -> None:
        super().__init__(id=ARCH_ID, name="SST", detect=_DETECT)
        self._configs: list[SSTConfig] = []
        self.add_configs(configs)

    @property
    def configs(self) -> tuple[SSTConfig, ...]:
        """The configs given by the user, tried before the bundled models' and the presets."""
        return tuple(self._configs)

    def add_configs(self, configs: Iterable[ConfigSpec]) -> None:
        """Make configs known (preset names, ``network_g`` dicts, YAML/JSON files, SSTConfig), ahead of the
        bundled models' and the presets; a config already known is not added twice."""
        for spec in configs:
            config = resolve_config(spec)
            if config not in self._configs:
                self._configs.append(config)

    def candidates(self, state: StateDict) -> Iterator[SSTConfig]:
        """The known configs, in order, each at the scale the checkpoint's upsampler was trained for."""
        presets = (preset(name) for name in PRESETS)
        for config in (*self._configs, *bundled_configs(), *presets):
            scale = checkpoint_scale(state, config.upsampler)
            if scale is not None and scale != config.scale:
                try:
                    config = config.replace(scale=scale)
                except ConfigError:  # a scale SST does not build (e.g. x5)
                    continue
            yield config

    def config_of(self, state: StateDict) -> SSTConfig:
        """The config of an SST checkpoint: the first known config it fits (:class:`CheckpointError` if none)."""
        state = {k: v for k, v in state.items() if hasattr(v, "shape")}
        fits = fitting_configs(state, self.candidates(state))
        if not fits:
            raise CheckpointError(
                f"an SST checkpoint ({describe_state(state)}) that fits none of the known configs (the presets, "
                "the bundled models and those registered); window sizes are not stored in the weights, so pass "
                "its config: ribsr.integrations.spandrel.register(configs=[PRESET, NETWORK_G dict or YAML path])"
            )
        config = fits[0]
        others = sorted({_label(c) for c in fits[1:] if c.window_sizes != config.window_sizes})
        if others:
            log.warning(
                "this SST checkpoint's shapes also fit %s (other window sizes, which the weights do not store); "
                "loading it as %s. register(configs=[...]) chooses another.",
                ", ".join(others), _label(config),
            )
        return config

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[SST]:
        config = self.config_of(state_dict)
        model = build_sst(config).eval()
        return ImageModelDescriptor(
            model,
            state_dict,  # loaded (strictly) by the descriptor
            architecture=self,
            purpose="SR",
            tags=tags(config),
            supports_half=SUPPORTS_HALF,
            supports_bfloat16=SUPPORTS_BFLOAT16,
            scale=config.scale,
            input_channels=3,
            output_channels=3,
            size_requirements=SizeRequirements(),  # SST pads to its windows itself: any size works
            tiling=ModelTiling.SUPPORTED,
        )


def _label(config: SSTConfig) -> str:
    windows = "-".join(str(w) for w in config.window_sizes)
    return f"{config.name or 'custom'} x{config.scale} (windows {windows})"


def tags(config: SSTConfig) -> list[str]:
    """spandrel's short description of a model: preset name, width, blocks, windows, positional scheme."""
    return [
        config.name or "custom",
        f"{config.dim}dim",
        f"{config.n_blocks}nb",
        "w" + "-".join(str(w) for w in config.window_sizes),
        config.attn_type,
    ]


def register(configs: ConfigSpec | Iterable[ConfigSpec] = (), registry: ArchRegistry | None = None) -> SSTArch:
    """Add SST to spandrel's registry (``spandrel.MAIN_REGISTRY`` unless ``registry`` is given) and return it.

    Adds it once: a later call returns the architecture already there, after adding ``configs`` (one
    spec or several; see :meth:`SSTArch.add_configs`) to its known configs.
    """
    registry = spandrel.MAIN_REGISTRY if registry is None else registry
    if isinstance(configs, (str, Path, Mapping, SSTConfig)):
        configs = [configs]
    support = registry.get(ARCH_ID)
    if support is None:
        arch = SSTArch()
        registry.add(ArchSupport.from_architecture(arch))
    elif isinstance(support.architecture, SSTArch):
        arch = support.architecture
    else:
        raise ValueError(f"spandrel's registry already holds another architecture with the id {ARCH_ID!r}")
    arch.add_configs(configs)
    return arch


__all__ = ["ARCH_ID", "SSTArch", "bundled_configs", "register", "tags"]
