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


def test_terminate_as_exception_keeps_ignored_signals_and_other_handlers():
    import signal

    from ribsr.files import Terminated, terminate_as_exception

    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    old_term = signal.signal(signal.SIGTERM, mine)  # an application's own handler
    try:
        with terminate_as_exception():  # a library call: the application's handler stays
            assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        with pytest.raises(Terminated) as info, terminate_as_exception(replace_handlers=True):  # the command line
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            signal.raise_signal(signal.SIGTERM)
        assert info.value.code == 128 + signal.SIGTERM and str(info.value) == "terminated by SIGTERM"
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGHUP, before)
        signal.signal(signal.SIGTERM, old_term)


def test_not_a_file_and_check_writable(tmp_path):
    from ribsr.files import check_writable, not_a_file

    (tmp_path / "f").write_bytes(b"")
    os.symlink(tmp_path / "f", tmp_path / "link")
    os.mkfifo(tmp_path / "pipe")
    assert not_a_file(tmp_path / "f") is None and not_a_file(tmp_path / "link") is None
    assert not_a_file(tmp_path) == "a folder" and not_a_file(tmp_path / "pipe") == "a FIFO (named pipe)"
    assert not_a_file("/dev/null") == "a character device" and not_a_file(tmp_path / "none") == "not there"
    check_writable(tmp_path / "new" / "deeper")  # created later, in tmp_path: writable; nothing is left
    assert sorted(os.listdir(tmp_path)) == ["f", "link", "pipe"]
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        check_writable(tmp_path / "f" / "sub")


def test_check_file_writable(tmp_path):
    from ribsr.files import check_file_writable

    (tmp_path / "old.json").write_text("{}")
    check_file_writable(tmp_path / "old.json")  # an existing file: rewritten in place
    check_file_writable(tmp_path / "new" / "r.json")  # a new one, in a folder yet to be made
    assert sorted(os.listdir(tmp_path)) == ["old.json"]
    with pytest.raises(OSError, match=f"cannot write {tmp_path}: it is a folder, not a file"):
        check_file_writable(tmp_path)
    with pytest.raises(NotADirectoryError, match="old.json is not a folder"):
        check_file_writable(tmp_path / "old.json" / "r.json")
