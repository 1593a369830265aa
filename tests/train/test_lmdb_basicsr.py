"""LMDBs made the BasicSR way (scripts/data_preparation/create_lmdb.py): the value of ``img0`` is listed in
meta_info.txt as ``img0.png (h,w,3) 1``, values are cv2-encoded PNGs, and an LR LMDB holds the HR's keys."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ribsr.train.data import DataError, DownsampleImageDataset, PairedImageDataset, open_store

lmdb = pytest.importorskip("lmdb")


def _basicsr_lmdb(folder: Path, root: Path, compress_level: int = 1) -> None:
    """What BasicSR's make_lmdb_from_imgs writes for the PNGs of ``folder`` (keys from prepare_keys_div2k)."""
    names = sorted(p.name for p in folder.glob("*.png"))
    keys = [name.split(".png")[0] for name in names]
    env = lmdb.open(str(root), map_size=1 << 24)
    txn = env.begin(write=True)
    with open(root / "meta_info.txt", "w") as meta:
        for name, key in zip(names, keys, strict=True):
            img = cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED)
            _, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
            h, w, c = img.shape
            txn.put(key.encode("ascii"), buf.tobytes())
            meta.write(f"{key}.png ({h},{w},{c}) {compress_level}\n")
    txn.commit()
    env.close()


@pytest.fixture
def sets(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """HR/LR folders of 3 images (LR named as the HR: BasicSR's sub-images) and their BasicSR LMDBs."""
    rng = np.random.default_rng(5)
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    hr.mkdir()
    lr.mkdir()
    for i in range(3):
        img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(hr / f"img{i}.png")
        Image.fromarray(img[::2, ::2]).save(lr / f"img{i}.png")
    _basicsr_lmdb(hr, tmp_path / "hr.lmdb")
    _basicsr_lmdb(lr, tmp_path / "lr.lmdb")
    return hr, lr, tmp_path / "hr.lmdb", tmp_path / "lr.lmdb"


def test_a_basicsr_lmdb_reads_as_its_folder(sets) -> None:
    hr, _, hr_lmdb, _ = sets
    assert (hr_lmdb / "meta_info.txt").read_text().splitlines()[0] == "img0.png (24,32,3) 1"
    store, disk = open_store(hr_lmdb, "lmdb"), open_store(hr)
    assert store.keys == disk.keys == ["img0", "img1", "img2"]
    for key in store.keys:
        np.testing.assert_array_equal(store.get(key), disk.get(key))  # RGB, as the file
    a = DownsampleImageDataset(hr_lmdb, 2, gt_size=16, io_backend="lmdb", seed=3)
    b = DownsampleImageDataset(hr, 2, gt_size=16, seed=3)
    assert all(torch.equal(a[g]["gt"], b[g]["gt"]) and torch.equal(a[g]["lq"], b[g]["lq"]) for g in range(6))


@pytest.mark.parametrize("tmpl", ["{}", "{}x2"])
def test_basicsr_lmdb_pairs_are_paired_by_key(sets, tmpl: str) -> None:
    """BasicSR ignores filename_tmpl for LMDBs (its LR LMDB holds the HR keys); the paper's recipes give '{}x2'."""
    hr, lr, hr_lmdb, lr_lmdb = sets
    ds = PairedImageDataset(hr_lmdb, lr_lmdb, 2, io_backend="lmdb", filename_tmpl=tmpl)
    ref = PairedImageDataset(hr, lr, 2)
    for i in range(3):
        assert torch.equal(ds[i]["lq"], ref[i]["lq"]) and torch.equal(ds[i]["gt"], ref[i]["gt"])


def test_a_key_missing_from_a_basicsr_lmdb_is_named(sets, tmp_path: Path) -> None:
    _, _, hr_lmdb, _ = sets
    meta = tmp_path / "meta.txt"
    meta.write_text("img1.png (24,32,3) 1\nnothere.png (24,32,3) 1\n")
    store = open_store(hr_lmdb, "lmdb", meta)
    assert store.keys == ["img1", "nothere"]
    with pytest.raises(DataError, match=r"key 'nothere' is listed .* not stored in it \(nor as 'nothere.png'\)"):
        store.get("nothere")
