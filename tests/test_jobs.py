"""ribsr.jobs: the batch of a folder, as a library user (not only ``ribsr upscale``) gets it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ribsr.jobs import discover, output_path, split_own_outputs


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)


def test_a_folder_batch_with_outputs_of_an_earlier_run(tmp_path):
    for name in ("a.png", "sub/b.jpg", ".hidden.png", "a_x4.png", "notes.txt"):
        if name.endswith((".png", ".jpg")):
            _png(tmp_path / name)
        else:
            (tmp_path / name).write_text("x")
    jobs, problems = discover([str(tmp_path), str(tmp_path / "missing")], recursive=True, exclude=tmp_path / "none")
    assert [str(j.relative) for j in jobs] == ["a.png", "a_x4.png", "sub/b.jpg"] and len(problems) == 1
    keep, own = split_own_outputs(jobs, tmp_path, None)  # a_x4.png beside a.png: an earlier output
    assert [j.source.name for j in keep] == ["a.png", "b.jpg"] and [p.name for p in own] == ["a_x4.png"]
    out = tmp_path / "out"
    assert [output_path(j, out, "_x4", "same") for j in keep] == [
        (out / "a_x4.png", "PNG"), (out / "sub" / "b_x4.jpg", "JPEG")]
