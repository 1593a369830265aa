"""Writing files whole or not at all, with the mode the user's umask gives new files; temporary ``.part`` files
that a killed process left behind; what a path is when it is not a regular file; SIGTERM and SIGHUP as
exceptions, so that temporary files are removed when a process is told to stop."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType


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
def atomic_write(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` to write to (:func:`part_path`; not created: a writer creates it,
    or opens it with ``"xb"``). When the block succeeds the file gets the umask's file mode (writers such as
    safetensors and mkstemp create 0600 files) and replaces ``path`` (without ``overwrite`` it takes ``path``'s
    place only while there is none, else :class:`FileExistsError`); on any error, interruptions included, it is
    removed and ``path`` is left as it was. Writers that hold the file open flush and fsync it themselves."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_path(path)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            _rename_no_clobber(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rename_no_clobber(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (atomic where hard links are supported)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise FileExistsError(f"{dst} exists (use overwrite to replace it)") from None
    except OSError:  # no hard links on this file system: check, then rename
        if dst.exists():
            raise FileExistsError(f"{dst} exists (use overwrite to replace it)") from None
        os.replace(src, dst)
        return
    src.unlink()


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


# ---------------------------------------------------------------------- temporary .part files
# .{name}.{pid}-{8 hex digits}.part: what part_path makes; the pid tells whether its writer still runs.
_PART = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.part$")
# .{name}.{8 characters}.part: what earlier versions made (no pid): stale when older than this many seconds.
_OLD_PART = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.part$")
# .{name}.{pid}.tmp: what atomic_write made in earlier versions; stale, as a .part file, once its process is gone.
_OLD_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")
OLD_PART_AGE = 3600.0


def part_path(path: str | Path) -> Path:
    """A hidden temporary name beside ``path`` for writing it: ``.{name}.{pid}-{random}.part`` (create it with
    ``"xb"``); :func:`remove_stale_parts` removes such files once their process is gone."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_parts(folder: str | Path, names: Iterable[str] | Callable[[str], bool]) -> list[Path]:
    """Remove the temporary files of ``names`` (file names in ``folder``, or a test of a file name) that a killed
    writer left: those of :func:`part_path` (and of earlier versions' :func:`atomic_write`) whose process no longer
    runs, and those of earlier versions without a pid older than :data:`OLD_PART_AGE` seconds. Returns the files
    removed."""
    folder = Path(folder)
    if callable(names):
        wanted = names
    else:
        wanted = set(names).__contains__
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _PART.match(entry.name) or _OLD_TMP.match(entry.name)
        if match:
            stale = wanted(match["name"]) and not _running(int(match["pid"]))
        else:
            old = _OLD_PART.match(entry.name)
            try:
                stale = bool(old) and wanted(old["name"]) and now - entry.stat().st_mtime > OLD_PART_AGE
            except OSError:
                stale = False
        if stale and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed.append(Path(entry.path))
    return removed


def check_writable(folder: str | Path) -> None:
    """Raise OSError naming ``folder`` when no file can be created in it (when it does not exist yet: in the
    nearest folder above it, where it would be created), found by creating an unnamed temporary file there
    (permissions, read-only mounts and ACLs all show)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    where = "" if probe == folder else f" (it would be created in {probe})"
    if not probe.is_dir():
        raise NotADirectoryError(f"cannot write into {folder}{where}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write into {folder}{where}: {exc.strerror or exc}") from None


def check_file_writable(path: str | Path) -> None:
    """Raise OSError naming ``path`` when it cannot be written: an existing ``path`` that is not a regular file
    (a folder, a FIFO, ...) or that may not be written; else (a new file) a folder that no file can be created in
    (:func:`check_writable`). For a file written at the end of a long run, checked at its start."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        what = not_a_file(path)
        if what is not None:
            raise OSError(f"cannot write {path}: it is {what}, not a file")
        if not os.access(path, os.W_OK):
            raise PermissionError(f"cannot write {path}: permission denied (or a read-only file system)")
        return
    check_writable(path.parent)


def disk_space_hint(path: str | Path) -> str:
    """`` (N MiB free on the disk holding FOLDER)`` for a message about a failed write of ``path``; empty when it
    cannot be told."""
    folder = Path(path).parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" ({free / 2**20:,.1f} MiB free on the disk holding {folder})"


# ---------------------------------------------------------------------- SIGTERM and SIGHUP
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(SystemExit):
    """SIGTERM or SIGHUP received while :func:`terminate_as_exception` is in effect: raised in the main thread
    so that ``finally`` blocks and ``except BaseException`` clean-ups run (temporary files are removed). Its
    exit code is 128 + the signal number, what a shell reports for a process the signal ended."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(128 + signum)

    def __str__(self) -> str:
        return f"terminated by {signal.Signals(self.signum).name}"


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextmanager
def terminate_as_exception(replace_handlers: bool = False) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread instead of ending
    the process at once (what leaves temporary files behind). Signals that are ignored (``nohup``) stay
    ignored; other handlers are kept unless ``replace_handlers`` (for the command line, which owns the process),
    so that a library call does not take the signals from the application it runs in. Outside the main thread
    nothing changes. The previous handlers come back after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in TERMINATING_SIGNALS:
        current = signal.getsignal(sig)
        if current is None or current is signal.SIG_IGN or current is _raise_terminated:  # None: set outside Python
            continue
        if current is signal.SIG_DFL or replace_handlers:
            previous[sig] = current
            signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
