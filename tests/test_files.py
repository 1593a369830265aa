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


def test_atomic_write_without_overwrite_and_interrupted(tmp_path):
    path = tmp_path / "a.bin"
    with atomic_write(path, overwrite=False) as tmp:
        with open(tmp, "xb") as f:  # a fresh name: "x" never opens someone else's file
            f.write(b"first")
    with pytest.raises(FileExistsError, match="a.bin exists"), atomic_write(path, overwrite=False) as tmp:
        tmp.write_bytes(b"second")
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as tmp:  # not an Exception: cleaned up too
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["a.bin"]


def test_stale_temporaries_of_atomic_write_are_told_by_their_pid(tmp_path):
    import subprocess
    import sys

    from ribsr.files import part_path, remove_stale_parts

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    mine = part_path(tmp_path / "a.bin")
    assert mine.parent == tmp_path and mine.name.startswith(f".a.bin.{os.getpid()}-") and mine.suffix == ".part"
    names = [f".a.bin.{dead}-0123abcd.part", f".a.bin.{dead}.tmp", mine.name, f".b.bin.{dead}-0123abcd.part"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_parts(tmp_path, lambda name: name == "a.bin")
    assert sorted(p.name for p in removed) == sorted(names[:2])
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:])


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


# ---------------------------------------------------------------------- interrupted writes of each kind
class _Unpicklable:
    """Fails when pickled, after torch.save has written part of the file."""

    def __reduce__(self):
        raise RuntimeError("writer failed mid-write")


def _write_image_failing(path, monkeypatch):
    import numpy as np

    from ribsr import imageio

    def encode(img, fmt, f, *args):
        f.write(b"\x89PNG half an image")
        raise RuntimeError("writer failed mid-write")

    monkeypatch.setattr(imageio, "_encode", encode)
    imageio.write_image(imageio.from_array(np.zeros((4, 4, 3), np.uint8)), path, overwrite=True)


def _save_model_failing(path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    from ribsr.build import build_model
    from ribsr.checkpoint import save_model

    def save_file(state, name, metadata=None):
        with open(name, "wb") as f:
            f.write(b"half a file")
        raise SafetensorError("writer failed mid-write")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    save_model(build_model(dict(dim=12, window_sizes=(4,), num_heads=(3,), ranks=(4,), n_blocks=1, rib_hidden_dim=4,
                                rib_n_freqs=2), scale=2), path)


def _save_checkpoint_failing(path, monkeypatch):
    from ribsr.train.state import save_atomic

    save_atomic({"iteration": 1, "weights": list(range(100_000)), "bad": _Unpicklable()}, path)


@pytest.mark.parametrize(("name", "write"), [("out.png", _write_image_failing),
                                              ("model.safetensors", _save_model_failing),
                                              ("iter_00000001.pt", _save_checkpoint_failing)],
                         ids=["image", "safetensors", "training checkpoint"])
def test_an_interrupted_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch, name, write):
    path = tmp_path / name
    path.write_bytes(b"the old file")
    with pytest.raises((RuntimeError, OSError), match="mid-write"):
        write(path, monkeypatch)
    assert path.read_bytes() == b"the old file" and os.listdir(tmp_path) == [name]
