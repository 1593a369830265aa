"""``ribsr bench`` and scripts/gpu_check.py on tiny sizes: they run, measure, and write valid JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from ribsr.bench import METHODS, AttentionCase, Timing, bench_attention, estimate_bytes
from ribsr.cli import main


def test_bench_attention_cli_writes_json_for_every_method_and_mode(tmp_path, capsys):
    out = tmp_path / "attention.json"
    threads = torch.get_num_threads()
    rc = main(["bench", "attention", "--windows", "8", "--image", "16", "--heads", "2", "--head-dim", "8",
               "--rank", "4", "--backward", "--repeats", "1", "--warmup", "0", "--no-memory", "--threads", "1",
               "--json", str(out)])
    assert rc == 0 and torch.get_num_threads() == threads  # the thread count is restored
    data = json.loads(out.read_text())
    assert {"device", "torch", "results"} <= set(data) and data["device"].startswith("cpu")
    rows = data["results"]
    expected = {(m, 8, mode) for m in METHODS for mode in ("forward", "backward")
                if mode == "forward" or not METHODS[m].forward_only}
    assert ("RIB kernel", 8, "backward") not in expected  # the CPU kernel computes no gradients
    assert len(rows) == len(expected) and {(r["method"], r["window"], r["mode"]) for r in rows} == expected
    for r in rows:
        assert {"method", "window", "mode", "ms", "cpu_ms", "peak_mb", "held_mb"} <= set(r)
        assert r["ms"] > 0 and r["skipped"] is None
    paths = {r["method"]: r["path"] for r in rows if r["mode"] == "forward"}
    assert paths["RPB naive"] == "naive" and paths["RIB concat"] == "concat" and paths["NoPE SDPA"] == "bias"
    assert paths["RIB kernel"] == "cpu_kernel" and paths["RoPE"] == "cpu_kernel"  # auto, inference
    assert "| RPB mask | 8 | backward | bias |" in capsys.readouterr().out


def test_forward_only_methods_have_no_backward_case():
    with pytest.raises(ValueError, match="'RIB kernel' computes no gradients"):
        AttentionCase("RIB kernel", window=8, mode="backward")


def test_peak_memory_is_measured_in_a_subprocess():
    cases = [AttentionCase(m, window=16, image=64) for m in ("RPB naive", "RIB concat")]
    naive, concat = bench_attention(cases, Timing(repeats=1, warmup=0, threads=1))
    # naive holds 16 windows x 3 heads x 256^2 float32 scores (12 MiB) and their softmax
    assert naive["peak_mb"] > 12 and naive["peak_mb"] > 3 * concat["peak_mb"]


@pytest.mark.parametrize(("method", "cache", "builds"), [
    ("RPB naive", True, 3),  # the RPB networks gather their bias on every forward
    ("RPB mask", True, 1),  # built by the warm-up call, then kept
    ("RPB mask", False, 3),
])
def test_which_methods_rebuild_the_positional_term_per_call(monkeypatch, method, cache, builds):
    from ribsr.bench import _attention_callable
    from ribsr.model.positional import RPB

    calls = []
    original = RPB.compute_bias
    monkeypatch.setattr(RPB, "compute_bias", lambda self, ws, device: calls.append(ws) or original(self, ws, device))
    run, _ = _attention_callable(AttentionCase(method, window=8, image=16, heads=2, head_dim=8, cache=cache))
    for _ in range(3):
        run()
    assert calls == [8] * builds


def test_cases_over_the_memory_limit_are_skipped():
    case = AttentionCase("RPB naive", window=64, image=128)
    assert estimate_bytes(case) > 3 * 4 * 3 * 4096**2  # scores, softmax, sum
    (row,) = bench_attention([case], Timing(memory=False), max_bytes=2**30)
    assert row["ms"] is None and "GiB > limit 1.0 GiB" in row["skipped"]
    with pytest.raises(ValueError, match="'RPB fast'"):
        AttentionCase("RPB fast", window=8)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_plot(tmp_path):
    from ribsr.bench import plot_attention

    rows = [{"method": m, "window": w, "mode": "forward", "ms": w * 1.5, "peak_mb": w / 2}
            for m in ("RIB concat", "RPB naive") for w in (8, 16)]
    path = plot_attention(rows, tmp_path / "plot.png", title="test")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def small_presets(monkeypatch):
    """Networks built for ``bench model`` are their preset cut down to one block of windows 4 and 8 (the
    same code, a fraction of the time)."""
    import ribsr.build

    full_build = ribsr.build.build_model

    def build_model(*args, **kwargs):
        return full_build(*args, n_blocks=1, window_sizes=[4, 8], num_heads=[3, 3], ranks=[4, 4], **kwargs)

    monkeypatch.setattr(ribsr.build, "build_model", build_model)


def test_bench_model_cli_compares_attention_types(tmp_path, capsys, small_presets):
    out = tmp_path / "model.json"
    rc = main(["bench", "model", "light", "--lr-size", "8x12", "--attn-type", "RIB", "RPB", "--repeats", "1",
               "--warmup", "0", "--no-memory", "--threads", "1", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["attn_type"] for r in rows] == ["RIB", "RPB"]
    assert all(r["ms"] > 0 and r["input"] == "1x3x8x12" and r["mode"] == "inference" for r in rows)
    assert main(["bench", "model", "light", "--lr-size", "8by8"]) == 2
    assert "'8by8'" in capsys.readouterr().err
    assert main(["bench", "model", "light", "--bias-cache-gb", "-1"]) == 2
    assert "--bias-cache-gb must be >= 0, got -1.0" in capsys.readouterr().err


def test_timing_settings_are_checked():
    with pytest.raises(ValueError, match="repeats=0"):
        Timing(repeats=0)
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        Timing(threads=0)


def test_bench_model_without_kept_biases_rebuilds_them_every_call(monkeypatch, small_presets):
    from ribsr.bench import _model_callable
    from ribsr.build import build_model
    from ribsr.model.positional import RPB

    calls = []
    original = RPB.compute_bias
    monkeypatch.setattr(RPB, "compute_bias", lambda self, ws, device: calls.append(ws) or original(self, ws, device))
    layers = sum(isinstance(m, RPB) for m in build_model("light", scale=2, attn_type="RPB").modules())
    for budget, expected in ((None, 0), (0, layers)):  # default: every bias kept; 0: all rebuilt
        run = _model_callable("light", 2, "RPB", (8, 8), attention="naive", bias_cache_bytes=budget)
        run()
        calls.clear()
        run()
        assert len(calls) == expected


def test_gpu_check_dry_run_lists_the_steps():
    out = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert "tests (at most" in out and "-m cuda" in out
    assert "--windows 96 64 48 32 16" in out and "--backward" in out and "bfloat16" in out
    assert "large+ --scale 2 --attn-type RIB RPB" in out and "360x640" in out


def test_gpu_check_quick_on_cpu_writes_its_summary(tmp_path):
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--quick"], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "tests: ok" in summary and "attention: ok" in summary and "model: ok" in summary
    assert "window 8 backward: RPB naive" in summary
    rows = json.loads((tmp_path / "attention_cuda.json").read_text())["results"]
    assert {r["window"] for r in rows} == {4, 8}
