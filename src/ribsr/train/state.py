"""Training checkpoints: written atomically, listed, pruned, and found again for ``--resume auto``.

A run directory holds ``checkpoints/iter_00001000.pt`` files. Each is a ``torch.save`` of a plain dict
(tensors, numbers, strings, lists; readable with ``weights_only=True``): ``iteration``, ``model``,
``ema``, ``optimizer``, ``scheduler``, ``rng``, ``options`` (the resolved option file), ``config`` (the
network's JSON) and the trainer's counters. A file is written to a temporary name beside its final one,
flushed to disk, then renamed, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ribsr.files import atomic_write, disk_space_hint, remove_stale_parts

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^iter_(\d+)\.pt$")
LOCK_NAME = ".lock"


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


# ---------------------------------------------------------------------- one run per run directory
class RunDirLocked(OSError):
    """Another process trains in the run directory (it holds ``RUN/.lock``)."""


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        text = []
    if not text:
        return "another process (its pid is not in the lock file yet)"
    pid, *rest = text
    host = f" on {rest[0]}" if rest else ""
    since = f", started {' '.join(rest[1:])}" if rest[1:] else ""
    return f"process {pid}{host}{since}"


@contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``run_dir`` (``flock`` of ``run_dir/.lock``, made with the folder when missing)
    for the block, so that two runs never write one run directory; the lock file names the holder (pid, host,
    start time). Raises :class:`RunDirLocked` naming the holder when another process has it; the lock goes with
    the process, however it ends. On taking it, the checkpoint temporary files a killed run left are removed
    (:func:`remove_stale_temporaries`). Where the file system has no locks (ENOLCK), it warns and goes on."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            raise RunDirLocked(f"{run_dir} is in use: {_lock_holder(fd)} trains there (it holds {path}); wait for "
                               "it to end, stop it, or give another --run-dir") from None
        except OSError as exc:
            log.warning("cannot lock %s (%s): two runs in %s would not be kept apart", path, exc.strerror or exc,
                        run_dir)
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
            remove_stale_temporaries(run_dir)
        yield path
    finally:
        if locked:
            try:
                os.ftruncate(fd, 0)  # the file stays (removing it would race with a process opening it)
            except OSError:
                pass
        os.close(fd)


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove the checkpoint temporary files (``checkpoints/.iter_*.pt.<pid>-<random>.part``,
    :func:`ribsr.files.atomic_write`'s) whose writer no longer runs: what a run killed while saving left. Returns
    the files removed."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    removed = remove_stale_parts(folder, lambda name: _NAME.match(name) is not None)
    if removed:
        log.info("removed %d temporary file(s) a stopped run left in %s: %s", len(removed), folder,
                 ", ".join(p.name for p in removed))
    return removed


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
