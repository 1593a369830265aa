"""Corrupt training images: all of them named when the dataset is built (disk: header and end mark; memory: the
decode), and an image that goes bad mid-run saves a checkpoint of the work done before the run stops."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ribsr.train.data import DataError, DownsampleImageDataset, image_file_problem, open_store
from ribsr.train.loop import Trainer
from ribsr.train.options import options_from_dict
from ribsr.train.state import list_checkpoints


def _images(folder: Path, n: int, size: int = 32, fmt: str = "PNG") -> list[Path]:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"im{i}.{'png' if fmt == 'PNG' else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format=fmt)
        paths.append(path)
    return paths


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("backend", ["disk", "memory"])
def test_every_bad_image_is_named_when_the_dataset_is_built(tmp_path: Path, backend: str) -> None:
    paths = _images(tmp_path / "hr", 4)
    _truncate(paths[1])
    _truncate(paths[3])
    (tmp_path / "hr" / "text.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as info:
        open_store(tmp_path / "hr", backend)
    message = str(info.value)
    assert message.startswith(f"3 of 5 images in {tmp_path / 'hr'} cannot be read:"), message
    for bad in (paths[1], paths[3], tmp_path / "hr" / "text.png"):
        assert f"\n  {bad}: " in message
    assert str(paths[0]) not in message and str(paths[2]) not in message
    with pytest.raises(DataError, match="3 of 5 images"):
        DownsampleImageDataset(tmp_path / "hr", 2, gt_size=16, io_backend=backend)


def test_the_check_is_cheap_and_has_no_false_alarms(tmp_path: Path) -> None:
    png, = _images(tmp_path / "a", 1)
    jpg, = _images(tmp_path / "b", 1, size=96, fmt="JPEG")
    assert image_file_problem(png) is None and image_file_problem(jpg) is None
    # bytes after the end mark (some writers append a trailer): still whole
    with open(png, "ab") as f:
        f.write(b"\0" * 10_000)
    assert image_file_problem(png) is None
    _truncate(jpg)  # its header whole, half its scan
    assert image_file_problem(jpg).startswith("truncated or corrupt: no JPEG end mark in its last 4096 bytes")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="BMP")  # no end mark to look for: header only
    (tmp_path / "c.bmp").write_bytes(buf.getvalue())
    assert image_file_problem(tmp_path / "c.bmp") is None


def _options(root: Path) -> dict:
    return {
        "name": "corrupt", "scale": 2, "manual_seed": 1,
        "network_g": dict(type="SST", dim=8, window_sizes=[4], num_heads=[2], ranks=[2], n_blocks=1, exp_ratio=1,
                          rib_hidden_dim=4, rib_n_freqs=2, upscaling_factor=2, upsampler_type="pixelshuffle_direct"),
        "datasets": {"train": {"name": "t", "type": "DownsampleImageDataset", "dataroot_gt": str(root),
                               "io_backend": {"type": "disk"}, "gt_size": 16, "batch_size_per_gpu": 1,
                               "num_worker_per_gpu": 0}},
        "train": {"optim_g": {"type": "Adam", "lr": 1e-3}, "total_iter": 10,
                  "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5},
                  "pixel_opt": {"type": "L1Loss"}},
        "logger": {"print_freq": 100, "save_checkpoint_freq": 100, "use_tb_logger": False},
    }


def test_an_image_that_breaks_mid_run_saves_a_checkpoint_first(tmp_path: Path, monkeypatch, one_thread) -> None:
    """It stopped the run (exit 2) with no checkpoint: the iterations since the last one were lost."""
    paths = _images(tmp_path / "hr", 2)
    trainer = Trainer(options_from_dict(_options(tmp_path / "hr")), tmp_path / "run", progress=False)
    step = trainer.step

    def step_then_break(batch, stop_requested=False):
        out = step(batch, stop_requested)
        if trainer.iteration == 2:  # iteration 3 is done when this returns: the images break after it
            for p in paths:
                _truncate(p)
        return out

    monkeypatch.setattr(trainer, "step", step_then_break)
    with pytest.raises(DataError) as info:
        trainer.fit()
    saved = tmp_path / "run" / "checkpoints" / "iter_00000003.pt"
    assert [p for _, p in list_checkpoints(tmp_path / "run")] == [saved]
    message = str(info.value)
    assert "truncated" in message and f"(loading the batch of iteration 4; saved {saved}: mend or remove" in message
