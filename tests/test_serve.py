"""``ribsr serve`` over HTTP on a free loopback port: the page and its files (nothing from the internet), an upload
upscaled and compared (bicubic or a second model), the downloads' pixels, the queue (one job at a time), and the
refusals with their messages (too large, not an image, bad model or option, foreign Host/Origin)."""

from __future__ import annotations

import http.client
import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ribsr.cli import build_parser
from ribsr.compare import Side
from ribsr.imageio import from_array, to_array
from ribsr.imresize import imresize
from ribsr.serve import JobOptions, RequestError, Service, make_server
from ribsr.web import STATIC_FILES, asset_text

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server():
    srv = make_server("127.0.0.1", 0, max_output_pixels=100_000, device="cpu", keep_jobs=4, max_queued=6)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def image(h: int = 20, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def submit(server, data: bytes, **params: str) -> tuple[int, dict]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    status, _, body = request(server, "POST", f"/api/jobs?{query}", data)
    return status, json.loads(body)


def finished(server, job_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = request(server, "GET", f"/api/jobs/{job_id}")
        assert status == 200
        job = json.loads(body)
        if job["state"] in ("done", "error") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_page_and_files_are_served_with_nothing_from_outside(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert not re.search(r'(?:src|href)="(?!/static/|#)', page)  # no page asset from anywhere else
    for src in re.findall(r'(?:src|href)="(/[^"]*)"', page):
        assert src.startswith("/static/"), src  # the page loads its own files only
        name = src.removeprefix("/static/")
        status, headers, body = request(server, "GET", src)
        assert status == 200 and headers["Content-Type"] == STATIC_FILES[name]
        assert body.decode() == asset_text(name)
    for name in STATIC_FILES:
        assert not re.search(r"https?://", asset_text(name)), name
    status, _, body = request(server, "GET", "/static/../serve.py")
    assert status == 404 and b"nothing at" in body


def test_info_lists_the_bundled_models(server):
    from ribsr.assets import bundled_scales

    status, _, body = request(server, "GET", "/api/info")
    info = json.loads(body)
    models = {m["id"]: m for m in info["models"]}
    assert models["default"]["scales"] == bundled_scales("default")
    assert models["bicubic"]["compare_only"]
    if bundled_scales("real"):
        assert models["real"]["denoise"] and models["real"]["scales"] == bundled_scales("real")
    assert models["escrib"]["scales"] == [2] and not models["escrib"]["denoise"]
    assert "ESC-RIB" in models["escrib"]["label"]
    assert info["max_output_pixels"] == 100_000 and info["checkpoints"]


def test_the_bundled_escrib_model_against_the_default(server):
    lr = image(seed=2)
    status, job = submit(server, png(lr), name="e.png", model="escrib", compare="default", tile="0")
    assert status == 202, job
    job = finished(server, job["id"])
    assert job["state"] == "done", job
    assert job["labels"] == {"before": "default x2", "after": "escrib x2"}
    status, _, body = request(server, "GET", job["result"])
    expected = to_array(Side.open("escrib", scale=2, tile=0, device="cpu").upscale(from_array(lr)), np.uint8, 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), expected)


def test_upload_upscaled_and_compared_with_bicubic(server):
    lr = image()
    status, job = submit(server, png(lr), name="photo.png", model="default", scale="2", tile="0")
    assert status == 202 and job["state"] in ("queued", "running") and job["size"] == [24, 20]
    job = finished(server, job["id"])
    assert job["state"] == "done", job
    assert job["labels"] == {"before": "bicubic x2", "after": "default x2"}
    assert job["output_size"] == [48, 40] and job["download_name"] == "photo_x2.png" and job["progress"] == 1
    status, headers, body = request(server, "GET", job["result"])
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == 'attachment; filename="photo_x2.png"'
    side = Side.open("default", scale=2, tile=0, device="cpu")
    expected = to_array(side.upscale(from_array(lr)), np.uint8, 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), expected)
    status, _, body = request(server, "GET", job["before"])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), imresize(lr, 2.0))


def test_model_against_model_with_a_checkpoint_and_tiles(server, tiny_checkpoint):
    status, job = submit(server, png(image(seed=1)), name="a.png", model=str(tiny_checkpoint), compare="default",
                         tile="16", overlap="4")
    assert status == 202, job
    job = finished(server, job["id"])
    assert job["state"] == "done", job
    assert job["labels"] == {"before": "default x2", "after": "tiny_x2.safetensors (x2)"}


