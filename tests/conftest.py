"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The shared SR datasets: $RIBSR_DATASETS, else <repo root>/../shared/datasets; skip if missing."""
    path = Path(os.environ.get("RIBSR_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))
    if not (path / "Set5" / "HR").is_dir():
        pytest.skip(f"SR datasets not found at {path} (set RIBSR_DATASETS to the folder holding Set5/Set14)")
    return path
