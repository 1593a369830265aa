"""SST and ESC-RIB checkpoints in spandrel, the model loader of chaiNNer, ComfyUI and other upscaling tools.

    import spandrel
    from ribsr.integrations.spandrel import register

    register()  # adds SST and ESC-RIB to spandrel.MAIN_REGISTRY (once; calling again is harmless)
    model = spandrel.ModelLoader().load_from_file("SST_light_x2.pth")  # or the paper's ESCRIB_DFLIP_X2.pth
    sr = model(image)  # (1, 3, H, W) in [0, 1] -> (1, 3, 2H, 2W), any H and W

Each architecture is detected by its parameter names (:class:`SSTArch`, :class:`ESCRIBArch`).

spandrel hands an architecture only the checkpoint's tensors (it drops the metadata of our
``.safetensors`` files), and window sizes are not stored in the weights. So the config of a
checkpoint is the first *known* config whose parameter names and shapes equal the checkpoint's
(:func:`ribsr.checkpoint.fitting_configs`, as ``ribsr info`` matches presets), taken at the
checkpoint's scale. The known configs of an architecture are, in order: those of it given to
:func:`register` (preset names, ``network_g`` dicts, YAML files, config objects), the bundled default
models', then its presets. The ``+`` presets have the same shapes as their namesakes (``light+`` as
``light``), so a ``+`` checkpoint needs ``register(configs=["light+"])``; otherwise it loads as ``light``
(with a warning naming both). The released ESC-RIB checkpoints fit the ``escrib`` preset (64x64 windows).

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
from ribsr.build import ConfigSpec, build_network, resolve_config
from ribsr.checkpoint import (
    CheckpointError,
    StateDict,
    checkpoint_scale,
    describe_state,
    fitting_configs,
    read_checkpoint,
)
from ribsr.config import ESCRIB_PRESETS, PRESETS, ConfigError, ESCRIBConfig, NetworkConfig, SSTConfig, preset
from ribsr.model import ESCRIB, SST

log = logging.getLogger(__name__)

ARCH_ID = "ribsr-SST"
ESCRIB_ARCH_ID = "ribsr-ESCRIB"

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

# Keys every ESC-RIB has (the shared large kernel, a block's parts, the tail), whatever its options.
_ESCRIB_DETECT = KeyCondition.has_all(
    "plk_filter",
    "proj.weight",
    "blocks.0.ln_proj.weight",
    "blocks.0.proj.aggr.weight",
    "blocks.0.attn.to_qkv.weight",
    "blocks.0.attn.to_out.weight",
    "blocks.0.pconvs.0.plk.dwc_proj.1.weight",
    "blocks.0.pconvs.0.aggr.weight",
    "blocks.0.convffns.0.aggr.weight",
    "blocks.0.conv_out.weight",
    "last.1.weight",
    KeyCondition.has_any("upsampler.up_conv.weight", "upsampler.f.0.weight"),
)

# Both run on the CPU near float32 (README.md, "Use it elsewhere"; benchmarks/bench_spandrel_dtypes.py,
# tests/integrations/test_spandrel.py).
SUPPORTS_HALF = True
SUPPORTS_BFLOAT16 = True


def bundled_configs() -> list[NetworkConfig]:
    """The configs of the bundled default models (from their metadata, read once per process)."""
    return list(_bundled_configs())


@functools.cache
def _bundled_configs() -> tuple[NetworkConfig, ...]:
    configs = (read_checkpoint(default_model_path(scale))[1] for scale in bundled_scales())
    return tuple(config for config in configs if config is not None)


class _KnownConfigsArch(Architecture):
    """An architecture of ribsr in spandrel: detected by parameter names, its config the first known config the
    checkpoint's shapes fit (see the module doc). Subclasses name the architecture and its presets."""

    architecture: str  # a config's ``architecture`` (ribsr.config.ARCHITECTURES)
    label: str  # how messages name it

    def __init__(self, configs: Iterable[ConfigSpec], arch_id: str, detect: KeyCondition) -> None:
        super().__init__(id=arch_id, name=self.label, detect=detect)
        self._configs: list[NetworkConfig] = []
        self.add_configs(configs)

    def presets(self) -> Iterator[NetworkConfig]:
        raise NotImplementedError

    @property
    def configs(self) -> tuple[NetworkConfig, ...]:
        """The configs given by the user, tried before the bundled models' and the presets."""
        return tuple(self._configs)

    def add_configs(self, configs: Iterable[ConfigSpec]) -> None:
        """Make configs known (preset names, ``network_g`` dicts, YAML/JSON files, config objects), ahead of the
        bundled models' and the presets; a config already known is not added twice. A config of another
        architecture is a ValueError."""
        for spec in configs:
            config = resolve_config(spec)
            if config.architecture != self.architecture:
                raise ValueError(f"{self.label} takes configs of its own architecture, got one of "
                                 f"{config.architecture} ({config.name or 'custom'})")
            if config not in self._configs:
                self._configs.append(config)

    def candidates(self, state: StateDict) -> Iterator[NetworkConfig]:
        """The known configs, in order, each at the scale the checkpoint's upsampler was trained for."""
        bundled = (c for c in bundled_configs() if c.architecture == self.architecture)
        for config in (*self._configs, *bundled, *self.presets()):
            scale = checkpoint_scale(state, config.upsampler)
            if scale is not None and scale != config.scale:
                try:
                    config = config.replace(scale=scale)
                except ConfigError:  # a scale the network does not build (e.g. x5)
                    continue
            yield config

    def config_of(self, state: StateDict) -> NetworkConfig:
        """The config of a checkpoint: the first known config it fits (:class:`CheckpointError` if none)."""
        state = {k: v for k, v in state.items() if hasattr(v, "shape")}
        fits = fitting_configs(state, self.candidates(state))
        if not fits:
            raise CheckpointError(
                f"an {self.label} checkpoint ({describe_state(state)}) that fits none of the known configs (the "
                "presets, the bundled models and those registered); window sizes are not stored in the weights, so "
                "pass its config: ribsr.integrations.spandrel.register(configs=[PRESET, NETWORK_G dict or YAML path])"
            )
        config = fits[0]
        others = sorted({_label(c) for c in fits[1:] if c.window_sizes != config.window_sizes})
        if others:
            log.warning(
                "this %s checkpoint's shapes also fit %s (other window sizes, which the weights do not store); "
                "loading it as %s. register(configs=[...]) chooses another.",
                self.label, ", ".join(others), _label(config),
            )
        return config

    def load(self, state_dict: StateDict) -> ImageModelDescriptor:
        config = self.config_of(state_dict)
        model = build_network(config).eval()
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
            size_requirements=SizeRequirements(),  # the networks pad to their windows themselves: any size works
            tiling=ModelTiling.SUPPORTED,
        )


