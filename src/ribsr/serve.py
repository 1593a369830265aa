"""``ribsr serve``: a local web page that upscales dropped images and compares them with a slider.

A small stdlib HTTP server (:class:`http.server.ThreadingHTTPServer`) with our own page (``ribsr.web``: nothing is
fetched from the internet), in front of a :class:`Service`: uploads are checked (size against the pixel limit,
before decoding; the model asked for) when they arrive and answered at once, then queued for **one** worker
thread, so that several requests wait their turn instead of running side by side and exhausting memory.

The HTTP interface the page uses (JSON errors are ``{"error": message}``):

- ``GET /``: the page; ``GET /static/NAME``: its files (:data:`ribsr.web.STATIC_FILES`);
- ``GET /api/info``: the models to pick (bundled ones with their scales, checkpoints), the limits;
- ``POST /api/jobs?name=F&model=M&scale=S&denoise=D&compare=M2&compare_denoise=D2&config=C&tile=T&overlap=P``,
  the image file as the body: 202 ``{"id": ...}`` with the job's status, or 400 (bad option, not an image),
  413 (over the pixel limit or the upload limit), 503 (the queue is full);
- ``GET /api/jobs/ID``: the job's status (``state`` queued / running / done / error, ``position`` in the queue,
  ``progress`` 0..1, ``stage``, ``error``, and when done the URLs of ``result`` and ``before`` images);
- ``GET /api/jobs/ID/result.png`` (the model's output, as ``ribsr upscale`` writes it: 8 or 16 bits, alpha kept)
  and ``GET /api/jobs/ID/before.png`` (the other side: bicubic or the second model).

Bound to a loopback address (the default), requests must name a loopback host (``Host``) and come from the page's
own origin (``Origin``), so that other web sites open in the same browser cannot use it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from torch import nn

from ribsr.compare import BICUBIC, Side, load_network, side_label, too_large_message
from ribsr.web import STATIC_FILES, asset_bytes

log = logging.getLogger(__name__)

__all__ = ["Job", "JobOptions", "RequestError", "Server", "Service", "image_size", "make_server"]

CHUNK = 1 << 20  # bytes read from an upload at a time
DRAIN_LIMIT = 64 << 20  # the largest body of a refused upload that is read (and dropped) before answering
# Bundled model name -> how the page's model menus show it (GET /api/info).
MODEL_LABELS = {"default": "default (bicubic-trained)", "real": "real-world (photos: blur, noise, JPEG)",
                "escrib": "ESC-RIB (bicubic-trained, 74K parameters, faster)"}


class RequestError(ValueError):
    """A request that cannot be served, with the HTTP status to answer and a message naming the bad value."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = int(status)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """The (width, height) an image file declares, read from its header without decoding a pixel;
    :class:`ribsr.imageio.ImageReadError` for a file that is not an image :func:`ribsr.imageio.read_image` reads."""
    from ribsr.imageio import ImageTooLargeError, read_image

    try:
        read_image(path, max_pixels=0)  # refused before decoding, with the size it declares
    except ImageTooLargeError as exc:
        return exc.size
    return (0, 0)  # an image of no pixels (read_image decoded nothing)


# ---------------------------------------------------------------------------------- options
def _number(params: dict[str, str], key: str, kind: type[int] | type[float], low: float,
            high: float | None = None) -> Any:
    value = params.get(key, "").strip()
    if value == "":
        return None
    try:
        v = kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise RequestError(f"{key} must be {what}, got {value!r}") from None
    if not (v >= low and (high is None or v <= high)):  # refuses nan too
        bound = f"from {low:g} to {high:g}" if high is not None else f">= {low:g}"
        raise RequestError(f"{key} must be {bound}, got {value!r}")
    return v


@dataclass(frozen=True)
class JobOptions:
    """What a job asks for: the model (``default``, ``real``, ``escrib`` or a checkpoint path) and what it is
    compared with (``bicubic`` or another model), the scale, the real-world strength (``denoise``, for ``real``), the
    config of a checkpoint without one, and the tiling."""

    model: str = "default"
    scale: int | None = None
    denoise: float | None = None
    compare: str = BICUBIC
    compare_denoise: float | None = None
    config: str | None = None
    tile: int | str = "auto"
    overlap: int | None = None

    @classmethod
    def from_query(cls, params: dict[str, str]) -> JobOptions:
        """The options of a ``POST /api/jobs`` query string (RequestError naming a bad value)."""
        known = {"name", "model", "scale", "denoise", "compare", "compare_denoise", "config", "tile", "overlap"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise RequestError(f"unknown option(s) {', '.join(unknown)}; the options are {', '.join(sorted(known))}")
        tile_text = params.get("tile", "auto").strip() or "auto"
        tile: int | str = "auto" if tile_text == "auto" else _number({"tile": tile_text}, "tile", int, 0)
        return cls(
            model=params.get("model", "default").strip() or "default",
            scale=_number(params, "scale", int, 1),
            denoise=_number(params, "denoise", float, 0, 1),
            compare=params.get("compare", BICUBIC).strip() or BICUBIC,
            compare_denoise=_number(params, "compare_denoise", float, 0, 1),
            config=params.get("config", "").strip() or None,
            tile=tile,
            overlap=_number(params, "overlap", int, 0),
        )


@dataclass
class Job:
    """One upload and its outcome; the worker fills it in, :meth:`status` is what ``GET /api/jobs/ID`` answers."""

    id: str
    name: str
    options: JobOptions
    folder: Path
    size: tuple[int, int]
    state: str = "queued"  # queued, running, done, error
    stage: str = ""
    progress: float = 0.0
    error: str | None = None
    scale: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    @property
    def upload(self) -> Path:
        """The uploaded file."""
        return self.folder / "upload"

    def download_name(self) -> str:
        """The result's file name for the browser: ``{stem}_x{scale}.png`` as ``ribsr upscale`` names it."""
        stem = Path(self.name).stem or "image"
        return f"{stem}_x{self.scale}.png"

    def status(self, position: int | None = None) -> dict[str, Any]:
        """The job as JSON (``position``: jobs ahead of it in the queue, while queued)."""
        out: dict[str, Any] = {
            "id": self.id, "name": self.name, "state": self.state, "stage": self.stage,
            "progress": round(self.progress, 4), "error": self.error, "size": list(self.size),
            "scale": self.scale, "labels": self.labels, "notes": self.notes, "seconds": self.seconds,
        }
        if position is not None:
            out["position"] = position
        if self.state == "done" and self.scale:
            out["output_size"] = [self.size[0] * self.scale, self.size[1] * self.scale]
            out["result"] = f"/api/jobs/{self.id}/result.png"
            out["before"] = f"/api/jobs/{self.id}/before.png"
            out["download_name"] = self.download_name()
        return out


