"""Checkpoints by URL: downloaded once into the torch.hub cache, verified, then used offline.

The cache is ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``), the folder ``torch.hub.load_state_dict_from_url`` uses; a file is
stored under the last part of its URL's path, so its extension (``.pth``, ``.safetensors``) is kept.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from ribsr.files import atomic_write, remove_stale_parts, terminate_as_exception

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DownloadError(OSError):
    """A checkpoint could not be downloaded whole (HTTP error, network failure, truncated body)."""


class ChecksumError(ValueError):
    """A file's SHA-256 is not the expected one."""


def is_url(spec: object) -> bool:
    """Whether ``spec`` is an ``http://`` or ``https://`` URL (a string, not a :class:`~pathlib.Path`)."""
    return isinstance(spec, str) and urllib.parse.urlsplit(spec).scheme.lower() in ("http", "https")


def redact(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part (if any) replaced by ``***``, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def strip_credentials(url: str) -> str:
    """``url`` without its ``user:password@`` part (if any): what to record of it (a converted file's source)."""
    return _credentials(url)[0]


def _credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """(``url`` without its ``user:password@`` part, (user, password) or None)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    bare = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return bare, (urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))


def _other_scheme(spec: str) -> str | None:
    """Why ``spec``, a ``scheme://`` URL that is not http(s) (and no existing path), cannot be read; else None."""
    if "://" not in spec or Path(spec).exists():
        return None
    parts = urllib.parse.urlsplit(spec)
    scheme = parts.scheme.lower()
    if not scheme or scheme in ("http", "https"):
        return None
    if scheme == "file":
        return (f"{redact(spec)} is a file:// URL; give the file's path instead "
                f"({urllib.parse.unquote(parts.path) or '/'})")
    return (f"{redact(spec)} is a {scheme}:// URL, which ribsr does not download (only http:// and https://); "
            "download the file yourself and give its path")


def cache_dir() -> Path:
    """The folder downloaded checkpoints are kept in: ``torch.hub.get_dir()/checkpoints``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(url: str) -> Path:
    """Where the checkpoint at ``url`` is (or will be) cached: the cache folder / the URL path's file name."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"{url}: the URL names no file (its path must end with the checkpoint's file name)")
    return cache_dir() / name


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, as 64 lowercase hexadecimal digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256_arg(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256.fullmatch(value):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return value


def _verify(path: Path, expected: str | None, what: str) -> None:
    if expected is None:
        return
    got = file_sha256(path)
    if got != expected:
        raise ChecksumError(f"{what}: SHA-256 mismatch: expected {expected}, got {got}")


# A download must be over within DEFAULT_DEADLINE seconds, and bring at least DEFAULT_MIN_RATE bytes a second
# over every span of ``timeout`` seconds: a server trickling a byte a second never trips the per-read timeout.
DEFAULT_DEADLINE = 3600.0
DEFAULT_MIN_RATE = 10 * 1024


def fetch(spec: str | Path, sha256: str | None = None, progress: bool = True, timeout: float = 60.0, *,
          deadline: float = DEFAULT_DEADLINE, min_rate: float = DEFAULT_MIN_RATE) -> Path:
    """The local file for a checkpoint path or URL.

    A URL is downloaded into the cache on first use (see :func:`download`) and read from there after.
    With ``sha256`` the file (local or cached) is checked against it and :class:`ChecksumError` raised on
    a mismatch. A local path is returned as it is (whether it exists is the reader's concern); a URL of
    another scheme (``file://``, ``ftp://``, ...) is a ValueError saying so.
    """
    expected = _check_sha256_arg(sha256)
    if not is_url(spec):
        if isinstance(spec, str) and (why := _other_scheme(spec)):
            raise ValueError(why)
        path = Path(spec)
        if expected is not None and path.is_file():
            _verify(path, expected, str(path))
        return path
    url = str(spec)
    path = cached_path(url)
    if path.is_file():
        log.debug("%s: using the cached copy %s", redact(url), path)
        _verify(path, expected, f"{path} (the cached copy of {redact(url)}; delete it to download again)")
        return path
    return download(url, sha256=expected, progress=progress, timeout=timeout, deadline=deadline, min_rate=min_rate)


def _check_readable(tmp: Path, dest: Path, url: str) -> None:
    """Raise DownloadError when the downloaded file ``tmp`` (to be ``dest``) cannot be read as what its name says:
    an ONNX model (when onnx is installed), else a checkpoint (:func:`ribsr.checkpoint.read_state`)."""
    if dest.suffix.lower() == ".onnx":
        try:
            import onnx
        except ImportError:
            return
        try:
            onnx.load(str(tmp), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and others
            raise DownloadError(f"{url}: the file received is not a readable ONNX model ({exc}); not stored") from None
        return
    from ribsr.checkpoint import CheckpointError, read_state

    try:
        read_state(tmp, "safetensors" if dest.suffix == ".safetensors" else "torch")
    except (CheckpointError, ValueError) as exc:
        raise DownloadError(f"{url}: the file received is not a readable checkpoint; not stored:\n  {exc}") from None


class _Watchdog:
    """Shuts the sockets of a request down when it has not been answered in time: the per-read timeout does not
    bound a response head (status line and headers) that comes a byte at a time."""

    def __init__(self) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                self._shut(sock)

    def arm(self, seconds: float) -> None:
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:  # the plain socket's shutdown, under TLS too: the blocked read in the main thread returns
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


def _watched_handlers(watchdog: _Watchdog) -> list[urllib.request.BaseHandler]:
    """HTTP and HTTPS handlers whose connections (redirects and authentication retries included) ``watchdog``
    can shut down."""

    def watched(cls: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        class Watched(cls):  # type: ignore[valid-type,misc]
            def connect(self) -> None:
                super().connect()
                watchdog.add(self.sock)

        return Watched

    class HTTP(urllib.request.HTTPHandler):
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            return super().do_open(watched(http_class), req, **kwargs)

    class HTTPS(urllib.request.HTTPSHandler):
        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            return super().do_open(watched(http_class), req, **kwargs)

    return [HTTP(), HTTPS()]


def download(url: str, sha256: str | None = None, progress: bool = True, timeout: float = 60.0, *,
             deadline: float = DEFAULT_DEADLINE, min_rate: float = DEFAULT_MIN_RATE) -> Path:
    """Download ``url`` into the cache and return its path, replacing any cached copy.

    The body is asked for without compression (``Accept-Encoding: identity``; a compressed body is refused)
    and goes to a temporary ``.part`` file in the cache folder (:func:`ribsr.files.atomic_write`) that is renamed
    into place only when it is whole (exactly as many bytes as ``Content-Length`` announced: fewer or more are
    refused), has the hash ``sha256`` when given, and reads as a checkpoint (or, for ``.onnx``, as an ONNX
    model); on any failure, SIGTERM and SIGHUP included, it is removed and :class:`DownloadError` (or
    :class:`ChecksumError`) names the URL (its password hidden) and the problem. ``.part`` files that a killed
    download left are removed first. ``progress`` shows a bar on stderr when it is a terminal.

    ``timeout`` (seconds) bounds connecting and each read, and twice it (at most ``deadline``) the wait for the
    response's status line and headers (a server may send them a byte at a time); ``deadline`` bounds the whole
    download; and every span of ``timeout`` seconds must bring ``min_rate`` bytes a second. A ``user:password@``
    in the URL is answered to the server's Basic authentication (sent only to that URL).
    """
    from tqdm import tqdm

    from ribsr import __version__

    expected = _check_sha256_arg(sha256)
    if not (timeout > 0 and deadline > 0 and min_rate >= 0):
        raise ValueError(f"timeout and deadline must be > 0 and min_rate >= 0, got {timeout}, {deadline}, {min_rate}")
    shown = redact(url)
    dest = cached_path(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_parts(dest.parent, [dest.name]):
        log.info("removed %s, left by an interrupted download", stale)
    target, credentials = _credentials(url)
    handlers = []
    if credentials is not None:
        passwords = urllib.request.HTTPPasswordMgrWithPriorAuth()
        passwords.add_password(None, target, *credentials, is_authenticated=True)
        handlers.append(urllib.request.HTTPBasicAuthHandler(passwords))
    watchdog = _Watchdog()
    opener = urllib.request.build_opener(*handlers, *_watched_handlers(watchdog))
    request = urllib.request.Request(target, headers={"User-Agent": f"ribsr/{__version__}",
                                                      "Accept-Encoding": "identity"})
    log.info("downloading %s to %s", shown, dest)
    start = time.monotonic()
    received = 0
    # SIGTERM/SIGHUP raise, so that the .part file below is removed; it replaces dest only once verified.
    with terminate_as_exception(), atomic_write(dest) as tmp:
        with open(tmp, "xb") as out:
            head_limit = min(2 * timeout, deadline)
            slow_head = DownloadError(f"{shown}: no answer (status line and headers) within {head_limit:g} s of "
                                      "the request; the server is too slow or stalled")
            watchdog.arm(head_limit)
            try:
                response = opener.open(request, timeout=timeout)
            except urllib.error.HTTPError as exc:
                raise slow_head if watchdog.fired else DownloadError(f"{shown}: HTTP {exc.code} {exc.reason}") \
                    from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                if watchdog.fired:
                    raise slow_head from None
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"{shown}: cannot connect ({reason})") from None
            finally:
                watchdog.disarm()
            if watchdog.fired:  # a head cut short by the shutdown may parse as a whole (empty) answer
                response.close()
                raise slow_head
            with response:
                kind = response.headers.get("Content-Type", "")
                if kind.split(";")[0].strip().lower() == "text/html":
                    raise DownloadError(f"{shown}: the server sent an HTML page ({kind}), not a checkpoint file")
                encoding = response.headers.get("Content-Encoding", "").strip().lower()
                if encoding not in ("", "identity"):
                    raise DownloadError(f"{shown}: the server sent the file {encoding}-compressed (Content-"
                                        f"Encoding: {encoding}) though an uncompressed one was asked for; "
                                        "not stored")
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if total is not None and not getattr(response, "chunked", False):
                    response.length = None  # read to the end, so that a body longer than announced shows
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                          file=sys.stderr, disable=None if progress else True, leave=False) as bar:
                    received = _copy(response, out, bar, shown, total, timeout, start + deadline, deadline,
                                     min_rate)
            if total is not None and received < total:
                raise DownloadError(f"{shown}: the download was cut short: received {received} bytes of {total}")
            out.flush()
            os.fsync(out.fileno())
        _verify(tmp, expected, shown)
        _check_readable(tmp, dest, shown)
    log.info("saved %s (%d bytes)", dest, received)
    return dest


def _copy(response: http.client.HTTPResponse, out: BinaryIO, bar: Any, url: str, total: int | None, timeout: float,
          end: float, deadline: float, min_rate: float) -> int:
    """Copy the body of ``response`` to ``out`` as it comes; returns the bytes received. Raises DownloadError for
    a body longer than ``total``, a read that waits more than ``timeout`` seconds, a download still running at
    ``end`` (monotonic time), or a span of ``timeout`` seconds that brought less than ``min_rate`` bytes a second."""
    received = 0
    span_start, span_bytes = time.monotonic(), 0
    of_total = f" of {total}" if total is not None else ""
    while True:
        try:
            chunk = response.read1(_CHUNK)
        except http.client.IncompleteRead as exc:
            received += len(exc.partial)
            raise DownloadError(f"{url}: the download was cut short: received {received} bytes{of_total}") from None
        except TimeoutError:
            if total is not None and received == total:
                return received  # all that was announced; the server kept the connection open (read to its end)
            raise DownloadError(f"{url}: the download stalled: no data for {timeout:g} s after {received} "
                                f"bytes{of_total}") from None
        except OSError as exc:
            raise DownloadError(f"{url}: the download failed after {received} bytes{of_total} ({exc})") from None
        if not chunk:
            return received
        if total is not None and received + len(chunk) > total:
            raise DownloadError(f"{url}: the server sent more than the {total} bytes its Content-Length announced "
                                "(a broken server or proxy); not stored")
        out.write(chunk)
        received += len(chunk)
        span_bytes += len(chunk)
        bar.update(len(chunk))
        now = time.monotonic()
        if now > end:
            raise DownloadError(f"{url}: the download took more than {deadline:g} s (received {received} "
                                f"bytes{of_total}); download the file yourself and give its path")
        if now - span_start >= timeout:
            rate = span_bytes / (now - span_start)
            if rate < min_rate:
                raise DownloadError(f"{url}: the download is too slow: {rate:,.0f} bytes/s over the last "
                                    f"{now - span_start:.1f} s, less than {min_rate:,.0f} (received {received} "
                                    f"bytes{of_total}); download the file yourself and give its path")
            span_start, span_bytes = now, 0


__all__ = [
    "DEFAULT_DEADLINE", "DEFAULT_MIN_RATE", "ChecksumError", "DownloadError", "cache_dir", "cached_path", "download",
    "fetch", "file_sha256", "is_url", "redact", "strip_credentials",
]
