"""SST through spandrel's loader (ribsr.integrations.spandrel) against ribsr.load_model.

Needs spandrel, which needs torchvision: these tests run in the second venv that .ci/run builds
(.venv-spandrel, see README.md) and are skipped where spandrel is not installed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

spandrel = pytest.importorskip("spandrel")

import ribsr  # noqa: E402
from ribsr.assets import default_model_path  # noqa: E402
from ribsr.checkpoint import CheckpointError  # noqa: E402
from ribsr.config import PRESETS, preset  # noqa: E402
from ribsr.integrations.spandrel import ARCH_ID, SSTArch, register  # noqa: E402

TOL = 1e-6  # max abs difference between spandrel's output and ribsr.load_model's (float32, CPU)

pytestmark = pytest.mark.usefixtures("one_thread")


def loader(*configs) -> spandrel.ModelLoader:
    """A ModelLoader over a private registry holding only SST with ``configs`` (MAIN_REGISTRY is left alone)."""
    registry = spandrel.ArchRegistry()
    register(configs, registry=registry)
    return spandrel.ModelLoader(registry=registry)


def ours(path: Path, config, x: torch.Tensor) -> torch.Tensor:
    """ribsr's output for ``x``, clamped to [0, 1] as spandrel's descriptor clamps its output."""
    with torch.inference_mode():
        return ribsr.load_model(path, config=config)(x).clamp(0, 1)


def save_paper_format(model: ribsr.SST, path: Path) -> Path:
    """The paper's released format: ``{'params_ema': state_dict}`` in a .pth file."""
    torch.save({"params_ema": model.state_dict()}, path)
    return path


# ---------------------------------------------------------------------------------------- fixtures
def test_shared_fixture_matches_load_model_and_the_papers_output(shared_dir: Path) -> None:
    fixtures = shared_dir / "fixtures" / "official-sst"
    if not (fixtures / "shift_x4.pth").is_file():
        pytest.skip(f"no shared fixture in {fixtures}")
    network_g = json.loads((fixtures / "cases.json").read_text())["shift_x4"]["network_g"]
    io = torch.load(fixtures / "shift_x4_io.pt", weights_only=True)
    descriptor = loader(network_g).load_from_file(fixtures / "shift_x4.pth")
    assert descriptor.architecture.id == ARCH_ID
    assert (descriptor.scale, descriptor.input_channels, descriptor.output_channels) == (4, 3, 3)
    # spandrel's call takes one image, and ribsr's output is taken per image too: ribsr alone gives the batch of
    # two 1.07e-6 apart from per image on an AMD EPYC (float32 rounding that depends on the batch size)
    got = torch.cat([descriptor(x[None]) for x in io["input"]])
    expected = torch.cat([ours(fixtures / "shift_x4.pth", network_g, x[None]) for x in io["input"]])
    assert (got - expected).abs().max().item() <= TOL
    assert (got - io["output"].clamp(0, 1)).abs().max().item() <= 1e-4  # the paper's code, as in test_official


def test_shared_fixture_needs_its_config(shared_dir: Path) -> None:
    """Its shapes fit no preset and window sizes are not in the weights: a clear error, not a wrong model."""
    path = shared_dir / "fixtures" / "official-sst" / "shift_x4.pth"
    if not path.is_file():
        pytest.skip(f"no shared fixture at {path}")
    with pytest.raises(CheckpointError, match=r"dim=32.*fits none of the known configs.*register\(configs="):
        loader().load_from_file(path)


def test_bundled_model_loads_with_its_config() -> None:
    path = default_model_path(2)
    descriptor = loader().load_from_file(path)  # spandrel drops the metadata: the config comes from the shapes
    assert descriptor.model.config == ribsr.load_model(path).config
    assert descriptor.tags == ["custom", "24dim", "2nb", "w8-16-8-16", "RIB"]
    x = torch.rand(1, 3, 23, 17)
    assert (descriptor(x) - ours(path, None, x)).abs().max().item() <= TOL


