"""Training data for BasicSR-style super-resolution training (``ribsr train``).

- Image stores ("io backends", :func:`open_store`): uint8 RGB images, (H, W, 3), by key, from a folder
  (``"disk"``), from memory (``"memory"``: decoded once at construction) or from a BasicSR LMDB (``"lmdb"``),
  read as ``ribsr upscale`` and ``ribsr evaluate`` read them (:func:`ribsr.imageio.read_rgb8`).
- :class:`PairedImageDataset`: HR images with LR files beside them (e.g. ``Set5/HR/baby.png`` and
  ``Set5/LR_bicubic/X2/babyx2.png``).
- :class:`DownsampleImageDataset`: HR images only; the LR is made from them with MATLAB-style bicubic
  ``imresize`` (:func:`ribsr.imresize.imresize`: antialiased, symmetric boundary, rounded as MATLAB), which
  reproduces the benchmark ``LR_bicubic`` files bit for bit, so training LR is made as the test sets' LR is.
  The paper's code makes its on-the-fly LR with PIL's bicubic resize on an 8-bit copy instead; that is not
  MATLAB's ``imresize``: on Set5 ``baby`` at x2 it differs by 1 on about 18% of the interior pixels (PIL's
  fixed-point weights and rounding) and by up to 5 near the border (PIL truncates and renormalises the kernel at
  the image edge instead of mirroring the image). Hence ribsr's choice.
- :class:`RealESRGANDataset`: HR images only; the LR is made by Real-ESRGAN's second-order degradation
  (:mod:`ribsr.degrade`), drawn from the sample's own generator.
- :class:`GlobalBatchSampler` and :func:`build_dataloader`: the training loader.

Both datasets have two modes. Validation (``gt_size=None``): item ``i`` is image ``i``, whole, HR mod-cropped to a
multiple of the scale, no randomness. Training (``gt_size`` given): item ``g`` is a *global sample index* (any
non-negative integer); the image is chosen by an epoch-wise shuffle (:meth:`sample_image`) and the crop and flips
are drawn from a generator seeded by ``(seed, g)`` alone. A sample thus depends only on ``(seed, g)``, never on the
process, the DataLoader worker, the number of workers or GPUs, or whether the run was resumed; and
:class:`GlobalBatchSampler` gives iteration ``t`` the indices ``[(t - 1) * B, t * B)`` of the global batch ``B``,
split between the ranks, so what a run trains on depends only on the seed and the iteration.

Images smaller than the crop are padded at the bottom and right by mirroring about the image border (numpy's
``"symmetric"`` mode: ``... 2 1 0 | 0 1 2 ...``, repeated as often as needed for tiny images). The border is the
same line in LR and HR coordinates, so padding the LR by ``k`` pixels and the HR by ``scale * k`` keeps a pair
aligned (``"reflect"``, which mirrors about the last pixel's centre, would shift the LR's padding by
``(scale - 1) / 2`` HR pixels against the HR's); it is also the boundary rule of ``imresize``.

Samples are dicts ``{"lq": (3, h, w) float32, "gt": (3, s*h, s*w) float32, "key": str}`` with values in [0, 1]
(validation samples also hold ``"gray"``: whether the HR file is stored as grayscale);
the default collate function stacks them into ``(B, 3, h, w)`` tensors and a list of keys.
"""

from __future__ import annotations

import io
import logging
import operator
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from ribsr.degrade import DegradationOptions, SecondOrderDegradation, usm_sharp
from ribsr.imageio import IMAGE_SUFFIXES, ImageReadError, read_rgb8
from ribsr.imresize import imresize
from ribsr.transforms import augment_index, dihedral

log = logging.getLogger(__name__)

__all__ = [
    "IO_BACKENDS",
    "DataError",
    "DiskStore",
    "DownsampleImageDataset",
    "GlobalBatchSampler",
    "ImageStore",
    "LmdbStore",
    "MemoryStore",
    "PairedImageDataset",
    "RealESRGANDataset",
    "build_dataloader",
    "open_store",
]

IO_BACKENDS = ("disk", "memory", "lmdb")  # io_backend.type (attention backends: ribsr.model.BACKENDS)

# Seed-sequence tags that keep the epoch shuffles and the per-sample draws on separate streams.
_SHUFFLE_STREAM = 0
_SAMPLE_STREAM = 1


