"""ribsr.diskarray: an array in an unnamed temporary file."""

from __future__ import annotations

import numpy as np
import pytest

from ribsr.diskarray import DiskArray, block_rows


def test_a_disk_array_keeps_its_data_when_released_and_leaves_no_file(tmp_path):
    with DiskArray((3, 50, 40), tmp_path) as acc:
        assert acc.array.dtype == np.float32 and not acc.array.any()  # zero-filled
        data = np.random.default_rng(0).random((3, 50, 40), dtype=np.float32)
        acc.array[:] = data
        acc.release()  # the pages leave the process, the contents stay in the file
        np.testing.assert_array_equal(acc.array, data)
        assert list(tmp_path.iterdir()) == []  # unnamed: nothing to leave behind
    assert acc.array is None


def test_a_disk_array_refuses_no_elements_and_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match=r"at least one element, got shape \(0, 4\)"):
        DiskArray((0, 4), tmp_path)
    with pytest.raises(FileNotFoundError):
        DiskArray((2, 2), tmp_path / "missing")


def test_block_rows():
    assert block_rows(1000, 10_000) == 10 and block_rows(10**9, 10_000) == 1


def test_block_rows_follows_block_bytes(monkeypatch):
    from ribsr import diskarray

    monkeypatch.setattr(diskarray, "BLOCK_BYTES", 3000)
    assert block_rows(1000) == 3
