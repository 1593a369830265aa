from __future__ import annotations

import os

import pytest

from ribsr.files import atomic_write, default_file_mode


def test_atomic_write_replaces_whole_with_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        assert default_file_mode() == 0o640
        path = tmp_path / "sub" / "a.bin"
        with atomic_write(path) as tmp:
            tmp.write_bytes(b"new")
            os.chmod(tmp, 0o600)  # as safetensors and mkstemp create files
            assert not path.exists()
        assert path.read_bytes() == b"new" and (path.stat().st_mode & 0o777) == 0o640
    finally:
        os.umask(old)
    assert os.listdir(path.parent) == ["a.bin"]


def test_atomic_write_leaves_the_old_file_on_error(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]