class DataError(ValueError):
    """Bad training data: a missing folder, unmatched files, an unreadable image, a wrong LR size, bad options."""


# ---------------------------------------------------------------------------------- decoding
def _decode(source: Path | bytes, where: str) -> np.ndarray:
    """An image file (or its bytes, named ``where``) as uint8 RGB (H, W, 3), read by :func:`ribsr.imageio.read_rgb8`:
    EXIF orientation applied, grayscale replicated, alpha dropped, 16-bit samples rounded to 8 bits."""
    try:
        return read_rgb8(source, name=where)[0]
    except ImageReadError as exc:  # its message names the file
        raise DataError(str(exc)) from exc


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow modes of single-channel (grayscale) images


def _source_is_gray(source: str | io.BytesIO, where: str) -> bool:
    """Whether an encoded image is stored as grayscale (its mode, read from the header only)."""
    try:
        with Image.open(source) as im:
            return im.mode in GRAY_MODES
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataError(f"cannot read image {where}: {exc}") from exc


# ---------------------------------------------------------------------------------- checking files
# The last chunk of every PNG and the last marker of every JPEG: a file cut short (a copy that stopped, a full disk)
# lacks it. Looked for in the file's last bytes (writers may append a little after it).
_END_MARKS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}
_TAIL_BYTES = 4096
BAD_FILES_SHOWN = 20


