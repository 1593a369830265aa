"""ribsr.train.data: image stores, the paired and downsampling datasets, index-seeded sampling and the loader."""

from __future__ import annotations

import io
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ribsr.evaluate import load_image, mod_crop
from ribsr.imresize import imresize
from ribsr.train.data import (
    DataError,
    DownsampleImageDataset,
    GlobalBatchSampler,
    PairedImageDataset,
    build_dataloader,
    open_store,
)

SET5 = ("baby", "bird", "butterfly", "head", "woman")


def u8(t: torch.Tensor) -> np.ndarray:
    """A sample tensor (3, H, W) in [0, 1] back to uint8 (H, W, 3) (exact: values are k / 255)."""
    return np.rint(t.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def same(a: dict, b: dict) -> bool:
    return a["key"] == b["key"] and torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"])


def dihedral8(img: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral transforms of (H, W, C), in a fixed order."""
    out = []
    for t in (False, True):
        for v in (False, True):
            for h in (False, True):
                x = img[:, ::-1] if h else img
                x = x[::-1] if v else x
                out.append(x.transpose(1, 0, 2) if t else x)
    return out


def is_window(img: np.ndarray, patch: np.ndarray) -> bool:
    """Whether ``patch`` (h, w, C) equals some window of ``img`` (H, W, C)."""
    h, w = patch.shape[:2]
    for y, x in np.argwhere((img[:, :, 0] == patch[0, 0, 0]) & (img[:, :, 1] == patch[0, 0, 1])):
        if np.array_equal(img[y : y + h, x : x + w], patch):
            return True
    return False


@pytest.fixture(scope="module")
def set5(datasets_dir: Path) -> tuple[Path, Path]:
    return datasets_dir / "Set5" / "HR", datasets_dir / "Set5" / "LR_bicubic" / "X2"


def paired(set5, **kw) -> PairedImageDataset:
    return PairedImageDataset(set5[0], set5[1], 2, filename_tmpl="{}x2", **kw)


def save(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


# ---------------------------------------------------------------------------------- stores
def test_disk_store_keys_and_images(set5):
    store = open_store(set5[0])
    assert store.keys == list(SET5)
    img = store.get("bird")
    assert img.dtype == np.uint8 and img.shape == (288, 288, 3)
    np.testing.assert_array_equal(img, load_image(set5[0] / "bird.png"))
    with pytest.raises(DataError, match="nope"):
        store.get("nope")


def test_grayscale_and_rgba_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    save(tmp_path / "g.png", gray)
    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    save(tmp_path / "a.png", rgba)
    store = open_store(tmp_path)
    assert store.keys == ["a", "g"]
    np.testing.assert_array_equal(store.get("g"), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(store.get("a"), rgba[:, :, :3])


def test_memory_store_equals_disk(set5):
    disk, mem = open_store(set5[0]), open_store(set5[0], "memory")
    assert mem.keys == disk.keys
    for k in disk.keys:
        np.testing.assert_array_equal(mem.get(k), disk.get(k))


def test_stores_hold_pillows_pixels_of_set5(set5):
    """The images of every backend are Pillow's own RGB decoding, byte for byte (what the stores held when they
    decoded with Pillow themselves; they now read through ribsr.imageio)."""
    for backend in ("disk", "memory"):
        store = open_store(set5[0], backend)
        for k in store.keys:
            with Image.open(set5[0] / f"{k}.png") as im:
                expected = np.asarray(im.convert("RGB"))
            img = store.get(k)
            assert img.dtype == np.uint8 and img.flags.c_contiguous and img.tobytes() == expected.tobytes(), k


def test_images_are_read_as_ribsr_imageio_reads_them(tmp_path):
    from ribsr.imageio import read_image, to_array

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown rotated 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    gray16 = rng.integers(0, 65536, (5, 3), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "deep.png")
    store = open_store(tmp_path)
    for key, suffix in (("turned", ".jpg"), ("deep", ".png")):
        expected = to_array(read_image(tmp_path / f"{key}{suffix}"), np.uint8, 3)
        np.testing.assert_array_equal(store.get(key), expected)
    assert store.get("turned").shape == (4, 6, 3)


def test_meta_info_file_selects_and_orders(set5, tmp_path):
    meta = tmp_path / "meta.txt"
    meta.write_text("woman.png (228,344,3)\n\nbird.png (288,288,3)\n")
    assert open_store(set5[0], meta_info_file=meta).keys == ["woman", "bird"]
    ds = paired(set5, meta_info_file=meta)
    assert len(ds) == 2 and ds[0]["key"] == "woman" and ds[1]["key"] == "bird"
    meta.write_text("bird.png\nmissing.png\n")
    with pytest.raises(DataError, match="missing.png"):
        open_store(set5[0], meta_info_file=meta)


def test_unknown_backend_and_bad_folders(set5, tmp_path):
    with pytest.raises(DataError, match=r"'s3'.*\['disk', 'memory', 'lmdb'\]"):
        open_store(set5[0], "s3")
    with pytest.raises(DataError, match="not found"):
        open_store(tmp_path / "absent")
    with pytest.raises(DataError, match="no images"):
        open_store(tmp_path)
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="x.png"):
        open_store(tmp_path).get("x")


def test_lmdb_store(set5, tmp_path):
    lmdb = pytest.importorskip("lmdb")
    root = tmp_path / "set5.lmdb"
    env = lmdb.open(str(root), map_size=1 << 26)
    lines = []
    with env.begin(write=True) as txn:
        for name in ("bird", "baby"):  # meta_info order, not sorted
            img = load_image(set5[0] / f"{name}.png")
            buf = io_png(img)
            txn.put(name.encode(), buf)
            lines.append(f"{name} ({img.shape[0]},{img.shape[1]},3) 1")
    env.close()
    (root / "meta_info.txt").write_text("\n".join(lines) + "\n")
    store = open_store(root, "lmdb")
    assert store.keys == ["bird", "baby"]
    np.testing.assert_array_equal(store.get("baby"), load_image(set5[0] / "baby.png"))
    clone = pickle.loads(pickle.dumps(store))  # a second store of the same LMDB in this process
    np.testing.assert_array_equal(clone.get("bird"), load_image(set5[0] / "bird.png"))
    ds = DownsampleImageDataset(root, 2, gt_size=32, io_backend="lmdb")
    ref = DownsampleImageDataset(set5[0], 2, gt_size=32, meta_info_file=_meta(tmp_path, ["bird", "baby"]))
    assert all(same(ds[g], ref[g]) for g in range(4))
    # workers forked after the parent opened the LMDB read it too
    batches = list(build_dataloader(ds, 2, total_iter=2, num_workers=2))
    assert all(torch.equal(b["gt"][i], ref[2 * t + i]["gt"]) for t, b in enumerate(batches) for i in range(2))
    with pytest.raises(DataError, match="data.mdb"):
        open_store(tmp_path, "lmdb")


def io_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _meta(tmp_path: Path, names: list[str]) -> Path:
    meta = tmp_path / "meta_disk.txt"
    meta.write_text("".join(f"{n}.png\n" for n in names))
    return meta


# ---------------------------------------------------------------------------------- validation mode
def test_paired_validation_whole_images(set5):
    ds = paired(set5)
    assert len(ds) == 5 and not ds.training
    s = ds[4]
    assert s["key"] == "woman"
    assert s["lq"].shape == (3, 172, 114) and s["gt"].shape == (3, 344, 228)
    assert s["lq"].dtype == torch.float32 and s["lq"].is_contiguous() and s["gt"].is_contiguous()
    assert 0 <= s["gt"].min() and s["gt"].max() <= 1
    np.testing.assert_array_equal(u8(s["gt"]), load_image(set5[0] / "woman.png"))
    np.testing.assert_array_equal(u8(s["lq"]), load_image(set5[1] / "womanx2.png"))
    with pytest.raises(IndexError):
        ds[5]


def test_downsample_validation_matches_lr_files(set5):
    """The on-the-fly LR of the mod-cropped HR is the benchmark LR_bicubic file, bit for bit."""
    ds = DownsampleImageDataset(set5[0], 2)
    s = ds[SET5.index("bird")]
    np.testing.assert_array_equal(u8(s["lq"]), load_image(set5[1] / "birdx2.png"))
    np.testing.assert_array_equal(u8(s["gt"]), mod_crop(load_image(set5[0] / "bird.png"), 2))


def test_validation_mod_crops_hr(tmp_path):
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (31, 26, 3), dtype=np.uint8)
    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    save(tmp_path / "hr" / "a.png", hr)
    save(tmp_path / "lr" / "a.png", imresize(hr[:30, :26], 1 / 3)[:, :8])  # 10x8: floor(31/3) x floor(26/3)
    s = PairedImageDataset(tmp_path / "hr", tmp_path / "lr", 3)[0]
    assert s["gt"].shape == (3, 30, 24) and s["lq"].shape == (3, 10, 8)
    s = DownsampleImageDataset(tmp_path / "hr", 3)[0]
    assert s["gt"].shape == (3, 30, 24) and s["lq"].shape == (3, 10, 8)


# ---------------------------------------------------------------------------------- training crops
def test_paired_crops_are_aligned(set5):
    """An LR crop is imresize of its HR crop, away from the crop's edges (the LR files are imresize of the HR)."""
    ds = paired(set5, gt_size=64, seed=3)
    m = 3  # LR pixels near a crop edge see HR pixels outside the crop
    for g in range(10):
        s = ds[g]
        assert s["lq"].shape == (3, 32, 32) and s["gt"].shape == (3, 64, 64)
        lq, ref = u8(s["lq"]), imresize(u8(s["gt"]), 0.5)
        np.testing.assert_array_equal(lq[m:-m, m:-m], ref[m:-m, m:-m])


def test_downsample_lr_is_imresize_of_hr_crop(set5):
    ds = DownsampleImageDataset(set5[0], 3, gt_size=48, use_hflip=True, use_rot=True)
    full = {k: load_image(set5[0] / f"{k}.png") for k in SET5}
    for g in range(6):
        s = ds[g]
        gt = u8(s["gt"])
        assert s["lq"].shape == (3, 16, 16) and gt.shape == (48, 48, 3)
        np.testing.assert_array_equal(u8(s["lq"]), imresize(gt, 1 / 3))
        # the HR crop is a window of the image under one of the 8 transforms (their inverses are among them)
        assert any(is_window(full[s["key"]], t) for t in dihedral8(gt)), f"sample {g}: not a crop of {s['key']}"


def test_same_index_same_sample(set5):
    a = paired(set5, gt_size=48, use_hflip=True, use_rot=True, seed=7)
    b = paired(set5, gt_size=48, use_hflip=True, use_rot=True, seed=7)
    order = [13, 2, 40, 2, 0, 13]
    first = {g: a[g] for g in order}
    assert all(same(first[g], b[g]) for g in reversed(order))
    c = paired(set5, gt_size=48, use_hflip=True, use_rot=True, seed=8)
    assert not all(same(first[g], c[g]) for g in order)
    mem = PairedImageDataset(set5[0], set5[1], 2, filename_tmpl="{}x2", gt_size=48, use_hflip=True, use_rot=True,
                             seed=7, io_backend="memory")
    assert all(same(first[g], mem[g]) for g in order)


def test_dataloader_workers_and_ranks_give_the_same_data(set5):
    ds = paired(set5, gt_size=32, use_hflip=True, use_rot=True, seed=1)
    whole = list(build_dataloader(ds, 4, total_iter=3))
    assert len(whole) == 3 and whole[0]["lq"].shape == (4, 3, 16, 16) and len(whole[0]["key"]) == 4
    workers = list(build_dataloader(ds, 4, total_iter=3, num_workers=2))
    ranks = [list(build_dataloader(ds, 2, rank=r, world_size=2, total_iter=3)) for r in (0, 1)]
    for t in range(3):
        assert torch.equal(workers[t]["gt"], whole[t]["gt"]) and workers[t]["key"] == whole[t]["key"]
        joined = torch.cat([ranks[0][t]["lq"], ranks[1][t]["lq"]])
        assert torch.equal(joined, whole[t]["lq"])
        assert ranks[0][t]["key"] + ranks[1][t]["key"] == whole[t]["key"]
    resumed = list(build_dataloader(ds, 4, start_iter=1, total_iter=3))
    assert len(resumed) == 2
    assert all(torch.equal(r["gt"], w["gt"]) for r, w in zip(resumed, whole[1:], strict=True))


def test_epochs_cover_every_image(set5):
    ds = paired(set5, gt_size=16, seed=5)
    epochs = [[ds.sample_image(g) for g in range(e * 5, (e + 1) * 5)] for e in range(3)]
    assert all(sorted(e) == list(range(5)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled every epoch
    big = paired(set5, gt_size=16, seed=5, dataset_enlarge_ratio=2)
    for e in range(2):
        assert Counter(big.sample_image(g) for g in range(e * 10, (e + 1) * 10)) == dict.fromkeys(range(5), 2)
    plain = paired(set5, gt_size=16, shuffle=False, dataset_enlarge_ratio=2)
    assert [plain.sample_image(g) for g in range(12)] == [0, 1, 2, 3, 4] * 2 + [0, 1]
    assert ds[7]["key"] == SET5[ds.sample_image(7)]


def test_augmentation_gives_all_eight_transforms_consistently(tmp_path):
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # crop = whole image, so only the transform varies
    lr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    save(tmp_path / "hr" / "a.png", hr)
    save(tmp_path / "lr" / "a.png", lr)
    hr8, lr8 = dihedral8(hr), dihedral8(lr)

    def seen(**kw) -> Counter:
        ds = PairedImageDataset(tmp_path / "hr", tmp_path / "lr", 2, gt_size=16, **kw)
        count: Counter = Counter()
        for g in range(160):
            s = ds[g]
            gt, lq = u8(s["gt"]), u8(s["lq"])
            k = next(i for i, t in enumerate(hr8) if np.array_equal(gt, t))
            np.testing.assert_array_equal(lq, lr8[k])  # the same transform on both
            count[k] += 1
        return count

    full = seen(use_hflip=True, use_rot=True)
    assert len(full) == 8 and min(full.values()) >= 8
    assert set(seen(use_hflip=True)) == {0, 1}
    assert len(seen(use_rot=True)) == 4
    assert set(seen()) == {0}


def test_tiny_images_are_padded(tmp_path):
    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    save(tmp_path / "hr" / "t.png", hr)
    lr = imresize(hr, 0.5)
    save(tmp_path / "lr" / "t.png", lr)
    down = DownsampleImageDataset(tmp_path / "hr", 2, gt_size=48, use_rot=True)
    pair = PairedImageDataset(tmp_path / "hr", tmp_path / "lr", 2, gt_size=48, use_rot=True)
    for g in range(4):
        for ds in (down, pair):
            s = ds[g]
            assert s["lq"].shape == (3, 24, 24) and s["gt"].shape == (3, 48, 48)
    # unaugmented: the image at the top-left, then mirrored about its border; LR and HR padded alike
    s = PairedImageDataset(tmp_path / "hr", tmp_path / "lr", 2, gt_size=48)[0]
    gt, lq = u8(s["gt"]), u8(s["lq"])
    np.testing.assert_array_equal(gt[:20, :30], hr)
    np.testing.assert_array_equal(gt[20:40, :30], hr[::-1])
    np.testing.assert_array_equal(gt[:20, 30:48], hr[:, ::-1][:, :18])
    np.testing.assert_array_equal(lq[:10, :15], lr)
    np.testing.assert_array_equal(lq[10:20, :15], lr[::-1])
    # a 3x3 HR at x2 is a 1x1 LR: padding repeats until the crop fits
    save(tmp_path / "hr" / "t.png", hr[:3, :3])
    save(tmp_path / "lr" / "t.png", lr[:1, :1])
    s = PairedImageDataset(tmp_path / "hr", tmp_path / "lr", 2, gt_size=8)[0]
    assert s["gt"].shape == (3, 8, 8) and torch.equal(s["lq"], s["lq"][:, :1, :1].expand(3, 4, 4))


# ---------------------------------------------------------------------------------- errors
def test_missing_lr_file(set5, tmp_path):
    lq = tmp_path / "lq"
    lq.mkdir()
    for name in ("baby", "butterfly", "head", "woman"):
        (lq / f"{name}x2.png").write_bytes((set5[1] / f"{name}x2.png").read_bytes())
    with pytest.raises(DataError) as err:
        PairedImageDataset(set5[0], lq, 2, filename_tmpl="{}x2")
    msg = str(err.value)
    assert "'birdx2'" in msg and "1 of 5" in msg and "'{}x2'" in msg and str(lq) in msg
    assert "'babyx2'" not in msg
    with pytest.raises(DataError, match="filename_tmpl"):
        PairedImageDataset(set5[0], set5[1], 2, filename_tmpl="{name}x2")


def test_wrong_lr_size_names_both_files(set5, tmp_path):
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    hr.mkdir()
    lr.mkdir()
    (hr / "bird.png").write_bytes((set5[0] / "bird.png").read_bytes())
    (lr / "bird.png").write_bytes((set5[1] / "birdx2.png").read_bytes())
    ds = PairedImageDataset(hr, lr, 3)  # a x2 LR given as x3
    with pytest.raises(DataError, match=r"(?s)lr[/\\]bird\.png.*hr[/\\]bird\.png"):
        ds[0]


@pytest.mark.parametrize("gt_size", [33, 0, -4])
def test_gt_size_must_be_a_positive_multiple_of_scale(set5, gt_size):
    with pytest.raises(DataError, match=str(gt_size)):
        paired(set5, gt_size=gt_size)
    with pytest.raises(DataError, match=str(gt_size)):
        DownsampleImageDataset(set5[0], 2, gt_size=gt_size)


def test_global_batch_sampler():
    assert list(GlobalBatchSampler(2, total_iter=3)) == [[0, 1], [2, 3], [4, 5]]
    assert list(GlobalBatchSampler(2, rank=1, world_size=3, start_iter=1, total_iter=3)) == [[8, 9], [14, 15]]
    assert len(GlobalBatchSampler(2, start_iter=5, total_iter=12)) == 7
    endless = iter(GlobalBatchSampler(3, start_iter=100))
    assert next(endless) == [300, 301, 302]
    with pytest.raises(TypeError):
        len(GlobalBatchSampler(2))
    for kw in ({"batch_size": 0}, {"batch_size": 2, "rank": 2, "world_size": 2}, {"batch_size": 2, "world_size": 0},
               {"batch_size": 2, "start_iter": -1}, {"batch_size": 2, "start_iter": 5, "total_iter": 4}):
        with pytest.raises(ValueError):
            GlobalBatchSampler(**kw)


@pytest.mark.parametrize("backend", ["disk", "memory"])
def test_validation_items_say_whether_the_file_is_grayscale(datasets_dir, backend):
    """Set14's bridge.png is stored as grayscale; man.png is RGB with three equal channels and stays RGB."""
    ds = PairedImageDataset(datasets_dir / "Set14" / "HR", datasets_dir / "Set14" / "LR_bicubic" / "X2", 2,
                            filename_tmpl="{}x2", io_backend=backend)
    items = {ds[i]["key"]: ds[i] for i in range(len(ds))}
    assert items["bridge"]["gray"] and not items["man"]["gray"] and not items["baboon"]["gray"]
    man = items["man"]["gt"]
    assert torch.equal(man[0], man[1]) and torch.equal(man[1], man[2])
    down = DownsampleImageDataset(datasets_dir / "Set14" / "HR", 2, io_backend=backend)
    assert [down[i]["gray"] for i in range(len(down))] == [items[k]["gray"] for k in down.keys]


# ---------------------------------------------------------------------- RealESRGANDataset
def _generated_hr(folder: Path, n: int = 3, size: int = 80) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(n):
        small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        save(folder / f"p{i}.png", np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC)))
    return folder


def test_real_esrgan_dataset_samples_depend_only_on_seed_and_index(tmp_path):
    from ribsr.degrade import DegradationOptions
    from ribsr.train.data import RealESRGANDataset

    root = _generated_hr(tmp_path / "hr")
    opts = DegradationOptions(blur_kernel_size=9, blur_kernel_size2=9)

    def make(seed=3, **kw):
        return RealESRGANDataset(root, 4, degradation=opts, gt_size=32, use_hflip=True, use_rot=True, seed=seed,
                                 **kw)

    a, b = make(), make(io_backend="memory")
    order = [5, 1, 9, 1, 0]
    first = {g: a[g] for g in order}
    assert first[5]["lq"].shape == (3, 8, 8) and first[5]["gt"].shape == (3, 32, 32)
    assert all(same(first[g], b[g]) for g in reversed(order))
    assert not all(same(first[g], make(seed=4)[g]) for g in order)
    # the LR is the degradation's, not the bicubic downscale of the crop
    assert any(not np.array_equal(u8(first[g]["lq"]), imresize(u8(first[g]["gt"]), 1 / 4)) for g in order)
    # workers and ranks see the same samples
    whole = list(build_dataloader(a, 4, total_iter=2))
    workers = list(build_dataloader(make(), 4, total_iter=2, num_workers=2))
    ranks = [list(build_dataloader(make(), 2, rank=r, world_size=2, total_iter=2)) for r in (0, 1)]
    for t in range(2):
        assert torch.equal(workers[t]["lq"], whole[t]["lq"])
        assert torch.equal(torch.cat([ranks[0][t]["lq"], ranks[1][t]["lq"]]), whole[t]["lq"])


def test_real_esrgan_dataset_gt_usm_and_validation_items(tmp_path):
    from ribsr.degrade import DegradationOptions, usm_sharp
    from ribsr.train.data import RealESRGANDataset

    root = _generated_hr(tmp_path / "hr", n=2, size=44)
    opts = DegradationOptions(blur_kernel_size=9, blur_kernel_size2=9)
    train = RealESRGANDataset(root, 2, degradation=opts, gt_size=16, seed=1, gt_usm=True)
    item = train[0]
    assert {"gt", "gt_usm", "lq"} <= item.keys()
    hr = item["gt"].permute(1, 2, 0).numpy()
    assert np.allclose(item["gt_usm"].permute(1, 2, 0).numpy(), usm_sharp(hr), atol=1e-6)
    val = RealESRGANDataset(root, 3, degradation=opts, seed=1)  # whole images, HR mod-cropped to 42
    v0, again = val[0], RealESRGANDataset(root, 3, degradation=opts, seed=1)[0]
    assert v0["gt"].shape == (3, 42, 42) and v0["lq"].shape == (3, 14, 14)
    assert torch.equal(v0["lq"], again["lq"])
