"""ESC-RIB through spandrel's loader (ribsr.integrations.spandrel.ESCRIBArch) against ribsr.load_model and the
paper's own outputs. Runs in the spandrel venv (see test_spandrel.py); skipped where spandrel is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

spandrel = pytest.importorskip("spandrel")

import ribsr  # noqa: E402
from ribsr.checkpoint import CheckpointError  # noqa: E402
from ribsr.config import preset  # noqa: E402
from ribsr.integrations.spandrel import ESCRIB_ARCH_ID, ESCRIBArch, SSTArch, register  # noqa: E402
from ribsr.model import ESCRIB  # noqa: E402

TOL = 1e-6  # max abs difference between spandrel's output and ribsr.load_model's (float32, CPU)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official-escrib"

pytestmark = pytest.mark.usefixtures("one_thread")


def loader(*configs) -> spandrel.ModelLoader:
    registry = spandrel.ArchRegistry()
    register(configs, registry=registry)
    return spandrel.ModelLoader(registry=registry)


def test_the_papers_fixture_loads_with_its_config_and_matches() -> None:
    case = json.loads((FIXTURES / "cases.json").read_text())["escrib_x2"]
    io = torch.load(FIXTURES / "escrib_x2_io.pt", weights_only=True)
    descriptor = loader(case["network_g"]).load_from_file(FIXTURES / "escrib_x2.pth")
    assert descriptor.architecture.id == ESCRIB_ARCH_ID and isinstance(descriptor.model, ESCRIB)
    assert (descriptor.scale, descriptor.input_channels, descriptor.output_channels) == (2, 3, 3)
    got = descriptor(io["input"])
    with torch.inference_mode():
        ours = ribsr.load_model(FIXTURES / "escrib_x2.pth", config=case["network_g"])(io["input"]).clamp(0, 1)
    assert (got - ours).abs().max().item() <= TOL
    assert (got - io["output"].clamp(0, 1)).abs().max().item() <= 1e-4  # the paper's code


def test_a_checkpoint_that_fits_no_known_config_says_so() -> None:
    with pytest.raises(CheckpointError, match=r"an ESC-RIB checkpoint \(ESC-RIB, dim=16.*fits none.*register"):
        loader().load_from_file(FIXTURES / "escrib_x2.pth")


@pytest.mark.parametrize("scale", [2, 4])
def test_released_size_checkpoint_is_detected_as_the_preset(scale: int, tmp_path: Path) -> None:
    torch.manual_seed(scale)
    model = ribsr.build_model("escrib", scale=scale)
    path = tmp_path / f"ESCRIB_DFLIP_X{scale}.pth"
    torch.save({"params_ema": model.state_dict()}, path)
    descriptor = loader().load_from_file(path)
    assert descriptor.model.config == preset("escrib", scale=scale) and descriptor.scale == scale
    assert descriptor.tags == ["escrib", "64dim", "5nb", "w64", "RIB"]
    if scale == 2:  # one run of the published size (a 64x64 window per block) is enough
        x = torch.rand(1, 3, 20, 18)
        with torch.inference_mode():
            ours = ribsr.load_model(path, config="escrib")(x).clamp(0, 1)
        assert (descriptor(x) - ours).abs().max().item() <= TOL


def test_each_architecture_claims_only_its_own() -> None:
    with torch.device("meta"):
        esc = spandrel.canonicalize_state_dict(dict(ribsr.build_model("escrib").state_dict()))
        sst = spandrel.canonicalize_state_dict(dict(ribsr.build_model("light").state_dict()))
    assert ESCRIBArch().detect(esc) and not SSTArch().detect(esc)
    assert SSTArch().detect(sst) and not ESCRIBArch().detect(sst)
    claimed = [a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures("detection") if a.detect(esc)]
    assert claimed in ([], [ESCRIB_ARCH_ID])  # none of spandrel's own architectures takes it


def test_register_routes_configs_to_their_architecture() -> None:
    registry = spandrel.ArchRegistry()
    sst_arch = register(["light+", "escrib-tiny"], registry=registry)
    esc_arch = registry.get(ESCRIB_ARCH_ID).architecture
    assert sst_arch.configs == (preset("light+"),) and esc_arch.configs == (preset("escrib-tiny"),)
    assert register(registry=registry) is sst_arch and registry.get(ESCRIB_ARCH_ID).architecture is esc_arch
    with pytest.raises(ValueError, match=r"ESC-RIB takes configs of its own architecture, got one of SST \(light\)"):
        esc_arch.add_configs(["light"])
