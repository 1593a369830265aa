"""Writing files whole or not at all, with the mode the user's umask gives new files."""

from __future__ import annotations

import os
import stat
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


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_a_file(path: str | Path) -> str | None:
    """None when ``path`` is a regular file (or a symbolic link to one); else what it is instead, for messages:
    ``"a folder"``, ``"a FIFO (named pipe)"``, ``"a character device"``, ``"a block device"``, ``"a socket"``,
    ``"a broken symbolic link"`` or ``"not there"``. Opening a FIFO or a device would block or read forever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "not there"
    except OSError as exc:
        return f"not readable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")
