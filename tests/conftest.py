"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared data directory: ``$RIBSR_SHARED``, else ``<repo root>/../shared`` (skip if absent)."""
    path = Path(os.environ.get("RIBSR_SHARED", REPO_ROOT.parent / "shared"))
    if not path.is_dir():
        pytest.skip(f"shared directory not found: {path} (set RIBSR_SHARED)")
    return path