def test_refusals_say_why(server, tmp_path):
    big = png(image(200, 300))  # 300x200 x2 = 240,000 output pixels > 100,000
    status, body = submit(server, big, name="big.png", model="default", scale="2")
    assert status == 413
    assert body["error"].startswith("big.png: 300x200 upscaled x2 would be 600x400")
    assert "more than --max-output-pixels 100000" in body["error"]
    status, body = submit(server, b"hello, not an image", name="notes.txt")
    assert status == 400 and body["error"] == "notes.txt: not a recognised image file"
    status, body = submit(server, b"", name="empty.png")
    assert status == 400 and "empty upload" in body["error"]
    cases = [
        ({"model": str(tmp_path / "missing.pth")}, f"model {tmp_path / 'missing.pth'}: checkpoint not found"),
        ({"model": "default", "scale": "5"}, "no bundled default model for x5"),
        ({"model": "bicubic"}, "model bicubic: bicubic is what a model is compared with"),
        ({"model": "default", "denoise": "0.5"}, "denoise applies to the real model, not to default"),
        ({"model": "real", "denoise": "1.5"}, "denoise must be from 0 to 1, got '1.5'"),
        ({"model": "default", "tile": "big"}, "tile must be a whole number, got 'big'"),
        ({"model": "default", "colour": "red"}, "unknown option(s) colour"),
        ({"model": "https://example.invalid/m.pth"}, "does not download checkpoints"),
        ({"model": "default", "scale": "2", "compare": "real"}, "compare real: no bundled real model for x2"),
        ({"model": "escrib", "scale": "4"}, "model escrib: no bundled escrib model for x4 (bundled: x2)"),
        ({"model": "escrib", "denoise": "0.5"}, "denoise applies to the real model, not to escrib"),
    ]
    for params, message in cases:
        status, body = submit(server, png(image(8, 8)), name="x.png", **params)
        assert status == 400, (params, body)
        assert message in body["error"], (params, body)
    status, _, body = request(server, "GET", "/api/jobs/nope")
    assert status == 404 and b"no job 'nope'" in body


def test_a_model_that_fails_to_load_is_the_job_s_error(server, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"garbage")
    status, job = submit(server, png(image(8, 8)), name="x.png", model=str(bad))
    assert status == 202
    job = finished(server, job["id"])
    assert job["state"] == "error" and "broken.safetensors" in job["error"]
    status, _, body = request(server, "GET", f"/api/jobs/{job['id']}/result.png")
    assert status == 409 and b"is error" in body


def test_foreign_host_and_origin_are_refused(server):
    status, _, body = request(server, "GET", "/api/info", headers={"Host": "evil.example:80"})
    assert status == 403 and b"evil.example" in body
    status, _, body = request(server, "POST", "/api/jobs?name=x.png", png(image(8, 8)),
                              headers={"Origin": "http://evil.example"})
    assert status == 403 and b"Origin 'http://evil.example' refused" in body
    port = server.server_address[1]
    status, _, _ = request(server, "GET", "/api/info", headers={"Host": f"localhost:{port}",
                                                                 "Origin": f"http://localhost:{port}"})
    assert status == 200


def test_jobs_queue_and_run_one_at_a_time(server):
    service = server.service
    ids = []
    for seed in range(4):
        status, job = submit(server, png(image(16, 16, seed)), name=f"q{seed}.png", model="default", scale="3")
        assert status == 202
        ids.append(job["id"])
    jobs = [finished(server, i) for i in ids]
    assert [j["state"] for j in jobs] == ["done"] * 4
    assert service.most_running == 1
    assert len(service._jobs) <= service.keep_jobs  # the oldest finished jobs are removed


def test_full_queue_is_refused(tiny_checkpoint):
    service = Service(max_queued=1, device="cpu", max_output_pixels=None)
    gate = threading.Event()
    try:
        original = service._run

        def slow(job):
            gate.wait(10)
            original(job)

        service._run = slow
        data = png(image(8, 8))

        def write(path: Path) -> None:
            path.write_bytes(data)

        first = service.submit("a.png", JobOptions(), write)
        deadline = time.monotonic() + 5
        while service.job(first.id).state != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        second = service.submit("b.png", JobOptions(), write)
        assert service.status(second.id)["position"] == 0
        with pytest.raises(RequestError, match="1 jobs are waiting") as exc:
            service.submit("c.png", JobOptions(), write)
        assert exc.value.status == 503
        gate.set()
        assert service.wait(second.id).state == "done"
    finally:
        gate.set()
        service.close()


def test_cli_arguments():
    args = build_parser().parse_args(["serve", "--port", "0", "--max-output-pixels", "1000", "--no-checkpoints"])
    assert (args.host, args.port, args.max_output_pixels, args.no_checkpoints) == ("127.0.0.1", 0, 1000, True)
    with pytest.raises(ValueError, match="port must be from 0 to 65535, got 70000"):
        make_server("127.0.0.1", 70000)
    with pytest.raises(ValueError, match="max_queued must be a whole number >= 1, got 0"):
        Service(max_queued=0)
