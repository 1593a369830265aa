"""Writing files whole or not at all, with the mode the user's umask gives new files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_file_mode() -> int:
    """The mode a newly created file gets from the user's umask (0644 under the usual umask 022)."""
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        status = Path("/proc/self/status").read_text()
        mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, IndexError, ValueError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` to write to: when the block succeeds it gets the umask's file
    mode (writers such as safetensors and mkstemp create 0600 files) and replaces ``path``; on any error it is
    removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
