"""Shared test fixtures: where the shared data lives (configurable, skipped when absent), small
stand-in networks for the tiling/upscaling tests (described by a ribsr.modelinfo.ModelInfo), and a tiny
real checkpoint for the command-line tests."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ribsr.modelinfo import ModelInfo

REPO = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    return Path(os.environ.get("RIBSR_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder (fixtures, datasets, spec): $RIBSR_SHARED or ../shared beside the repository."""
    root = _shared_root()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set RIBSR_SHARED)")
    return root


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The SR datasets: $RIBSR_DATASETS or <shared>/datasets."""
    root = Path(os.environ.get("RIBSR_DATASETS", _shared_root() / "datasets"))
    if not root.is_dir():
        pytest.skip(f"datasets not found at {root} (set RIBSR_DATASETS)")
    return root


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (tiny networks: thread start-up costs more than it saves)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


class NearestUp(nn.Module):
    """Stand-in with purely local output: nearest-neighbour upsampling (tiled == untiled exactly)."""

    def __init__(self, scale: int = 2, window_sizes: tuple[int, ...] = (4, 8, 16)) -> None:
        super().__init__()
        self.info = ModelInfo(scale=scale, multiple_of=math.lcm(*window_sizes), width=3)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return F.interpolate(x, scale_factor=self.info.scale, mode="nearest")


class WindowMixer(nn.Module):
    """Stand-in whose output depends on non-local context as windowed attention does.

    Like SST it pads the input to whole windows of the largest size, then each layer mixes every
    pixel with the mean of its window (windows of ``window_sizes`` starting at the top-left corner)
    and with a 3x3 convolution; a pixel-shuffle tail upsamples. Fixed random weights (seeded).
    """

    def __init__(self, scale: int = 2, window_sizes: tuple[int, ...] = (4, 8, 16), dim: int = 8,
                 seed: int = 0) -> None:
        super().__init__()
        self.window_sizes = tuple(window_sizes)
        self.info = ModelInfo(scale=scale, multiple_of=math.lcm(*window_sizes), width=dim)
        torch.manual_seed(seed)
        self.head = nn.Conv2d(3, dim, 3, padding=1)
        self.mix = nn.ModuleList(nn.Conv2d(2 * dim, dim, 3, padding=1) for _ in window_sizes)
        self.tail = nn.Conv2d(dim, 3 * scale * scale, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, a, (h, w) = self.info.scale, self.info.multiple_of, x.shape[-2:]
        x = F.pad(x, (0, -w % a, 0, -h % a), mode="replicate")
        f = self.head(x)
        for ws, conv in zip(self.window_sizes, self.mix, strict=True):
            mean = F.interpolate(F.avg_pool2d(f, ws), scale_factor=ws, mode="nearest")  # window means
            f = f + torch.tanh(conv(torch.cat([f, mean], dim=1)))
        y = F.pixel_shuffle(self.tail(f), s) + F.interpolate(x, scale_factor=s, mode="bilinear")
        return y[..., : s * h, : s * w]


@pytest.fixture
def nearest_model() -> type[NearestUp]:
    return NearestUp


@pytest.fixture
def window_model() -> type[WindowMixer]:
    return WindowMixer


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real x2 checkpoint (``light`` cut down to one block of windows 4 and 8, random weights) in our
    .safetensors format, for tests that go through ``ribsr.load_model``."""
    import ribsr

    torch.manual_seed(0)
    model = ribsr.build_model("light", n_blocks=1, window_sizes=[4, 8], num_heads=[3, 3], ranks=[4, 4])
    return ribsr.save_model(model, tmp_path_factory.mktemp("checkpoint") / "tiny_x2.safetensors")
