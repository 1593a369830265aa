"""Training checkpoints: written atomically, listed, pruned, and found again for ``--resume auto``.

A run directory holds ``checkpoints/iter_00001000.pt`` files. Each is a ``torch.save`` of a plain dict
(tensors, numbers, strings, lists; readable with ``weights_only=True``): ``iteration``, ``model``,
``ema``, ``optimizer``, ``scheduler``, ``rng``, ``options`` (the resolved option file), ``config`` (the
network's JSON) and the trainer's counters. A file is written to a temporary name beside its final one,
flushed to disk, then renamed, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ribsr.files import atomic_write, disk_space_hint

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^iter_(\d+)\.pt$")


class ResumeError(ValueError):
    """No usable checkpoint to resume from, or one that does not belong to this run."""


def checkpoint_path(run_dir: str | Path, iteration: int) -> Path:
    """Where the checkpoint of ``iteration`` lives in a run directory."""
    return Path(run_dir) / CHECKPOINT_DIR / f"iter_{iteration:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the run's checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return sorted(found)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# What torch.save's C++ writer says when a write failed (a full disk): it names no file and no errno.
_TORCH_WRITE_FAILED = ("inline_container", "PytorchStreamWriter")


def write_torch(obj: Any, tmp: Path, path: str | Path) -> None:
    """``torch.save`` of ``obj`` into the file ``tmp``, flushed and fsynced; ``path`` is the file it will become,
    for messages. A failed write (a full disk: an OSError naming no file, or torch's RuntimeError from its
    writer) is an OSError naming ``path`` and the free space."""
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}{disk_space_hint(path)}") from None
    except RuntimeError as exc:
        if not any(mark in str(exc) for mark in _TORCH_WRITE_FAILED):
            raise
        raise OSError(f"cannot write {path}: torch.save failed, most likely the disk is full ({exc})"
                      f"{disk_space_hint(path)}") from None


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file in the same folder, fsynced, then renamed; a failed
    write leaves ``path`` as it was and is an OSError naming it (:func:`write_torch`)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        write_torch(obj, tmp, path)
    _fsync_dir(path.parent)
    return path


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, keep: int) -> Path:
    """Write ``state`` (which holds ``iteration``) and delete all but the newest ``keep`` checkpoints."""
    path = save_atomic(state, checkpoint_path(run_dir, int(state["iteration"])))
    if keep > 0:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, checked to hold what resuming needs (:class:`ResumeError` otherwise)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ResumeError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # truncated or corrupt files raise many types
        raise ResumeError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    needed = ("iteration", "model", "optimizer", "scheduler", "options")
    missing = [k for k in needed if not isinstance(state, dict) or k not in state]
    if missing:
        raise ResumeError(f"{path}: not a ribsr training checkpoint (missing {', '.join(missing)})")
    return state


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of a run and its contents; unreadable newer ones are reported and skipped."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except ResumeError as exc:
            log.error("skipping a checkpoint that cannot be resumed from: %s", exc)
    return None


# ---------------------------------------------------------------------- random number generators
def rng_state() -> dict[str, Any]:
    """Every random number generator's state (torch CPU and CUDA, Python, NumPy) as plain data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