def image_file_problem(path: str | Path) -> str | None:
    """Why the image file ``path`` cannot be trained on, cheaply (None when it looks whole): it is not an image
    Pillow can open, or it is a PNG/JPEG without its end mark (a truncated file). Reads the header and the last
    few KiB; only a file without its end mark in them is decoded whole, to tell a truncated file from one with a
    long trailer."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            if im.width <= 0 or im.height <= 0:
                return f"its size is {im.width}x{im.height}"
        mark = _END_MARKS.get(fmt or "")
        if mark is None:
            return None
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL_BYTES))
            if mark in f.read():
                return None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    try:
        with Image.open(path) as im:
            im.load()  # decodes it: a file with a long trailer is whole, a truncated one raises
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return f"truncated or corrupt: no {fmt} end mark in its last {_TAIL_BYTES} bytes, and decoding it fails ({exc})"
    return None


def bad_files_error(problems: Sequence[tuple[str, str]], total: int, root: Path, hint: str) -> DataError:
    """One :class:`DataError` listing ``(file, problem)`` for the files of ``root`` that cannot be read (the first
    :data:`BAD_FILES_SHOWN` of them)."""
    shown = "".join(f"\n  {where}: {why}" for where, why in problems[:BAD_FILES_SHOWN])
    more = f"\n  ... and {len(problems) - BAD_FILES_SHOWN} more" if len(problems) > BAD_FILES_SHOWN else ""
    return DataError(f"{len(problems)} of {total} images in {root} cannot be read:{shown}{more}\n{hint}")


# ---------------------------------------------------------------------------------- image stores
class ImageStore:
    """Images by key: ``keys`` (ordered) and ``get(key)`` giving uint8 RGB (H, W, 3) arrays."""

    root: Path
    keys: list[str]
    _key_set: frozenset[str]

    def get(self, key: str) -> np.ndarray:
        """The image stored under ``key`` as uint8 RGB (H, W, 3)."""
        raise NotImplementedError

    def is_grayscale(self, key: str) -> bool:
        """Whether the image of ``key`` is stored as grayscale (``get`` replicates it to 3 channels); metrics
        then compare one channel, as ``ribsr evaluate`` does, while an RGB file stays RGB even if its channels
        are equal."""
        raise NotImplementedError

    def describe(self, key: str) -> str:
        """Where the image of ``key`` comes from, for messages (a file path, or the store and key)."""
        return f"{self.root}[{key}]"

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def _set_keys(self, keys: list[str]) -> None:
        self.keys = keys
        self._key_set = frozenset(keys)

    def _check_key(self, key: str) -> None:
        if key not in self._key_set:
            raise DataError(f"no image with key {key!r} in {self.root}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self)} images)"


def _read_meta_names(meta_info_file: str | Path) -> list[str]:
    """The first token of every non-empty line of a BasicSR meta_info file."""
    path = Path(meta_info_file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read meta_info_file {path}: {exc}") from exc
    names = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"meta_info_file {path} lists no images")
    return names


def _check_unique(keys: Sequence[str], where: str) -> None:
    dup = sorted(k for k, n in Counter(keys).items() if n > 1)
    if dup:
        raise DataError(f"{where}: duplicate image keys {_few(dup)}")


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(s) for s in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


class DiskStore(ImageStore):
    """Image files of a folder, decoded on every ``get``; key = the file's path relative to the folder, no suffix.

    Without ``meta_info_file``: the folder's image files (``IMAGE_SUFFIXES``), sorted by key. With it: the files
    named by the first token of its lines (BasicSR's ``meta_info`` format, e.g. ``0001_s001.png (480,480,3)``), in
    its order. ``select``, if given, restricts the store to those keys (in the store's order).

    Every file is checked at construction (:func:`image_file_problem`: its header, and the end mark of a PNG or
    JPEG), so that a truncated or foreign file stops the run before it starts, with all such files named in one
    :class:`DataError`, rather than hours into it; ``check=False`` skips that.
    """

    def __init__(self, root: str | Path, meta_info_file: str | Path | None = None,
                 select: Iterable[str] | None = None, *, check: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}")
        if meta_info_file is None:
            files = [p for p in self.root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            _check_unique([p.stem for p in files], f"{self.root} (key = file stem)")
            paths = {p.stem: p for p in files}
            keys = sorted(paths)
            if not keys:
                raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self.root}")
        else:
            names = _read_meta_names(meta_info_file)
            missing = [n for n in names if not (self.root / n).is_file()]
            if missing:
                raise DataError(
                    f"{len(missing)} files listed in meta_info_file {meta_info_file} are not in {self.root}: "
                    f"{_few(missing)}"
                )
            keys = [Path(n).with_suffix("").as_posix() for n in names]
            _check_unique(keys, f"meta_info_file {meta_info_file}")
            paths = {k: self.root / n for k, n in zip(keys, names, strict=True)}
        if select is not None:
            wanted = set(select)
            keys = [k for k in keys if k in wanted]
        self._set_keys(keys)
        self._paths = {k: paths[k] for k in keys}
        if check:
            problems = [(str(p), why) for p in self._paths.values() if (why := image_file_problem(p)) is not None]
            if problems:
                raise bad_files_error(problems, len(keys), self.root, "replace or remove them (or list only the "
                                      "good ones in a meta_info_file)")

    def path(self, key: str) -> Path:
        """The file of ``key``."""
        self._check_key(key)
        return self._paths[key]

    def describe(self, key: str) -> str:
        return str(self._paths.get(key, self.root / key))

    def get(self, key: str) -> np.ndarray:
        path = self.path(key)
        return _decode(path, str(path))

    def is_grayscale(self, key: str) -> bool:
        path = self.path(key)
        return _source_is_gray(str(path), str(path))


class MemoryStore(DiskStore):
    """Like :class:`DiskStore`, but every image is decoded once at construction and kept in memory."""

    def __init__(self, root: str | Path, meta_info_file: str | Path | None = None,
                 select: Iterable[str] | None = None) -> None:
        super().__init__(root, meta_info_file, select, check=False)  # every file is decoded here anyway
        self._images = {}
        problems = []
        for k in self.keys:
            try:
                self._images[k] = super().get(k)
            except DataError as exc:  # all of them are reported at once
                where = self.describe(k)
                problems.append((where, str(exc).removeprefix(f"{where}: ")))
        if problems:
            raise bad_files_error(problems, len(self.keys), self.root, "replace or remove them (or list only the "
                                  "good ones in a meta_info_file)")
        for img in self._images.values():
            img.setflags(write=False)  # shared by every sample: callers must copy before writing
        nbytes = sum(img.nbytes for img in self._images.values())
        log.info("loaded %d images from %s into memory (%.1f MiB)", len(self.keys), self.root, nbytes / 2**20)

    def get(self, key: str) -> np.ndarray:
        self._check_key(key)
        return self._images[key]


class LmdbStore(ImageStore):
    """A BasicSR LMDB: a folder ``xxx.lmdb`` with ``data.mdb`` and ``meta_info.txt``; values are encoded images.

    ``meta_info.txt`` lines are ``key (h,w,c) compression``; its keys, in its order, are the store's keys
    (``meta_info_file``, if given, is read instead). BasicSR's ``create_lmdb`` writes ``0001.png (96,96,3) 1``
    for the value stored under ``0001``: an image suffix (``IMAGE_SUFFIXES``) on a meta_info name is not part of
    the key (a value stored under the whole name, suffix and all, is found too). The LMDB environment is opened
    read-only (no locking, no readahead) on the first ``get`` in each process, so DataLoader workers open their
    own, and shared by every store of that folder in the process.
    """

    def __init__(self, root: str | Path, meta_info_file: str | Path | None = None,
                 select: Iterable[str] | None = None) -> None:
        _import_lmdb()
        self.root = Path(root)
        if not (self.root / "data.mdb").is_file():
            raise DataError(f"not an LMDB folder (no data.mdb): {self.root}")
        meta = Path(meta_info_file) if meta_info_file is not None else self.root / "meta_info.txt"
        if not meta.is_file():
            raise DataError(f"LMDB meta_info file not found: {meta} (lines 'key (h,w,c) compression')")
        names = _read_meta_names(meta)
        keys = [_lmdb_key(n) for n in names]
        _check_unique(keys, f"meta_info file {meta}")
        self._names = dict(zip(keys, names, strict=True))  # key -> the name as meta_info writes it
        if select is not None:
            wanted = set(select)
            keys = [k for k in keys if k in wanted]
        self._set_keys(keys)

    def _bytes(self, key: str) -> bytes:
        self._check_key(key)
        name = self._names[key]
        with _lmdb_env(self.root).begin(write=False) as txn:
            buf = txn.get(key.encode("utf-8"))
            if buf is None and name != key:
                buf = txn.get(name.encode("utf-8"))
        if buf is None:
            also = f" (nor as {name!r})" if name != key else ""
            raise DataError(f"key {key!r} is listed in the meta_info of {self.root} but not stored in it{also}")
        return bytes(buf)

    def get(self, key: str) -> np.ndarray:
        return _decode(self._bytes(key), self.describe(key))

    def is_grayscale(self, key: str) -> bool:
        return _source_is_gray(io.BytesIO(self._bytes(key)), self.describe(key))


def _lmdb_key(name: str) -> str:
    """The LMDB key of a meta_info name: without its image suffix (``0001.png`` -> ``0001``, as BasicSR keys it)."""
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and stem and f".{suffix.lower()}" in IMAGE_SUFFIXES else name


# One read-only environment per LMDB folder and process (LMDB forbids opening one twice in a process):
# resolved folder -> (the pid that opened it, the environment).
_LMDB_ENVS: dict[str, tuple[int, Any]] = {}


def _lmdb_env(root: Path) -> Any:
    """This process's read-only environment of the LMDB folder ``root``, opened on first use."""
    path = str(root.resolve())
    pid = os.getpid()
    held = _LMDB_ENVS.get(path)
    if held is not None and held[0] == pid:
        return held[1]
    lmdb = _import_lmdb()
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False)
    except lmdb.Error as exc:
        if held is None or "already open" not in str(exc):
            raise DataError(f"cannot open LMDB {root}: {exc}") from exc
        # Opened by the parent before this process forked, and the lmdb package (3.x) refuses a second open in
        # the child: the inherited mapping is read-only and lock-free, so it serves reads here as well.
        env = held[1]
    _LMDB_ENVS[path] = (pid, env)
    return env


def _import_lmdb() -> Any:
    try:
        import lmdb
    except ImportError as exc:
        raise DataError("the 'lmdb' io backend needs the lmdb package: pip install 'ribsr[lmdb]' "
                        "(or pip install lmdb)") from exc
    return lmdb


_STORES: dict[str, type[ImageStore]] = {"disk": DiskStore, "memory": MemoryStore, "lmdb": LmdbStore}


def open_store(root: str | Path, backend: str = "disk", meta_info_file: str | Path | None = None,
               *, select: Iterable[str] | None = None) -> ImageStore:
    """The image store of ``root`` with io backend ``backend`` (``"disk"``, ``"memory"`` or ``"lmdb"``).

    ``meta_info_file`` selects and orders the images (disk/memory: a BasicSR meta_info file whose lines start with
    a file name relative to ``root``; lmdb: read instead of ``root/meta_info.txt``). ``select`` restricts the
    store to the given keys.
    """
    if backend not in _STORES:
        raise DataError(f"unknown io backend {backend!r} for {root}; choose one of {list(IO_BACKENDS)}")
    return _STORES[backend](root, meta_info_file, select)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------- array helpers
def _pad_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """``img`` (H, W, C) padded at the bottom/right to at least (h, w) by mirroring about the border."""
    ph, pw = max(0, h - img.shape[0]), max(0, w - img.shape[1])
    if ph == 0 and pw == 0:
        return img
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="symmetric")


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> contiguous float32 (3, H, W) in [0, 1]."""
    chw = np.array(img.transpose(2, 0, 1), dtype=np.float32, order="C")  # (H, W, 3) -> (3, H, W), a copy
    chw /= 255.0
    return torch.from_numpy(chw)


def _positive_int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise DataError(f"{where}: {what} must be a positive integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------- datasets
class _SRDataset(Dataset):
    """What both datasets share: options, the epoch shuffle, the per-sample generator and augmentation."""

    def __init__(self, gt_store: ImageStore, scale: int, gt_size: int | None, use_hflip: bool, use_rot: bool,
                 seed: int, name: str | None, dataset_enlarge_ratio: int, shuffle: bool) -> None:
        self.gt_store = gt_store
        self.name = name if name is not None else gt_store.root.name
        where = f"dataset {self.name!r}"
        self.scale = _positive_int(scale, "scale", where)
        if gt_size is not None:
            gt_size = _positive_int(gt_size, "gt_size", where)
            if gt_size % self.scale:
                raise DataError(f"{where}: gt_size must be a multiple of the scale {self.scale}, got {gt_size}")
        self.gt_size = gt_size
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DataError(f"{where}: seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.enlarge_ratio = _positive_int(dataset_enlarge_ratio, "dataset_enlarge_ratio", where)
        self.use_hflip = bool(use_hflip)
        self.use_rot = bool(use_rot)
        self.shuffle = bool(shuffle)
        self._perm: tuple[int, np.ndarray] | None = None  # (epoch, its permutation)

    @property
    def training(self) -> bool:
        """Whether items are random training crops (``gt_size`` set) rather than whole validation images."""
        return self.gt_size is not None

    @property
    def keys(self) -> list[str]:
        """The HR image keys, in index order."""
        return self.gt_store.keys

    def __len__(self) -> int:
        return len(self.gt_store)

    def __repr__(self) -> str:
        mode = f"training, gt_size={self.gt_size}" if self.training else "validation"
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, x{self.scale}, {mode})"

    def sample_image(self, g: int) -> int:
        """The image index of global sample ``g``: an epoch-wise shuffle seeded by ``(seed, epoch)``.

        An epoch is ``len(self) * dataset_enlarge_ratio`` samples, in which every image appears
        ``dataset_enlarge_ratio`` times (in order when ``shuffle`` is false).
        """
        g = self._sample_index(g)
        n = len(self)
        epoch_len = n * self.enlarge_ratio
        epoch, pos = divmod(g, epoch_len)
        if not self.shuffle:
            return pos % n
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, _SHUFFLE_STREAM, epoch])
            self._perm = (epoch, rng.permutation(epoch_len))
        return int(self._perm[1][pos]) % n

    def _sample_index(self, g: Any) -> int:
        try:
            g = operator.index(g)
        except TypeError:
            raise TypeError(f"{self.name}: sample indices must be integers, got {g!r}") from None
        if g < 0:
            raise IndexError(f"{self.name}: global sample indices are non-negative, got {g}")
        return g

    def _validation_index(self, index: Any) -> int:
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(f"{self.name}: indices must be integers, got {index!r}") from None
        if not 0 <= i < len(self):
            raise IndexError(f"{self.name}: index {i} out of range for {len(self)} images")
        return i

    def _rng(self, g: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _SAMPLE_STREAM, g])

    def _augment(self, rng: np.random.Generator, *imgs: np.ndarray) -> list[np.ndarray]:
        """The same random dihedral transform of every image (all three coins are always drawn)."""
        hflip, vflip, transpose = (rng.random(3) < 0.5).tolist()
        hflip = hflip and self.use_hflip
        vflip = vflip and self.use_rot
        transpose = transpose and self.use_rot
        k = augment_index(hflip, vflip, transpose)
        return [dihedral(img, k, axes=(0, 1)) for img in imgs]  # (H, W, C) each

    def __getitem__(self, index: int) -> dict[str, Any]:
        raise NotImplementedError


class PairedImageDataset(_SRDataset):
    """HR (gt) images with their LR (lq) images, both read from stores.

    The LR of the HR with key ``K`` has key ``filename_tmpl.format(K)`` in ``dataroot_lq`` (BasicSR's convention:
    ``"{}x2"`` pairs ``Set5/HR/baby.png`` with ``Set5/LR_bicubic/X2/babyx2.png``). ``meta_info_file`` selects the
    HR images (see :func:`open_store`). Every HR must have its LR (checked at construction); the LR must measure
    floor(HR / scale) per side, i.e. the HR mod-cropped divided by the scale (checked when loaded).

    Training (``gt_size`` set): random crops aligned between LR (``gt_size // scale``) and HR (``gt_size``), and
    random flips and 90-degree rotations if asked; see the module docstring.
    """

    def __init__(self, dataroot_gt: str | Path, dataroot_lq: str | Path, scale: int, *, gt_size: int | None = None,
                 use_hflip: bool = False, use_rot: bool = False, filename_tmpl: str = "{}", io_backend: str = "disk",
                 meta_info_file: str | Path | None = None, seed: int = 0, name: str | None = None,
                 dataset_enlarge_ratio: int = 1, shuffle: bool = True) -> None:
        gt_store = open_store(dataroot_gt, io_backend, meta_info_file)
        super().__init__(gt_store, scale, gt_size, use_hflip, use_rot, seed, name, dataset_enlarge_ratio, shuffle)
        if not isinstance(filename_tmpl, str):
            raise DataError(f"dataset {self.name!r}: filename_tmpl must be a string, got {filename_tmpl!r}")
        try:
            lq_keys = [filename_tmpl.format(k) for k in gt_store.keys]
        except (IndexError, KeyError, ValueError) as exc:
            raise DataError(f"dataset {self.name!r}: bad filename_tmpl {filename_tmpl!r} (use '{{}}' for the HR "
                            f"key, e.g. '{{}}x2'): {exc}") from exc
        self.filename_tmpl = filename_tmpl
        # The memory backend decodes only the LR images that have an HR.
        lq_store = open_store(dataroot_lq, io_backend, select=lq_keys if io_backend == "memory" else None)
        missing = [k for k in lq_keys if k not in lq_store]
        if missing and io_backend == "lmdb" and all(k in lq_store for k in gt_store.keys):
            # BasicSR pairs LMDBs by key and ignores filename_tmpl (its create_lmdb keys the LR as the HR)
            log.info("dataset %r: the LR LMDB %s holds the HR keys, not filename_tmpl %r of them: pairing by key, "
                     "as BasicSR does", self.name, lq_store.root, filename_tmpl)
            lq_keys, missing = list(gt_store.keys), []
        if missing:
            raise DataError(
                f"dataset {self.name!r}: {len(missing)} of {len(lq_keys)} HR images in {gt_store.root} have no LR "
                f"image in {lq_store.root} (LR key = filename_tmpl {filename_tmpl!r} with the HR key); missing LR "
                f"keys: {_few(missing)}"
            )
        self.lq_store = lq_store
        self._lq_keys = lq_keys
        log.info("%r: LR from %s (%s backend)", self, lq_store.root, io_backend)

    def _load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """HR (mod-cropped) and LR of image ``i``, uint8 (H, W, 3) and (H / s, W / s, 3)."""
        key, lq_key = self.gt_store.keys[i], self._lq_keys[i]
        gt, lq = self.gt_store.get(key), self.lq_store.get(lq_key)
        s = self.scale
        h, w = gt.shape[0] // s, gt.shape[1] // s
        if lq.shape[:2] != (h, w) or h == 0 or w == 0:
            raise DataError(
                f"LR {self.lq_store.describe(lq_key)} is {lq.shape[1]}x{lq.shape[0]} (WxH) but HR "
                f"{self.gt_store.describe(key)} is {gt.shape[1]}x{gt.shape[0]}; at scale {s} the LR must be "
                f"{w}x{h}"
            )
        return gt[: h * s, : w * s], lq

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Validation: the whole pair of image ``index``. Training: the random crop of global sample ``index``."""
        s = self.scale
        if self.gt_size is None:
            i = self._validation_index(index)
            gt, lq = self._load_pair(i)
            key = self.gt_store.keys[i]
            return {"lq": _to_tensor(lq), "gt": _to_tensor(gt), "key": key, "gray": self.gt_store.is_grayscale(key)}
        g = self._sample_index(index)
        i = self.sample_image(g)
        gt, lq = self._load_pair(i)
        rng = self._rng(g)
        lq_size = self.gt_size // s
        # Pad the LR by k and the HR by s * k so that they stay aligned (see the module docstring).
        lq = _pad_to(lq, lq_size, lq_size)
        gt = _pad_to(gt, lq.shape[0] * s, lq.shape[1] * s)
        y = int(rng.integers(0, lq.shape[0] - lq_size + 1))
        x = int(rng.integers(0, lq.shape[1] - lq_size + 1))
        lq = lq[y : y + lq_size, x : x + lq_size]
        gt = gt[y * s : (y + lq_size) * s, x * s : (x + lq_size) * s]
        lq, gt = self._augment(rng, lq, gt)
        return {"lq": _to_tensor(lq), "gt": _to_tensor(gt), "key": self.gt_store.keys[i]}


class DownsampleImageDataset(_SRDataset):
    """HR (gt) images only; the LR is MATLAB-style ``imresize(HR, 1 / scale)`` of the (cropped, augmented) HR.

    Validation (``gt_size`` None): the HR mod-cropped and its ``imresize``, as the benchmark LR files are made.
    Training: a random ``gt_size`` HR crop anywhere in the image, flipped/rotated if asked, then its ``imresize``,
    so that ``lq == imresize(gt, 1 / scale)`` holds exactly for every sample.
    """

    def __init__(self, dataroot_gt: str | Path, scale: int, *, gt_size: int | None = None, use_hflip: bool = False,
                 use_rot: bool = False, io_backend: str = "disk", meta_info_file: str | Path | None = None,
                 seed: int = 0, name: str | None = None, dataset_enlarge_ratio: int = 1,
                 shuffle: bool = True) -> None:
        gt_store = open_store(dataroot_gt, io_backend, meta_info_file)
        super().__init__(gt_store, scale, gt_size, use_hflip, use_rot, seed, name, dataset_enlarge_ratio, shuffle)
        log.info("%r: LR made with %s (%s backend)", self, self._lr_maker, io_backend)

    _lr_maker = "MATLAB-style imresize"

    def _pair(self, gt: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """The sample tensors of an HR crop (uint8 (H, W, 3), H and W multiples of the scale): LR and HR."""
        return {"lq": _to_tensor(imresize(gt, 1 / self.scale)), "gt": _to_tensor(gt)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Validation: the whole image ``index``. Training: the random crop of global sample ``index``."""
        s = self.scale
        if self.gt_size is None:
            i = self._validation_index(index)
            key = self.gt_store.keys[i]
            gt = self.gt_store.get(key)
            h, w = gt.shape[0] - gt.shape[0] % s, gt.shape[1] - gt.shape[1] % s
            if h == 0 or w == 0:
                raise DataError(f"{self.gt_store.describe(key)}: a {gt.shape[1]}x{gt.shape[0]} (WxH) image is "
                                f"smaller than the scale {s}")
            return {**self._pair(gt[:h, :w], self._rng(i)), "key": key, "gray": self.gt_store.is_grayscale(key)}
        g = self._sample_index(index)
        i = self.sample_image(g)
        key = self.gt_store.keys[i]
        rng = self._rng(g)
        size = self.gt_size
        gt = _pad_to(self.gt_store.get(key), size, size)
        y = int(rng.integers(0, gt.shape[0] - size + 1))
        x = int(rng.integers(0, gt.shape[1] - size + 1))
        (gt,) = self._augment(rng, gt[y : y + size, x : x + size])
        return {**self._pair(np.ascontiguousarray(gt), rng), "key": key}


class RealESRGANDataset(DownsampleImageDataset):
    """HR (gt) images only; the LR of each HR crop is made by Real-ESRGAN's second-order degradation.

    As :class:`DownsampleImageDataset` (the same crops and flips), with the LR drawn by
    :class:`ribsr.degrade.SecondOrderDegradation` from the sample's own generator, so a sample still depends only on
    ``(seed, g)``. Validation items (whole images) are degraded with the generator of ``(seed, index)``.
    ``gt_usm``: degrade the unsharp-masked HR (:func:`ribsr.degrade.usm_sharp`), as Real-ESRGAN's ``gt_usm``, and
    add it to the sample as ``"gt_usm"`` (``"gt"`` stays the HR itself).
    """

    _lr_maker = "the second-order degradation"

    def __init__(self, dataroot_gt: str | Path, scale: int, *, degradation: DegradationOptions | None = None,
                 gt_usm: bool = False, **kwargs: Any) -> None:
        super().__init__(dataroot_gt, scale, **kwargs)
        self.degradation = SecondOrderDegradation(self.scale, degradation)
        self.gt_usm = bool(gt_usm)

    def _pair(self, gt: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        hr = gt.astype(np.float32) / 255.0
        out = {"gt": torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1)))}  # (H, W, 3) -> (3, H, W)
        if self.gt_usm:
            hr = usm_sharp(hr)
            out["gt_usm"] = torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1)))
        lq, _ = self.degradation(hr, rng)
        out["lq"] = _to_tensor(lq)
        return out


# ---------------------------------------------------------------------------------- sampling, loading
class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of global sample indices: iteration ``t`` (from 1) holds ``[(t - 1) * B, t * B)``.

    ``B = batch_size * world_size``; rank ``r`` gets ``[(t - 1) * B + r * batch_size, (t - 1) * B + (r + 1) *
    batch_size)``. Iterations run from ``start_iter + 1`` (resuming after ``start_iter`` finished iterations) to
    ``total_iter`` inclusive, or forever when ``total_iter`` is None.
    """

    def __init__(self, batch_size: int, *, rank: int = 0, world_size: int = 1, start_iter: int = 0,
                 total_iter: int | None = None) -> None:
        def integer(value: Any, what: str, low: int) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
            return int(value)

        self.batch_size = integer(batch_size, "batch_size", 1)
        self.world_size = integer(world_size, "world_size", 1)
        self.rank = integer(rank, "rank", 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be below world_size {self.world_size}, got {rank!r}")
        self.start_iter = integer(start_iter, "start_iter", 0)
        self.total_iter = None if total_iter is None else integer(total_iter, "total_iter", 0)
        if self.total_iter is not None and self.total_iter < self.start_iter:
            raise ValueError(f"total_iter {self.total_iter} is before start_iter {self.start_iter}")

    @property
    def global_batch_size(self) -> int:
        """The number of samples of one iteration over all ranks."""
        return self.batch_size * self.world_size

    def batch(self, iteration: int) -> list[int]:
        """This rank's global sample indices at ``iteration`` (counting from 1)."""
        first = (iteration - 1) * self.global_batch_size + self.rank * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        t = self.start_iter + 1
        while self.total_iter is None or t <= self.total_iter:
            yield self.batch(t)
            t += 1

    def __len__(self) -> int:
        if self.total_iter is None:
            raise TypeError("an endless GlobalBatchSampler (total_iter=None) has no length")
        return self.total_iter - self.start_iter


def _worker_init(worker_id: int) -> None:
    """DataLoader workers use one torch thread each (randomness comes from the sample indices, not here)."""
    torch.set_num_threads(1)


def build_dataloader(dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, start_iter: int = 0,
                     total_iter: int | None = None, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """The training loader of ``dataset``: batches from :class:`GlobalBatchSampler`, collated into dicts.

    Each batch is ``{"lq": (B, 3, h, w), "gt": (B, 3, s*h, s*w), "key": list[str]}`` with ``B = batch_size``
    (per process); iterating it yields iterations ``start_iter + 1 .. total_iter``.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    sampler = GlobalBatchSampler(batch_size, rank=rank, world_size=world_size, start_iter=start_iter,
                                 total_iter=total_iter)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
