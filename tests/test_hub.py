"""Checkpoints by URL (ribsr.hub), against an HTTP server on 127.0.0.1 started by the test; never the internet."""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ribsr.build import build_model
from ribsr.checkpoint import CheckpointError, load_model, read_checkpoint, save_model
from ribsr.cli import main
from ribsr.hub import ChecksumError, DownloadError, cache_dir, cached_path, fetch, is_url, redact

TINY = dict(dim=24, window_sizes=(8, 16), num_heads=(3, 3), ranks=(4, 8), n_blocks=1, rib_hidden_dim=8, rib_n_freqs=2)


class Server:
    """Serves ``files`` (URL path -> bytes); counts the requests per path.

    ``/short/NAME`` announces 100 more bytes than it sends (a truncated body), ``/page/NAME`` is sent as
    text/html, any other path is a 404.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        self.custom: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]] = {}  # path -> handler
        self.headers: list[dict[str, str]] = []  # the request headers, in order
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server name)
                server.requests[self.path] = server.requests[self.path] + 1
                server.headers.append(dict(self.headers))
                if self.path in server.custom:
                    server.custom[self.path](self)
                    return
                kind, _, name = self.path.lstrip("/").partition("/")
                body = server.files.get("/" + name) if kind in ("short", "page") else server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html" if kind == "page" else "application/octet-stream")
                self.send_header("Content-Length", str(len(body) + (100 if kind == "short" else 0)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # daemon threads: never waited for
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """TORCH_HOME pointed at a fresh folder: the cache is tmp_path/torch/hub/checkpoints."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A small SST saved as our .safetensors (carrying its config)."""
    model = build_model(dict(TINY), scale=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return save_model(model, tmp_path / "local" / "sst_tiny_x2.safetensors")


def _cache_files(torch_home: Path) -> list[str]:
    folder = torch_home / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_good_file_loads_as_the_local_file_and_is_downloaded_once(server, torch_home, checkpoint):
    server.files["/models/sst_tiny_x2.safetensors"] = checkpoint.read_bytes()
    url = server.url("/models/sst_tiny_x2.safetensors")

    model = load_model(url, sha256=_sha256(checkpoint), progress=False)
    local = load_model(checkpoint)
    assert model.config == local.config and not model.training
    state, ref = model.state_dict(), local.state_dict()
    assert list(state) == list(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert torch.equal(model(x), local(x))  # same weights, same code: bit for bit

    cached = torch_home / "hub" / "checkpoints" / "sst_tiny_x2.safetensors"
    assert cache_dir() == cached.parent and cached_path(url) == cached
    assert cached.read_bytes() == checkpoint.read_bytes()
    assert _cache_files(torch_home) == ["sst_tiny_x2.safetensors"]  # no temporary file left beside it
    assert server.requests == {"/models/sst_tiny_x2.safetensors": 1}

    load_model(url, progress=False)  # offline afterwards: no second request, with or without the hash
    load_model(url, sha256=_sha256(checkpoint), progress=False)
    assert server.requests == {"/models/sst_tiny_x2.safetensors": 1}


def test_pth_by_url_with_a_config(server, torch_home, checkpoint, tmp_path):
    """The paper's format (params_ema, no config) by URL: the cached name keeps .pth, so torch.load reads it."""
    local = load_model(checkpoint)
    pth = tmp_path / "SST_tiny_x2.pth"
    torch.save({"params_ema": local.state_dict()}, pth)
    server.files["/SST_tiny_x2.pth"] = pth.read_bytes()
    model = load_model(server.url("/SST_tiny_x2.pth"), config=local.config, progress=False)
    assert all(torch.equal(v, local.state_dict()[k]) for k, v in model.state_dict().items())
    assert _cache_files(torch_home) == ["SST_tiny_x2.pth"]


def test_wrong_hash_is_an_error_and_leaves_nothing(server, torch_home, checkpoint):
    server.files["/sst_tiny_x2.safetensors"] = checkpoint.read_bytes()
    url = server.url("/sst_tiny_x2.safetensors")
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        load_model(url, sha256=wrong, progress=False)
    message = str(info.value)
    assert url in message and f"expected {wrong}" in message and f"got {_sha256(checkpoint)}" in message
    assert _cache_files(torch_home) == []


def test_truncated_body_is_an_error_and_leaves_nothing(server, torch_home, checkpoint):
    body = checkpoint.read_bytes()
    server.files["/sst_tiny_x2.safetensors"] = body
    url = server.url("/short/sst_tiny_x2.safetensors")
    with pytest.raises(DownloadError) as info:
        load_model(url, progress=False)
    assert url in str(info.value) and f"received {len(body)} bytes of {len(body) + 100}" in str(info.value)
    assert _cache_files(torch_home) == []


def test_an_interrupted_download_leaves_the_cached_copy(server, torch_home, checkpoint):
    from ribsr.hub import download

    body = checkpoint.read_bytes()
    server.files["/sst_tiny_x2.safetensors"] = body
    cached = cached_path(server.url("/short/sst_tiny_x2.safetensors"))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"the cached copy")
    with pytest.raises(DownloadError, match="cut short"):
        download(server.url("/short/sst_tiny_x2.safetensors"), progress=False)  # the body ends 100 bytes early
    assert cached.read_bytes() == b"the cached copy" and _cache_files(torch_home) == [cached.name]


def test_404_is_an_error_naming_the_status(server, torch_home):
    url = server.url("/nothing/here.pth")
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        load_model(url, config="light", progress=False)
    assert url in str(info.value)
    assert _cache_files(torch_home) == []


def test_html_page_is_not_cached(server, torch_home, checkpoint):
    server.files["/sst_tiny_x2.safetensors"] = checkpoint.read_bytes()
    with pytest.raises(DownloadError, match="HTML page"):
        fetch(server.url("/page/sst_tiny_x2.safetensors"), progress=False)
    assert _cache_files(torch_home) == []


def test_cached_copy_with_another_hash_is_refused_without_a_request(server, torch_home, checkpoint):
    server.files["/sst_tiny_x2.safetensors"] = checkpoint.read_bytes()
    url = server.url("/sst_tiny_x2.safetensors")
    fetch(url, progress=False)
    with pytest.raises(ChecksumError, match="cached copy"):
        fetch(url, sha256="f" * 64, progress=False)
    assert server.requests == {"/sst_tiny_x2.safetensors": 1}


def test_local_path_with_sha256_is_checked(checkpoint):
    assert fetch(checkpoint, sha256=_sha256(checkpoint).upper()) == checkpoint
    with pytest.raises(ChecksumError, match=str(checkpoint)):
        read_checkpoint(checkpoint, sha256="a" * 64)


@pytest.mark.parametrize("bad", ["abc", "g" * 64, "0" * 63])
def test_malformed_sha256_is_refused(checkpoint, bad):
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        fetch(checkpoint, sha256=bad)


def test_url_must_name_a_file(torch_home):
    assert is_url("https://example.invalid/x.pth") and is_url("HTTP://h/x.pth")
    assert not is_url("models/x.pth") and not is_url(Path("http://h/x.pth")) and not is_url("file:///x.pth")
    with pytest.raises(ValueError, match="names no file"):
        cached_path("https://example.invalid/models/")


def test_cli_info_and_upscale_take_a_url(server, torch_home, checkpoint, tmp_path, capsys):
    from PIL import Image

    server.files["/sst_tiny_x2.safetensors"] = checkpoint.read_bytes()
    url = server.url("/sst_tiny_x2.safetensors")
    assert main(["info", url, "--sha256", "1" * 64]) == 2
    assert "SHA-256 mismatch" in capsys.readouterr().err and _cache_files(torch_home) == []

    assert main(["-q", "info", url, "--sha256", _sha256(checkpoint)]) == 0
    assert "presets that fit" in capsys.readouterr().out
    image = tmp_path / "in.png"
    Image.new("RGB", (12, 10), (40, 120, 200)).save(image)
    assert main(["-q", "upscale", str(image), "-o", str(tmp_path / "out"), "--model", url, "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "out" / "in_x2.png").size == (24, 20)
    assert server.requests == {"/sst_tiny_x2.safetensors": 2}  # the refused download, then one for info + upscale


def test_cli_convert_takes_a_url_and_records_it(server, torch_home, checkpoint, tmp_path):
    from safetensors import safe_open

    local = load_model(checkpoint)
    pth = tmp_path / "SST_tiny_x2.pth"
    torch.save({"params_ema": local.state_dict()}, pth)
    server.files["/SST_tiny_x2.pth"] = pth.read_bytes()
    config = tmp_path / "tiny.json"
    config.write_text(local.config.to_json())
    url, dst = server.url("/SST_tiny_x2.pth"), tmp_path / "out.safetensors"
    assert main(["-q", "convert", url, str(dst), "--config", str(config), "--sha256", _sha256(pth)]) == 0
    with safe_open(str(dst), framework="pt") as f:
        assert f.metadata()["source"] == url
    converted = load_model(dst)
    assert all(torch.equal(v, local.state_dict()[k]) for k, v in converted.state_dict().items())


def test_cli_upscale_takes_an_onnx_url(server, torch_home, checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from PIL import Image

    from ribsr.onnx import export_onnx

    onnx_file = export_onnx(load_model(checkpoint), tmp_path / "tiny_x2.onnx", check=False)
    server.files["/tiny_x2.onnx"] = onnx_file.read_bytes()
    url = server.url("/tiny_x2.onnx")
    image = tmp_path / "in.png"
    Image.new("RGB", (12, 10), (40, 120, 200)).save(image)
    args = ["-q", "upscale", str(image), "-o", str(tmp_path / "out"), "--model", url, "--device", "cpu"]
    assert main([*args, "--sha256", "2" * 64]) == 2 and _cache_files(torch_home) == []
    assert main([*args, "--sha256", _sha256(onnx_file)]) == 0
    assert Image.open(tmp_path / "out" / "in_x2.png").size == (24, 20)
    assert _cache_files(torch_home) == ["tiny_x2.onnx"]


# ---------------------------------------------------------------------- what must never enter the cache
def _send(handler, body: bytes, length: int | None = None, pause: float = 0.0, chunk: int = 0, **headers: str):
    """Answer 200 with ``body`` (``length``: the Content-Length announced), in pieces of ``chunk`` bytes with
    ``pause`` seconds between them; a client that went away ends it."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    for key, value in headers.items():
        handler.send_header(key.replace("_", "-"), value)
    handler.end_headers()
    try:
        step = chunk or len(body) or 1
        for i in range(0, len(body), step):
            handler.wfile.write(body[i:i + step])
            handler.wfile.flush()
            if pause:
                time.sleep(pause)
    except OSError:
        pass



def _basic_auth(body: bytes, credentials: str) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    """A handler that answers ``body`` to requests with HTTP Basic ``credentials`` ("user:password"), else 401."""
    good = "Basic " + base64.b64encode(credentials.encode()).decode()

    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.headers.get("Authorization") != good:
            h.send_response(401)
            h.send_header("WWW-Authenticate", 'Basic realm="models"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        _send(h, body)
    return handle

def test_a_compressed_body_is_refused_and_identity_is_asked_for(server, torch_home, checkpoint):
    import gzip

    body = gzip.compress(checkpoint.read_bytes())
    server.custom["/sst_tiny_x2.safetensors"] = lambda h: _send(h, body, Content_Encoding="gzip")
    with pytest.raises(DownloadError, match="gzip-compressed") as info:
        fetch(server.url("/sst_tiny_x2.safetensors"), progress=False)
    assert "not stored" in str(info.value) and _cache_files(torch_home) == []
    assert server.headers[0]["Accept-Encoding"] == "identity"


def test_a_body_longer_than_its_content_length_is_refused(server, torch_home, checkpoint):
    body = checkpoint.read_bytes()
    server.custom["/sst_tiny_x2.safetensors"] = lambda h: _send(h, body, length=len(body) - 100)
    with pytest.raises(DownloadError, match=f"more than the {len(body) - 100} bytes its Content-Length announced"):
        fetch(server.url("/sst_tiny_x2.safetensors"), progress=False)
    assert _cache_files(torch_home) == []


@pytest.mark.parametrize("name", ["sst_tiny_x2.safetensors", "SST_tiny_x2.pth"])
def test_a_file_that_is_not_a_checkpoint_is_not_stored(server, torch_home, checkpoint, name):
    """Whole by its length, but not readable as a checkpoint (read before the rename into the cache)."""
    server.files[f"/{name}"] = b"\x00" * 4096
    with pytest.raises(DownloadError, match="not a readable checkpoint; not stored"):
        fetch(server.url(f"/{name}"), progress=False)
    assert _cache_files(torch_home) == []


def test_a_bad_cached_entry_says_how_to_clear_it(server, torch_home, checkpoint):
    server.files["/sst_tiny_x2.safetensors"] = checkpoint.read_bytes()
    url = server.url("/sst_tiny_x2.safetensors")
    cached = fetch(url, progress=False)
    cached.write_bytes(cached.read_bytes()[:1000])  # damaged on disk, or stored by an older version
    with pytest.raises(CheckpointError) as info:
        load_model(url, progress=False)
    assert f"it is the cached copy of {url}: delete it to download it again (rm {cached})" in str(info.value)


def test_a_stall_names_the_bytes_received(server, torch_home, checkpoint):
    body = checkpoint.read_bytes()

    def stall(h):
        _send(h, body[:1000], length=len(body))
        time.sleep(2)

    server.custom["/sst_tiny_x2.safetensors"] = stall
    with pytest.raises(DownloadError, match=f"stalled: no data for 0.3 s after 1000 bytes of {len(body)}"):
        fetch(server.url("/sst_tiny_x2.safetensors"), progress=False, timeout=0.3)
    assert _cache_files(torch_home) == []


def test_a_trickle_trips_the_minimum_rate_and_the_deadline(server, torch_home, checkpoint):
    """A byte every 0.02 s never trips the per-read timeout; the rate over each span and the deadline do."""
    body = checkpoint.read_bytes()
    server.custom["/sst_tiny_x2.safetensors"] = lambda h: _send(h, body, pause=0.02, chunk=1)
    url = server.url("/sst_tiny_x2.safetensors")
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"too slow: \d+ bytes/s over the last 0\.[45]"):
        fetch(url, progress=False, timeout=0.4, min_rate=1000)
    with pytest.raises(DownloadError, match="took more than 0.5 s"):
        fetch(url, progress=False, timeout=0.4, deadline=0.5, min_rate=0)
    assert time.monotonic() - start < 5 and _cache_files(torch_home) == []


def test_a_password_in_the_url_is_never_shown_and_is_used(server, torch_home, checkpoint):
    server.custom["/private/sst_tiny_x2.safetensors"] = _basic_auth(checkpoint.read_bytes(), "me:s3cret")
    port = server.httpd.server_address[1]
    wrong = f"http://me:wrong@127.0.0.1:{port}/private/sst_tiny_x2.safetensors"
    with pytest.raises(DownloadError) as info:
        fetch(wrong, progress=False)
    assert "HTTP 401" in str(info.value) and "wrong" not in str(info.value) and "me:***@" in str(info.value)
    assert fetch(f"http://me:s3cret@127.0.0.1:{port}/private/sst_tiny_x2.safetensors", progress=False).is_file()
    assert redact("https://u:p@h:1/x.pth?q") == "https://u:***@h:1/x.pth?q" and redact("https://h/x") == "https://h/x"


def test_sigterm_removes_the_part_file(server, torch_home, checkpoint, tmp_path):
    """A download told to stop (SIGTERM) removes its .part file; those a SIGKILL left (their process gone) are
    removed by the next download of the same file."""
    body = checkpoint.read_bytes()
    started = threading.Event()

    def slow(h):
        _send(h, body[:1000], length=len(body))
        started.set()
        time.sleep(10)

    server.custom["/sst_tiny_x2.safetensors"] = slow
    url = server.url("/sst_tiny_x2.safetensors")
    folder = torch_home / "hub" / "checkpoints"
    code = f"from ribsr.hub import download; download({url!r}, progress=False)"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TORCH_HOME": str(torch_home)},
                            stderr=subprocess.PIPE)
    try:
        assert started.wait(30)
        deadline = time.monotonic() + 10
        while not [n for n in _cache_files(torch_home) if n.endswith(".part")] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [n for n in _cache_files(torch_home) if n.endswith(".part")]
        time.sleep(0.2)  # waiting in the read loop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert _cache_files(torch_home) == []

    dead = subprocess.Popen(["true"])  # noqa: S607
    dead.wait()
    killed = folder / f".sst_tiny_x2.safetensors.{dead.pid}-0123abcd.part"  # what a SIGKILLed download leaves
    other = folder / f".other.pth.{dead.pid}-0123abcd.part"  # another file's: not this download's concern
    mine = folder / f".sst_tiny_x2.safetensors.{os.getpid()}-0123abcd.part"  # a running process's
    for path in (killed, other, mine):
        path.write_bytes(b"half")
    server.custom.pop("/sst_tiny_x2.safetensors")
    server.files["/sst_tiny_x2.safetensors"] = body
    fetch(url, progress=False)
    assert _cache_files(torch_home) == sorted([other.name, mine.name, "sst_tiny_x2.safetensors"])


def test_a_password_in_the_url_is_in_no_message_log_or_file_of_the_commands(server, torch_home, checkpoint, tmp_path,
                                                                               capsys, caplog):
    """info printed the URL with its password, and convert recorded it in the file's metadata."""
    import logging

    from PIL import Image
    from safetensors import safe_open

    def private(body: bytes) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
        return _basic_auth(body, "me:s3cret")

    model = load_model(checkpoint)
    pth = tmp_path / "SST_tiny_x2.pth"
    torch.save({"params_ema": model.state_dict()}, pth)
    config = tmp_path / "tiny.json"
    config.write_text(model.config.to_json())
    server.custom["/p/sst_tiny_x2.safetensors"] = private(checkpoint.read_bytes())
    server.custom["/p/SST_tiny_x2.pth"] = private(pth.read_bytes())
    base = f"http://me:s3cret@127.0.0.1:{server.httpd.server_address[1]}/p/"
    Image.new("RGB", (12, 10)).save(tmp_path / "in.png")
    runs = [
        (["-v", "info", base + "sst_tiny_x2.safetensors"], 0),
        (["-v", "convert", base + "SST_tiny_x2.pth", str(tmp_path / "c.safetensors"), "--config", str(config)], 0),
        (["-v", "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model",
          base + "sst_tiny_x2.safetensors", "--device", "cpu"], 0),
        (["info", base + "sst_tiny_x2.safetensors", "--sha256", "1" * 64], 2),
        (["info", base + "missing.pth"], 2),
        (["info", base.replace("http", "ftp") + "x.pth"], 2),
        (["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o2"), "--model", base + "m.onnx",
          "--config", "light"], 2),
        (["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o3"), "--model", base + "m.pth",
          "--denoise", "0.5"], 2),
    ]
    with caplog.at_level(logging.DEBUG):
        for argv, code in runs:
            assert main(argv) == code, argv
            captured = capsys.readouterr()
            shown = captured.out + captured.err + caplog.text
            assert "127.0.0.1" in shown and "s3cret" not in shown, (argv, shown)
            caplog.clear()
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as f:
        assert f.metadata()["source"] == base.replace("me:s3cret@", "") + "SST_tiny_x2.pth"


def test_a_response_head_sent_a_byte_at_a_time_is_given_up_in_bounded_time(server, torch_home, checkpoint):
    """The status line and headers trickled (a byte every 0.05 s, never a read timeout): the deadline and the
    minimum rate applied to the body only, so this never ended."""
    body = checkpoint.read_bytes()

    def trickle(h: http.server.BaseHTTPRequestHandler) -> None:
        head = (f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n" + "X-Slow: " + "a" * 10_000 + "\r\n\r\n").encode()
        try:
            for i in range(len(head)):
                h.wfile.write(head[i:i + 1])
                h.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    server.custom["/sst_tiny_x2.safetensors"] = trickle
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"no answer \(status line and headers\) within 0\.6 s of the request"):
        fetch(server.url("/sst_tiny_x2.safetensors"), progress=False, timeout=0.3)
    assert time.monotonic() - start < 3 and _cache_files(torch_home) == []
    server.custom.pop("/sst_tiny_x2.safetensors")
    server.files["/sst_tiny_x2.safetensors"] = body
    assert fetch(server.url("/sst_tiny_x2.safetensors"), progress=False, timeout=0.3).is_file()  # a prompt one


def test_a_whole_body_on_a_connection_left_open_is_taken(server, torch_home, checkpoint):
    """The body is read to the end of the connection (so that one longer than announced shows): a server that
    keeps it open after the announced bytes stalled the download, which was then refused."""
    body = checkpoint.read_bytes()

    def keep_open(h: http.server.BaseHTTPRequestHandler) -> None:
        _send(h, body)
        time.sleep(1.5)

    server.custom["/sst_tiny_x2.safetensors"] = keep_open
    assert fetch(server.url("/sst_tiny_x2.safetensors"), progress=False, timeout=0.3).read_bytes() == body


def test_a_bad_cached_onnx_file_says_how_to_clear_it(server, torch_home, checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from PIL import Image

    from ribsr.onnx import export_onnx

    onnx_file = export_onnx(load_model(checkpoint), tmp_path / "tiny_x2.onnx", check=False)
    server.files["/tiny_x2.onnx"] = onnx_file.read_bytes()
    url = server.url("/tiny_x2.onnx")
    cached = fetch(url, progress=False)
    cached.write_bytes(cached.read_bytes()[:1000])  # damaged on disk
    Image.new("RGB", (12, 10)).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model", url]) == 2
    err = capsys.readouterr().err
    assert "not a model onnxruntime can load" in err
    assert f"it is the cached copy of {url}: delete it to download it again (rm {cached})" in err