class SSTArch(_KnownConfigsArch, Architecture[SST]):
    """spandrel's description of SST: detection by parameter names, config by shapes (see the module doc)."""

    architecture = "SST"
    label = "SST"

    def __init__(self, configs: Iterable[ConfigSpec] = ()) -> None:
        super().__init__(configs, ARCH_ID, _DETECT)

    def presets(self) -> Iterator[SSTConfig]:
        return (preset(name) for name in PRESETS)


class ESCRIBArch(_KnownConfigsArch, Architecture[ESCRIB]):
    """spandrel's description of ESC-RIB: detection by parameter names (``plk_filter``, ``blocks.N.pconvs``),
    config by shapes among the registered configs and the ESC-RIB presets (see the module doc)."""

    architecture = "ESCRIB"
    label = "ESC-RIB"

    def __init__(self, configs: Iterable[ConfigSpec] = ()) -> None:
        super().__init__(configs, ESCRIB_ARCH_ID, _ESCRIB_DETECT)

    def presets(self) -> Iterator[ESCRIBConfig]:
        return (preset(name) for name in ESCRIB_PRESETS)


def _label(config: NetworkConfig) -> str:
    windows = "-".join(str(w) for w in config.window_sizes)
    return f"{config.name or 'custom'} x{config.scale} (windows {windows})"


def tags(config: NetworkConfig) -> list[str]:
    """spandrel's short description of a model: preset name, width, blocks, windows, positional scheme."""
    return [
        config.name or "custom",
        f"{config.dim}dim",
        f"{config.n_blocks}nb",
        "w" + "-".join(str(w) for w in config.window_sizes),
        config.attn_type,
    ]


# Architecture name -> (its spandrel id, its class); register adds every one.
ARCHS: dict[str, tuple[str, type[_KnownConfigsArch]]] = {
    "SST": (ARCH_ID, SSTArch), "ESCRIB": (ESCRIB_ARCH_ID, ESCRIBArch),
}


def register(configs: ConfigSpec | Iterable[ConfigSpec] = (), registry: ArchRegistry | None = None) -> SSTArch:
    """Add SST and ESC-RIB to spandrel's registry (``spandrel.MAIN_REGISTRY`` unless ``registry`` is given) and
    return the SST architecture (the ESC-RIB one is ``registry.get(ESCRIB_ARCH_ID).architecture``).

    Adds each once: a later call finds the architectures already there, and adds ``configs`` (one spec or several;
    see :meth:`SSTArch.add_configs`) to the known configs of the architecture each describes.
    """
    registry = spandrel.MAIN_REGISTRY if registry is None else registry
    if isinstance(configs, (str, Path, Mapping, NetworkConfig)):
        configs = [configs]
    archs: dict[str, _KnownConfigsArch] = {}
    for name, (arch_id, cls) in ARCHS.items():
        support = registry.get(arch_id)
        if support is None:
            archs[name] = cls()
            registry.add(ArchSupport.from_architecture(archs[name]))
        elif isinstance(support.architecture, cls):
            archs[name] = support.architecture
        else:
            raise ValueError(f"spandrel's registry already holds another architecture with the id {arch_id!r}")
    for spec in configs:
        config = resolve_config(spec)
        archs[config.architecture].add_configs([config])
    return archs["SST"]  # type: ignore[return-value]


__all__ = ["ARCHS", "ARCH_ID", "ESCRIBArch", "ESCRIB_ARCH_ID", "SSTArch", "bundled_configs", "register", "tags"]