def test_our_safetensors_loads(tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = preset("light", scale=3, window_sizes=(4, 8, 4, 8, 4, 8))  # light's shapes, small windows
    path = ribsr.save_model(ribsr.build_model(config), tmp_path / "light_x3.safetensors")
    descriptor = loader(config).load_from_file(path)
    assert descriptor.model.config == config and descriptor.scale == 3
    x = torch.rand(1, 3, 11, 14)
    assert (descriptor(x) - ours(path, None, x)).abs().max().item() <= TOL


@pytest.mark.parametrize("layout", ["bare", "module.", "params"])
def test_bare_and_wrapped_state_dicts_load(layout: str, tmp_path: Path) -> None:
    """A bare state dict, one saved from DataParallel (``module.`` names), the paper's ``params`` key."""
    model = ribsr.load_model("default")
    state = model.state_dict()
    obj = {"bare": state, "module.": {f"module.{k}": v for k, v in state.items()}, "params": {"params": state}}
    path = tmp_path / "sst.pth"
    torch.save(obj[layout], path)
    descriptor = loader().load_from_file(path)
    x = torch.rand(1, 3, 10, 13)
    with torch.inference_mode():
        expected = model(x).clamp(0, 1)
    assert (descriptor(x) - expected).abs().max().item() <= TOL


# -------------------------------------------------------------------------- the seven presets
SCALES = {name: 2 + i % 3 for i, name in enumerate(PRESETS)}  # x2, x3, x4 in turn


@pytest.fixture(scope="module")
def preset_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Each preset at its scale in SCALES, random weights, saved in the paper's .pth format."""
    folder = tmp_path_factory.mktemp("presets")
    paths = {}
    for name, scale in SCALES.items():
        torch.manual_seed(0)
        model = ribsr.build_model(name, scale=scale)
        paths[name] = save_paper_format(model, folder / f"SST_{name}_x{scale}.pth")
    return paths


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_checkpoint_is_detected_with_its_config(name: str, preset_checkpoints, caplog) -> None:
    """No config given: the shapes name the preset (a '+' one loads as its namesake unless registered)."""
    path = preset_checkpoints[name]
    base = name.removesuffix("+") if name != "xl+" else name
    with caplog.at_level(logging.WARNING, logger="ribsr.integrations.spandrel"):
        descriptor = loader().load_from_file(path)
    assert descriptor.architecture.id == ARCH_ID
    assert descriptor.model.config == preset(base, scale=SCALES[name])
    assert descriptor.model.config.name == base and descriptor.tags[0] == base
    assert (descriptor.scale, descriptor.input_channels, descriptor.output_channels) == (SCALES[name], 3, 3)
    assert descriptor.purpose == "SR" and descriptor.tiling == spandrel.ModelTiling.SUPPORTED
    assert descriptor.size_requirements.none
    assert ("also fit" in caplog.text) == (base != "xl+"), caplog.text  # every other preset has a '+' twin
    state = spandrel.ModelLoader().load_state_dict_from_file(path)
    assert SSTArch([name]).config_of(state) == preset(name, scale=SCALES[name])  # registering it picks it


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_checkpoint_outputs_equal_load_model(name: str, preset_checkpoints) -> None:
    """Output of each preset's checkpoint, read with the preset's shapes and quarter-size windows (the
    largest windows cost seconds per layer on a tiny image; window sizes do not change any shape)."""
    config = preset(name, scale=SCALES[name])
    config = config.replace(window_sizes=tuple(max(w // 4, 2) for w in config.window_sizes))
    descriptor = loader(config).load_from_file(preset_checkpoints[name])
    assert descriptor.model.config == config
    torch.manual_seed(2)
    x = torch.rand(1, 3, 13, 10)
    assert (descriptor(x) - ours(preset_checkpoints[name], config, x)).abs().max().item() <= TOL


def test_light_with_its_own_windows_equals_load_model(preset_checkpoints) -> None:
    """The path a user takes: no config, the preset inferred, full-size windows."""
    path = preset_checkpoints["light"]
    descriptor = loader().load_from_file(path)
    x = torch.rand(1, 3, 9, 12)
    assert (descriptor(x) - ours(path, "light", x)).abs().max().item() <= TOL


# -------------------------------------------------------------------------------- descriptor facts
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (17, 9), (33, 40)])
def test_any_input_size_works(size: tuple[int, int]) -> None:
    descriptor = loader().load_from_file(default_model_path(2))
    x = torch.rand(1, 3, *size)
    out = descriptor(x)
    assert out.shape == (1, 3, 2 * size[0], 2 * size[1])
    assert (out - ours(default_model_path(2), None, x)).abs().max().item() <= TOL


def test_loads_and_runs_inside_inference_mode() -> None:
    """Hosts may load and run models under torch.inference_mode (no version counters on the weights)."""
    x = torch.rand(1, 3, 12, 9)
    with torch.inference_mode():
        descriptor = loader().load_from_file(default_model_path(2))
        first, second = descriptor(x), descriptor(x)  # the second call reads the cached positional biases
    expected = ours(default_model_path(2), None, x)
    assert max((first - expected).abs().max().item(), (second - expected).abs().max().item()) <= TOL


@pytest.mark.parametrize(("dtype", "tol"), [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
def test_half_and_bfloat16_run_on_the_cpu(dtype: torch.dtype, tol: float) -> None:
    """The descriptor claims both; they run on the CPU and stay near float32 (bundled trained model)."""
    descriptor = loader().load_from_file(default_model_path(2))
    assert descriptor.supports_half and descriptor.supports_bfloat16
    x = torch.rand(1, 3, 24, 20)
    ref = descriptor(x)
    out = descriptor.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max().item() <= tol


# ----------------------------------------------------------------------------------- other models
def _other_architectures() -> dict[str, torch.nn.Module]:
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.OmniSR import OmniSR
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR

    return {
        "ESRGAN": ESRGAN(num_filters=8, num_blocks=1, scale=2),
        "SwinIR": SwinIR(embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                         upsampler="pixelshuffledirect"),
        "SPAN": SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2),
        "Compact": Compact(num_feat=8, num_conv=2, upscale=2),
        "OmniSR": OmniSR(num_feat=8, window_size=4, up_scale=2),  # has attention modules named to_qkv too
    }


@pytest.mark.parametrize("arch_id", ["ESRGAN", "SwinIR", "SPAN", "Compact", "OmniSR"])
def test_other_architectures_are_not_claimed(arch_id: str, tmp_path: Path) -> None:
    model = _other_architectures()[arch_id]
    path = tmp_path / f"{arch_id}.pth"
    torch.save(model.state_dict(), path)
    assert not SSTArch().detect(spandrel.ModelLoader().load_state_dict_from_file(path))
    with pytest.raises(spandrel.UnsupportedModelError):
        loader().load_from_file(path)
    registry = spandrel.MAIN_REGISTRY.copy()
    register(registry=registry)
    assert spandrel.ModelLoader(registry=registry).load_from_file(path).architecture.id == arch_id


@pytest.mark.parametrize("config", [
    preset("light"), preset("xl+", scale=4, n_blocks=2),
    preset("base", n_blocks=2, attn_type="RPB", gate_type="none", upsampler="nn+conv"),
], ids=["light", "xl+", "base-RPB-nn+conv"])
def test_no_spandrel_architecture_claims_sst(config) -> None:
    """SST is added after spandrel's own architectures: none of them may take its checkpoints first."""
    from ribsr.build import build_sst

    with torch.device("meta"):  # shapes only
        state = spandrel.canonicalize_state_dict(dict(build_sst(config).state_dict()))
    claimed = [a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures("detection") if a.detect(state)]
    assert claimed in ([], [ARCH_ID])
    assert SSTArch().detect(state)


# ---------------------------------------------------------------------------------------- register
def test_register_is_idempotent_and_adds_configs() -> None:
    registry = spandrel.ArchRegistry()
    first = register(registry=registry)
    again = register("light+", registry=registry)
    assert again is first and len(registry) == 2  # SST and ESC-RIB
    assert first.configs == (preset("light+"),)
    register(["light+", "base+"], registry=registry)
    assert [c.name for c in first.configs] == ["light+", "base+"]


def test_register_adds_to_spandrels_main_registry_once() -> None:
    arch = register()
    assert register() is arch
    assert [a.architecture.id for a in spandrel.MAIN_REGISTRY].count(ARCH_ID) == 1
    descriptor = spandrel.ModelLoader().load_from_file(default_model_path(2))
    assert descriptor.architecture is arch


def test_importing_ribsr_does_not_import_spandrel() -> None:
    code = "import sys, ribsr, ribsr.cli; sys.exit('spandrel' in sys.modules or 'torchvision' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
