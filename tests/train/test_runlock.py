"""One run per run directory: ``ribsr train`` holds RUN/.lock for the run's life (rank 0 under DDP), and on taking it
removes the checkpoint temporary files a killed run left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ribsr.cli import main
from ribsr.train import loop
from ribsr.train.state import RunDirLocked, remove_stale_temporaries, run_dir_lock

TINY_NET = dict(type="SST", dim=16, window_sizes=[4, 8], num_heads=[2, 2], ranks=[4, 4], n_blocks=1, exp_ratio=2,
                upscaling_factor=2, upsampler_type="pixelshuffle_direct")


def _options(tmp_path: Path) -> Path:
    """An option file that loads (its images need not exist: the lock is taken before the data is read)."""
    path = tmp_path / "opts.yml"
    path.write_text(yaml.safe_dump({
        "name": "locked", "scale": 2, "network_g": TINY_NET,
        "datasets": {"train": {"name": "t", "type": "DownsampleImageDataset", "dataroot_gt": str(tmp_path / "none"),
                               "gt_size": 16, "batch_size_per_gpu": 1}},
        "train": {"total_iter": 1, "optim_g": {"type": "Adam", "lr": 1e-4}, "pixel_opt": {"type": "L1Loss"},
                  "scheduler": {"type": "MultiStepLR", "milestones": [1], "gamma": 0.5}},
    }))
    return path


def test_a_second_run_in_a_run_directory_is_refused_naming_the_first(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    with run_dir_lock(run) as lock:
        assert lock == run / ".lock"
        assert lock.read_text().split()[0] == str(os.getpid())
        assert main(["train", str(_options(tmp_path)), "--run-dir", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{run} is in use: process {os.getpid()} on " in err and str(lock) in err, err
        with pytest.raises(RunDirLocked):
            with run_dir_lock(run):
                pass
    with run_dir_lock(run):  # released when the block ends
        pass


def test_the_lock_goes_with_its_process(tmp_path: Path) -> None:
    """Another process's flock of RUN/.lock (as run_dir_lock takes it; plain Python, to start fast) keeps this one
    out until that process is gone."""
    run = tmp_path / "run"
    run.mkdir()
    code = ("import fcntl, os, sys\n"
            f"fd = os.open({str(run / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "os.write(fd, f'{os.getpid()} somehost 2024-01-02T03:04:05'.encode())\n"
            "print('held', flush=True)\nsys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunDirLocked, match=f"process {holder.pid} on somehost, started 2024-01-02T03:04:05"):
            with run_dir_lock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_dir_lock(run):
        pass


def test_only_rank_0_locks(tmp_path: Path, monkeypatch, capsys) -> None:
    """Under DDP the other ranks use rank 0's run directory as it is."""
    built = []

    class Stand(loop.Trainer):
        def __init__(self, opts, run_dir, **kwargs):  # noqa: D107 - records that the run started
            built.append(run_dir)

        def fit(self):
            raise loop.TrainingError("stopped here")

    monkeypatch.setattr(loop, "setup_distributed", lambda device=None: loop.Distributed(rank=1, world_size=2))
    monkeypatch.setattr(loop, "Trainer", Stand)
    run = tmp_path / "run"
    with run_dir_lock(run):
        assert main(["train", str(_options(tmp_path)), "--run-dir", str(run), "--no-progress"]) == 1
    assert built == [run] and "stopped here" in capsys.readouterr().err


def test_checkpoint_temporaries_of_a_stopped_run_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    stale = folder / f".iter_00000020.pt.{dead}-0123abcd.part"  # what files.atomic_write names it
    stale_old = folder / f".iter_00000010.pt.{dead}.tmp"  # what earlier versions named it
    live = folder / f".iter_00000030.pt.{os.getpid()}-0123abcd.part"  # a writer still running: kept
    other = folder / "notes.tmp"
    not_a_checkpoint = folder / f".notes.txt.{dead}-0123abcd.part"
    for p in (stale, stale_old, live, other, not_a_checkpoint):
        p.write_bytes(b"x")
    with run_dir_lock(tmp_path / "run"):
        pass
    assert sorted(p.name for p in folder.iterdir()) == sorted([live.name, other.name, not_a_checkpoint.name])
    assert remove_stale_temporaries(tmp_path / "nowhere") == []