# ---------------------------------------------------------------------------------- the service
class Service:
    """The job queue, its single worker thread and the loaded models.

    ``max_output_pixels``: uploads whose output would have more pixels are refused before decoding
    (``limit_name`` names the option in the message; None: no limit). ``max_upload_bytes``: larger request bodies
    are refused unread. ``max_queued``: jobs waiting at most (more: 503); ``keep_jobs``: finished jobs whose files
    are kept (the oldest are removed). ``device``, ``dtype``, ``max_memory``: how the networks run (as
    ``ribsr upscale``'s options). ``checkpoints``: whether a checkpoint path on this machine may be named.
    ``models_kept``: networks kept loaded between jobs.
    """

    def __init__(
        self,
        *,
        max_output_pixels: int | None = 16384 * 16384,
        limit_name: str = "--max-output-pixels",
        max_upload_bytes: int = 512 << 20,
        max_queued: int = 8,
        keep_jobs: int = 16,
        device: str = "auto",
        dtype: str = "auto",
        max_memory: float | None = None,
        checkpoints: bool = True,
        models_kept: int = 2,
        workdir: str | os.PathLike[str] | None = None,
    ) -> None:
        from ribsr.devices import resolve_device

        for name, value in (("max_queued", max_queued), ("keep_jobs", keep_jobs), ("models_kept", models_kept),
                            ("max_upload_bytes", max_upload_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if max_output_pixels is not None and (isinstance(max_output_pixels, bool) or max_output_pixels < 1):
            raise ValueError(f"max_output_pixels must be >= 1 or None (no limit), got {max_output_pixels!r}")
        self.max_output_pixels = max_output_pixels
        self.limit_name = limit_name
        self.max_upload_bytes = max_upload_bytes
        self.max_queued = max_queued
        self.keep_jobs = keep_jobs
        self.device = resolve_device(device)
        self.dtype = dtype
        self.max_memory = max_memory
        self.checkpoints = checkpoints
        self.models_kept = models_kept
        self._tmp = tempfile.TemporaryDirectory(prefix="ribsr-serve-", dir=workdir)
        self.workdir = Path(self._tmp.name)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._waiting: list[str] = []  # ids of queued jobs, in order
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._models: OrderedDict[tuple[Any, ...], nn.Module] = OrderedDict()
        self.running = 0  # jobs in the worker now (0 or 1)
        self.most_running = 0  # the most that ever ran at once (tests: 1)
        self._worker = threading.Thread(target=self._work, name="ribsr-serve-worker", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------------------- the models
    def info(self) -> dict[str, Any]:
        """What ``GET /api/info`` answers: the bundled models with their scales, and the limits."""
        from ribsr.assets import BUNDLED_MODELS, REAL_MODEL, bundled_scales

        models = [{"id": BICUBIC, "label": "bicubic (MATLAB imresize)", "scales": [2, 3, 4], "denoise": False,
                   "compare_only": True}]
        for name in BUNDLED_MODELS:
            scales = bundled_scales(name)
            if scales:
                models.append({"id": name, "label": MODEL_LABELS.get(name, name), "scales": scales,
                               "denoise": name == REAL_MODEL})
        return {"models": models, "checkpoints": self.checkpoints, "max_output_pixels": self.max_output_pixels,
                "limit_name": self.limit_name, "max_upload_bytes": self.max_upload_bytes,
                "max_queued": self.max_queued, "device": str(self.device)}

    def _check_model(self, spec: str, scale: int | None, denoise: float | None, what: str) -> int | None:
        """The scale ``spec`` will upscale by, where known before loading it (bundled models); RequestError naming
        a model that cannot be used."""
        from ribsr.assets import BUNDLED_MODELS, REAL_MODEL, bundled_scales

        knob = "denoise" if what == "model" else "compare_denoise"
        names = ", ".join(BUNDLED_MODELS)
        if spec == BICUBIC:
            if what == "model":
                raise RequestError("model bicubic: bicubic is what a model is compared with, not a model; "
                                   f"choose one of {names} or a checkpoint")
            if denoise is not None:
                raise RequestError(f"{knob} applies to the real model, not to bicubic")
            return scale
        if spec in BUNDLED_MODELS:
            if denoise is not None and spec != REAL_MODEL:
                raise RequestError(f"{knob} applies to the real model, not to {spec}")
            have = bundled_scales(spec)
            if scale is None:
                scale = 2 if 2 in have else (have[0] if have else None)
            if scale not in have:
                raise RequestError(f"{what} {spec}: no bundled {spec} model for x{scale} (bundled: "
                                   f"{', '.join(f'x{s}' for s in have) or 'none'})")
            return scale
        if not self.checkpoints:
            raise RequestError(f"{what} {spec!r}: this server takes only the bundled models ({names})")
        if denoise is not None:
            raise RequestError(f"{what} {spec}: denoise blends the bundled default and real models; it does not apply "
                               "to a checkpoint")
        if "://" in spec:
            raise RequestError(f"{what} {spec}: ribsr serve does not download checkpoints; give the path of a file "
                               "on this machine")
        path = Path(spec).expanduser()
        if not path.is_file():
            raise RequestError(f"{what} {spec}: checkpoint not found (a path on the machine ribsr serve runs on)")
        return scale

    def _side(self, spec: str, scale: int | None, denoise: float | None, options: JobOptions) -> Side:
        if spec == BICUBIC:
            if scale is None:
                raise ValueError("bicubic needs a scale")
            return Side.bicubic(scale)
        from ribsr.assets import BUNDLED_MODELS, REAL_MODEL

        if denoise == 1 and spec == REAL_MODEL:
            denoise = None  # the real model itself
        bundled = spec in BUNDLED_MODELS
        path = spec if bundled else str(Path(spec).expanduser().resolve())
        key = (path, scale, denoise, None if bundled else options.config)
        model = self._models.pop(key, None)
        if model is None:
            config = None if bundled else options.config
            model = load_network(path, scale=scale, denoise=denoise, config=config, device=str(self.device))
        self._models[key] = model
        while len(self._models) > self.models_kept:
            self._models.popitem(last=False)
        side = Side.from_model(model, tile=options.tile, overlap=options.overlap, max_memory=self.max_memory,
                               dtype=self.dtype, device=self.device)
        if scale is not None and side.scale != scale:
            raise ValueError(f"{spec}: upscales x{side.scale}, but x{scale} was asked for")
        side.label = side_label(spec if bundled else Path(spec).name, side.scale, denoise)
        return side

    # ----------------------------------------------------------------------------- jobs
    def check_size(self, name: str, size: tuple[int, int], scale: int | None) -> None:
        """RequestError (413) when an input of ``size`` upscaled by ``scale`` passes the pixel limit."""
        if self.max_output_pixels is None or scale is None:
            return
        if size[0] * size[1] * scale * scale > self.max_output_pixels:
            raise RequestError(too_large_message(name, size, scale, self.max_output_pixels, self.limit_name),
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    def submit(self, name: str, options: JobOptions, write: Callable[[Path], None]) -> Job:
        """A new job for the image that ``write(path)`` stores at ``path``, checked and queued; RequestError
        when the options, the file or its size cannot be served (nothing is kept then)."""
        from ribsr.imageio import ImageReadError

        name = Path(name.replace("\\", "/")).name or "image"
        scale = self._check_model(options.model, options.scale, options.denoise, "model")
        compare_scale = self._check_model(options.compare, options.scale or scale, options.compare_denoise,
                                          "compare")
        if scale is not None and compare_scale is not None and scale != compare_scale:
            raise RequestError(f"model {options.model} upscales x{scale}, compare {options.compare} x{compare_scale}: "
                               "the two sides must upscale by the same factor")
        with self._lock:
            if len(self._waiting) >= self.max_queued:
                raise RequestError(f"{len(self._waiting)} jobs are waiting (the most this server queues, "
                                   "--max-queued); try again when one is done", HTTPStatus.SERVICE_UNAVAILABLE)
        job_id = uuid.uuid4().hex[:12]
        folder = self.workdir / job_id
        folder.mkdir()
        job = Job(job_id, name, options, folder, (0, 0), scale=scale)
        try:
            write(job.upload)
            try:
                job.size = image_size(job.upload)
            except ImageReadError as exc:
                raise RequestError(str(exc).replace(str(job.upload), name)) from None
            if job.size[0] * job.size[1] == 0:
                raise RequestError(f"{name}: an image of no pixels ({job.size[0]}x{job.size[1]})")
            self.check_size(name, job.size, scale or compare_scale)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            self._jobs[job_id] = job
            self._waiting.append(job_id)
            self._queue.put(job)
        log.info("queued %s (%dx%d) as %s", name, *job.size, job_id)
        return job

    def job(self, job_id: str) -> Job:
        """The job ``job_id``; RequestError (404) when there is none (never was, or removed as old)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise RequestError(f"no job {job_id!r} (finished jobs are kept {self.keep_jobs} at a time)",
                               HTTPStatus.NOT_FOUND)
        return job

    def status(self, job_id: str) -> dict[str, Any]:
        """``GET /api/jobs/ID``'s answer."""
        job = self.job(job_id)
        with self._lock:
            position = self._waiting.index(job_id) if job_id in self._waiting else None
        return job.status(position)

    def wait(self, job_id: str, timeout: float = 60) -> Job:
        """Block until the job is done or failed (tests and scripts); TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.state in ("done", "error"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout} s")
            time.sleep(0.02)

    def _forget_old(self) -> None:
        with self._lock:
            finished = [j for j in self._jobs.values() if j.state in ("done", "error")]
            for old in finished[: max(0, len(finished) - self.keep_jobs)]:
                del self._jobs[old.id]
                shutil.rmtree(old.folder, ignore_errors=True)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.id in self._waiting:
                    self._waiting.remove(job.id)
                job.state = "running"
                self.running += 1
                self.most_running = max(self.most_running, self.running)
            try:
                self._run(job)
                job.state = "done"
            except Exception as exc:  # one bad job must not stop the worker; the page shows the message
                from ribsr.memory import is_out_of_memory

                known = (ValueError, OSError, MemoryError)
                if not isinstance(exc, known) and not (isinstance(exc, RuntimeError) and is_out_of_memory(exc)):
                    log.exception("job %s (%s) failed", job.id, job.name)
                    job.error = f"{job.name}: {type(exc).__name__}: {exc}"
                else:
                    job.error = str(exc).replace(str(job.upload), job.name)
                    if job.name not in job.error:
                        job.error = f"{job.name}: {job.error}"
                job.state = "error"
                log.info("job %s failed: %s", job.id, job.error)
            finally:
                with self._lock:
                    self.running -= 1
                job.upload.unlink(missing_ok=True)
                self._forget_old()

    def _run(self, job: Job) -> None:
        from ribsr.imageio import read_image

        o = job.options
        t0 = time.perf_counter()
        job.stage = f"loading {o.model}"
        after = self._side(o.model, o.scale or job.scale, o.denoise, o)
        scale = after.scale
        self.check_size(job.name, job.size, scale)  # a checkpoint's scale is known only now
        job.stage = f"loading {o.compare}"
        before = self._side(o.compare, scale, o.compare_denoise, o)
        if before.scale != scale:
            raise ValueError(f"{before.label} upscales x{before.scale} but {after.label} x{scale}: the two sides "
                             "must upscale by the same factor")
        job.scale = scale
        job.labels = {"before": before.label, "after": after.label}
        job.seconds["load"] = time.perf_counter() - t0
        limit = self.max_output_pixels // scale**2 if self.max_output_pixels else None
        img = read_image(job.upload, max_pixels=limit)
        job.notes = list(img.notes)
        # The model's output first (the download), then the other side; progress over both.
        stages = [(after, "result.png", 0.0, 0.8 if before.upscaler is None else 0.5),
                  (before, "before.png", 0.8 if before.upscaler is None else 0.5, 1.0)]
        for side, file, start, end in stages:
            job.stage = side.label

            def progress(done: int, total: int, start: float = start, end: float = end,
                         label: str = side.label) -> None:
                job.progress = start + (end - start) * (done / total if total else 1.0)
                job.stage = f"{label}: {done}/{total} tile{'s' if total != 1 else ''}"

            t1 = time.perf_counter()
            side.upscale_file(img, job.folder / file, progress)
            job.seconds["result" if file == "result.png" else "before"] = time.perf_counter() - t1
            job.progress = end
        job.stage = "done"

    def close(self) -> None:
        """Stop the worker (after the job it runs) and remove every job's files."""
        self._queue.put(None)
        self._worker.join(timeout=60)
        self._tmp.cleanup()


# ---------------------------------------------------------------------------------- HTTP
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Handler(BaseHTTPRequestHandler):
    """The page, its files and the JSON API of :class:`Service` (see the module docstring)."""

    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "ribsr-serve"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (BaseHTTPRequestHandler's name)
        log.debug("%s %s", self.address_string(), format % args)

    # ----------------------------------------------------------------------------- answers
    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _file(self, path: Path, download: str | None = None) -> None:
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            raise RequestError(f"{path.name}: not written (the job failed or was removed)", 404) from None
        headers = {"Content-Disposition": f'attachment; filename="{download}"'} if download else None
        self._send(200, body, "image/png", headers)

    def _allowed(self) -> str | None:
        """Why a request is refused (None: it is not): a non-loopback Host or a foreign Origin when bound to a
        loopback address."""
        if not self.server.loopback:
            return None
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not _is_loopback(name):
            return f"Host {host!r} refused: this server answers loopback names only (127.0.0.1, localhost)"
        origin = self.headers.get("Origin")
        if origin is not None and origin != "null":
            parsed = urllib.parse.urlsplit(origin)
            if not _is_loopback(parsed.hostname or "") or parsed.port != self.server.server_address[1]:
                return f"Origin {origin!r} refused: requests come from this server's own page only"
        return None

    # ----------------------------------------------------------------------------- routes
    def _route(self) -> None:
        refused = self._allowed()
        if refused:
            self._error(HTTPStatus.FORBIDDEN, refused)
            return
        url = urllib.parse.urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        service = self.server.service
        try:
            if self.command in ("GET", "HEAD"):
                if not parts or parts == ["index.html"]:
                    self._send(200, asset_bytes("index.html"), STATIC_FILES["index.html"])
                elif len(parts) == 2 and parts[0] == "static" and parts[1] in STATIC_FILES:
                    self._send(200, asset_bytes(parts[1]), STATIC_FILES[parts[1]])
                elif parts == ["api", "info"]:
                    self._json(200, service.info())
                elif len(parts) == 3 and parts[:2] == ["api", "jobs"]:
                    self._json(200, service.status(parts[2]))
                elif len(parts) == 4 and parts[:2] == ["api", "jobs"] and parts[3] in ("result.png", "before.png"):
                    job = service.job(parts[2])
                    if job.state != "done":
                        raise RequestError(f"job {job.id} is {job.state}, its images are not ready", 409)
                    name = job.download_name() if parts[3] == "result.png" else None
                    self._file(job.folder / parts[3], name)
                else:
                    raise RequestError(f"nothing at {url.path}", HTTPStatus.NOT_FOUND)
            elif self.command == "POST" and parts == ["api", "jobs"]:
                self._post_job(urllib.parse.parse_qs(url.query, keep_blank_values=True))
            else:
                raise RequestError(f"{self.command} {url.path} is not served", HTTPStatus.METHOD_NOT_ALLOWED)
        except RequestError as exc:
            self._error(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away during %s %s", self.command, self.path)

    def _post_job(self, query: dict[str, list[str]]) -> None:
        service = self.server.service
        params = {k: v[-1] for k, v in query.items()}
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True
            raise RequestError("the upload needs a Content-Length", HTTPStatus.LENGTH_REQUIRED)
        try:
            length = int(length_text)
        except ValueError:
            self.close_connection = True
            raise RequestError(f"bad Content-Length {length_text!r}") from None
        if length > service.max_upload_bytes:
            self.close_connection = True  # the body is not read
            raise RequestError(f"upload of {length:,} bytes is larger than the server's limit of "
                               f"{service.max_upload_bytes:,} bytes (--max-upload-mb)",
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        if length == 0:
            raise RequestError("empty upload: send the image file as the request body")
        remaining = length

        def write(path: Path) -> None:
            nonlocal remaining
            with open(path, "wb") as f:
                while remaining:
                    chunk = self.rfile.read(min(CHUNK, remaining))
                    if not chunk:
                        raise RequestError(f"upload ended after {length - remaining:,} of {length:,} bytes")
                    f.write(chunk)
                    remaining -= len(chunk)

        try:
            options = JobOptions.from_query(params)
            job = service.submit(params.get("name", "image"), options, write)
        finally:
            if remaining:  # refused before the body was read: read a small one (so that the client sees the
                if remaining <= DRAIN_LIMIT:  # answer), drop the connection after a large one
                    while remaining and (chunk := self.rfile.read(min(CHUNK, remaining))):
                        remaining -= len(chunk)
                self.close_connection = True
        self._json(HTTPStatus.ACCEPTED, service.status(job.id))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _route


class Server(ThreadingHTTPServer):
    """A threading HTTP server (one thread per connection; the work itself queues in :class:`Service`)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: Service) -> None:
        self.service = service
        self.loopback = _is_loopback(address[0])
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def server_close(self) -> None:
        super().server_close()
        self.service.close()


def make_server(host: str = "127.0.0.1", port: int = 8765, **service_options: Any) -> Server:
    """A :class:`Server` bound to ``host:port`` (port 0: a free one, see ``server.url``) with a new
    :class:`Service` made with ``service_options``; ``serve_forever()`` runs it, ``server_close()`` stops it."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be from 0 to 65535, got {port!r}")
    service = Service(**service_options)
    try:
        return Server((host, port), service)
    except BaseException:
        service.close()
        raise
