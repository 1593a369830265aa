"""Shared test fixtures: where the shared data lives (configurable, skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
