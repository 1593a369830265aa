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
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ribsr.files import default_file_mode

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


def fetch(spec: str | Path, sha256: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """The local file for a checkpoint path or URL.

    A URL is downloaded into the cache on first use (see :func:`download`) and read from there after.
    With ``sha256`` the file (local or cached) is checked against it and :class:`ChecksumError` raised on
    a mismatch. A local path is returned as it is (whether it exists is the reader's concern).
    """
    expected = _check_sha256_arg(sha256)
    if not is_url(spec):
        path = Path(spec)
        if expected is not None and path.is_file():
            _verify(path, expected, str(path))
        return path
    url = str(spec)
    path = cached_path(url)
    if path.is_file():
        log.debug("%s: using the cached copy %s", url, path)
        _verify(path, expected, f"{path} (the cached copy of {url}; delete it to download again)")
        return path
    return download(url, sha256=expected, progress=progress, timeout=timeout)


def download(url: str, sha256: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` into the cache and return its path, replacing any cached copy.

    The body goes to a temporary file in the cache folder that is renamed into place only when it is
    whole (as many bytes as ``Content-Length`` announced) and, with ``sha256``, has that hash; on any
    failure it is removed and :class:`DownloadError` (or :class:`ChecksumError`) names the URL and the
    problem. ``progress`` shows a bar on stderr when it is a terminal. ``timeout`` is in seconds, for
    connecting and for each read.
    """
    from tqdm import tqdm

    from ribsr import __version__

    expected = _check_sha256_arg(sha256)
    dest = cached_path(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": f"ribsr/{__version__}"})
    log.info("downloading %s to %s", url, dest)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as exc:
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"{url}: cannot connect ({reason})") from None
            with response:
                kind = response.headers.get("Content-Type", "")
                if kind.split(";")[0].strip().lower() == "text/html":
                    raise DownloadError(f"{url}: the server sent an HTML page ({kind}), not a checkpoint file")
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                received = 0
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                          file=sys.stderr, disable=None if progress else True, leave=False) as bar:
                    while True:
                        try:
                            chunk = response.read(_CHUNK)
                        except http.client.IncompleteRead as exc:
                            received += len(exc.partial)
                            raise DownloadError(
                                f"{url}: the download was cut short: received {received} bytes"
                                + (f" of {total}" if total is not None else "")
                            ) from None
                        except OSError as exc:
                            raise DownloadError(f"{url}: the download failed after {received} bytes ({exc})") from None
                        if not chunk:
                            break
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            if total is not None and received != total:
                raise DownloadError(f"{url}: the download was cut short: received {received} bytes of {total}")
            out.flush()
            os.fsync(out.fileno())
        _verify(tmp, expected, url)
        os.chmod(tmp, default_file_mode())  # mkstemp creates files with mode 0600
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("saved %s (%d bytes)", dest, received)
    return dest



__all__ = ["ChecksumError", "DownloadError", "cache_dir", "cached_path", "download", "fetch", "file_sha256", "is_url"]
