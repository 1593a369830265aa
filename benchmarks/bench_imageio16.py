"""Time the candidate writers (and readers) of 16-bit colour images (numbers quoted in docs/upscale.md).

    python benchmarks/bench_imageio16.py --size 2000 --repeat 2

The image is a 2000x2000 16-bit RGBA array, smooth gradients plus noise (a photo-like mix that
compresses as photos do, not as pure noise or a flat image). Each writer writes to memory; the
best of ``--repeat`` runs is printed with the size of the file. A writer that cannot hold the
image at 16 bits is reported as such.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

import numpy as np


def photo_like(size: int, channels: int = 4, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    """(size, size, channels) uint16: gradients and a blurred texture plus sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    planes = []
    for c in range(channels):
        base = 0.5 + 0.3 * np.sin(6 * x + c) * np.cos(4 * y - c)
        planes.append(base + rng.normal(0, noise, (size, size)).astype(np.float32))
    return (np.clip(np.stack(planes, axis=2), 0, 1) * 65535).astype(np.uint16)


def best_of(fn: Callable[[], object], repeat: int) -> tuple[str, object]:
    """("W s wall, C s CPU" of the fastest run, the result); CPU time is this process's, which a
    machine busy with other jobs inflates less than wall time."""
    runs, result = [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    wall, cpu = min(runs)
    return f"{wall:.2f} s wall, {cpu:.2f} s CPU", result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.01, help="noise standard deviation (0..1 scale)")
    args = parser.parse_args()
    arr = photo_like(args.size, noise=args.noise)
    h, w, c = arr.shape
    print(f"{w}x{h} 16-bit RGBA, noise {args.noise}, best of {args.repeat}")

    def pypng_write() -> bytes:
        import png

        buf = io.BytesIO()
        png.Writer(w, h, bitdepth=16, greyscale=False, alpha=True, compression=6).write(buf, arr.reshape(h, -1))
        return buf.getvalue()

    def cv2_write(level: int) -> Callable[[], bytes]:
        def write() -> bytes:
            import cv2

            ok, data = cv2.imencode(".png", arr[..., [2, 1, 0, 3]], [cv2.IMWRITE_PNG_COMPRESSION, level])
            assert ok
            return data.tobytes()

        return write

    def imageio_write() -> bytes:
        import imageio.v3 as iio

        return iio.imwrite("<bytes>", arr, extension=".png")

    def tifffile_write() -> bytes:
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, photometric="rgb", extrasamples=["unassalpha"], compression="zlib")
        return buf.getvalue()

    writers = {
        "pypng PNG (zlib level 6)": pypng_write,
        "OpenCV PNG (level 1, OpenCV's default)": cv2_write(1),
        "OpenCV PNG (level 6)": cv2_write(6),
        "imageio v3 PNG": imageio_write,
        "tifffile TIFF (zlib)": tifffile_write,
    }
    encoded: dict[str, bytes] = {}
    for name, fn in writers.items():
        try:
            seconds, data = best_of(fn, args.repeat)
        except Exception as exc:  # a writer that cannot do it says why
            print(f"write {name}: failed: {type(exc).__name__}: {exc}")
            continue
        encoded[name] = data  # type: ignore[assignment]
        print(f"write {name}: {seconds}, {len(data) / 1e6:.1f} MB")

    def check(name: str, read: Callable[[bytes], np.ndarray]) -> None:
        if name not in encoded:
            return
        seconds, back = best_of(lambda: read(encoded[name]), args.repeat)
        exact = back.dtype == np.uint16 and back.shape == arr.shape and np.array_equal(back, arr)
        print(f"read {name}: {seconds}, {'exact 16 bits' if exact else f'NOT exact ({back.dtype})'}")

    def pypng_read(data: bytes) -> np.ndarray:
        import png

        rw, rh, rows, info = png.Reader(bytes=data).asDirect()
        return np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(rh, rw, info["planes"])

    def cv2_read(data: bytes) -> np.ndarray:
        import cv2

        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., [2, 1, 0, 3]]

    def imageio_read(data: bytes) -> np.ndarray:
        import imageio.v3 as iio

        return iio.imread(data, extension=".png")

    def tifffile_read(data: bytes) -> np.ndarray:
        import tifffile

        return tifffile.imread(io.BytesIO(data))

    check("pypng PNG (zlib level 6)", pypng_read)
    check("OpenCV PNG (level 6)", cv2_read)
    check("imageio v3 PNG", imageio_read)
    check("tifffile TIFF (zlib)", tifffile_read)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
