"""Arrays kept on disk instead of in memory, for outputs too large to hold: :class:`DiskArray`.

The array lives in an unnamed temporary file (``tempfile.TemporaryFile``: on Linux ``O_TMPFILE``, elsewhere
a file unlinked at once, or deleted on close on Windows) mapped into memory, so nothing is left behind
whatever ends the process. :meth:`DiskArray.release` hands the pages touched so far back to the system
(they stay in the file), which keeps the resident size bounded by what is touched between two calls.
"""

from __future__ import annotations

import math
import mmap
import os
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np

# Rows per block when a disk array is processed a block at a time: about this many bytes per block.
BLOCK_BYTES = 32 * 1024**2


class DiskArray:
    """A zero-filled ``dtype`` array of ``shape`` backed by a temporary file in ``folder``.

    Disk space is reserved up front (``posix_fallocate`` where there is one), so a full disk is an
    ``OSError`` here rather than a crash on first write. Use as a context manager, or call
    :meth:`close`; the file disappears either way (and with the process).
    """

    def __init__(self, shape: tuple[int, ...], folder: str | os.PathLike[str], dtype: np.dtype | type = np.float32):
        self.dtype = np.dtype(dtype)
        self.nbytes = math.prod(shape) * self.dtype.itemsize
        if self.nbytes <= 0:
            raise ValueError(f"a disk array needs at least one element, got shape {shape}")
        self._file = tempfile.TemporaryFile(dir=Path(folder), prefix=".ribsr-", suffix=".part")
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self._file.fileno(), 0, self.nbytes)
            else:
                self._file.truncate(self.nbytes)
            self._map: mmap.mmap | None = mmap.mmap(self._file.fileno(), self.nbytes)
            self.array: np.ndarray | None = np.frombuffer(self._map, self.dtype).reshape(shape)
        except BaseException:
            self._file.close()
            raise

    def release(self) -> None:
        """Drop the mapped pages from this process's memory; their contents stay in the file."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Unmap and delete the file (views of :attr:`array` still alive keep the mapping until freed)."""
        self.array = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still referenced somewhere: the mapping goes with it
                pass
            self._map = None
        self._file.close()

    def __enter__(self) -> DiskArray:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def block_rows(row_bytes: int, block_bytes: int | None = None) -> int:
    """Rows of ``row_bytes`` each in a block of about ``block_bytes`` (default :data:`BLOCK_BYTES`; at least one)."""
    return max(1, (BLOCK_BYTES if block_bytes is None else block_bytes) // max(1, row_bytes))
