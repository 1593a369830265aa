"""ribsr's CPU attention kernel against a float64 computation of the same formula, and how it is built."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ribsr.kernels import cpu_attention
from ribsr.kernels.cpu_attention import KernelUnavailable, attention

TOL = 1e-5  # max abs difference from float64 for unit-variance inputs (float32 rounding of N-term sums)

pytestmark = pytest.mark.skipif(not cpu_attention.available(), reason="no C++ compiler to build the kernel")


def _float64(q, k, v, bias=None, factors=None, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = scale * q.double() @ k.double().transpose(-1, -2)
    if bias is not None:
        logits = logits + bias.double()
    if factors is not None:
        logits = logits + factors[0].double() @ factors[1].double().transpose(-1, -2)
    return torch.softmax(logits, -1) @ v.double()


def _qkv(windows, heads, n, d, seed=0):
    """q, k, v as WindowAttention makes them: strided views of one (windows, N, 3, heads, D) tensor."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(windows, n, 3, heads, d, generator=g)
    return qkv.permute(2, 0, 3, 1, 4)  # (3, windows, heads, N, D), channels contiguous


# (windows, heads, N, D, rank): N a multiple of 16 and not, head widths of the presets (8, 16, 30, 32) and the
# kernel's limits (1, 64)
SHAPES = [(4, 3, 256, 16, 24), (3, 2, 100, 30, 8), (2, 1, 7, 64, 0), (5, 3, 64, 8, 16), (1, 2, 33, 17, 5),
          (2, 6, 144, 32, 34), (3, 1, 16, 1, 3), (1, 1, 1, 4, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("term", ["bias", "factors", "none"])
def test_matches_float64(shape, term):
    windows, heads, n, d, rank = shape
    q, k, v = _qkv(windows, heads, n, d)
    g = torch.Generator().manual_seed(1)
    bias = torch.randn(heads, n, n, generator=g) * 2 if term == "bias" else None
    factors = None
    if term == "factors" and rank:
        factors = tuple(torch.randn(heads, n, rank, generator=g) for _ in range(2))
    out = attention(q, k, v, bias=bias, factors=factors)
    assert out.shape == q.shape and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), _float64(q, k, v, bias, factors), atol=TOL, rtol=0)


def test_agrees_with_pytorch_sdpa_at_window_64():
    q, k, v = _qkv(2, 3, 4096, 16)
    bias = torch.randn(3, 4096, 4096, generator=torch.Generator().manual_seed(2))
    ours = attention(q, k, v, bias=bias)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
    assert (ours - theirs).abs().max() <= TOL


def test_bias_and_factors_together_and_a_scale():
    q, k, v = _qkv(2, 2, 80, 12)
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(2, 80, 80, generator=g)
    factors = (torch.randn(2, 80, 6, generator=g), torch.randn(2, 80, 6, generator=g))
    out = attention(q, k, v, bias=bias, factors=factors, scale=0.7)
    torch.testing.assert_close(out.double(), _float64(q, k, v, bias, factors, scale=0.7), atol=TOL, rtol=0)


def test_shared_bias_and_noncontiguous_inputs():
    q, k, v = _qkv(3, 2, 64, 16)
    bias = torch.randn(64, 64).expand(2, 64, 64)  # head stride 0
    q_t = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # channel stride != 1: copied first
    out = attention(q_t, k, v, bias=bias)
    torch.testing.assert_close(out.double(), _float64(q, k, v, bias), atol=TOL, rtol=0)


def test_threads_do_not_change_the_result():
    q, k, v = _qkv(3, 3, 200, 16)
    bias = torch.randn(3, 200, 200)
    one = attention(q, k, v, bias=bias, threads=1)
    for threads in (2, 3, 64):  # 64: more threads than work items
        assert torch.equal(attention(q, k, v, bias=bias, threads=threads), one)


def test_nan_propagates_and_large_logits_stay_finite():
    q, k, v = _qkv(1, 1, 32, 8)
    q = q.clone()
    q[0, 0, 5, 0] = float("nan")
    out = attention(q, k, v)
    assert torch.isnan(out[0, 0, 5]).all() and torch.isfinite(out[0, 0, :5]).all()
    bias = torch.zeros(1, 32, 32)
    bias[0, :, 3] = 1e4  # softmax picks key 3 only: exp must not overflow
    torch.testing.assert_close(attention(*_qkv(1, 1, 32, 8), bias=bias)[0, 0],
                               _qkv(1, 1, 32, 8)[2][0, 0, 3].expand(32, 8), atol=1e-6, rtol=0)


def test_empty_inputs():
    q = torch.randn(0, 3, 64, 16)
    assert attention(q, q, q).shape == (0, 3, 64, 16)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda q, k, v, b: (q.double(), k, v, b), r"q must be a float32 CPU tensor, got torch.float64"),
        (lambda q, k, v, b: (q, k[:, :, :10], v, b), r"k must have shape \(2, 3, 16, 8\), got \(2, 3, 10, 8\)"),
        (lambda q, k, v, b: (q, k, v, b[:2]), r"bias must have shape \(3, 16, 16\), got \(2, 16, 16\)"),
        (lambda q, k, v, b: (q[0], k, v, b), r"q must be \(windows, heads, N, D\), got shape \(3, 16, 8\)"),
    ],
)
def test_bad_inputs_are_named(change, message):
    q, k, v = _qkv(2, 3, 16, 8)
    args = change(q, k, v, torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=message):
        attention(*args[:3], bias=args[3])


def test_head_width_limit_and_gradients_are_refused():
    q = torch.randn(1, 1, 16, 65)
    with pytest.raises(ValueError, match="head widths 1..64.*got 65"):
        attention(q, q, q)
    q = torch.randn(1, 1, 16, 8, requires_grad=True)
    with pytest.raises(ValueError, match="q requires a gradient"):
        attention(q, q, q)
    with torch.no_grad():
        attention(q, q, q)


def test_build_is_cached_and_keyed_by_the_source(tmp_path):
    path = cpu_attention.build(folder=tmp_path)
    assert path.parent == tmp_path and path.name.startswith("cpu_attention-") and path.suffix == ".so"
    stamp = path.stat().st_mtime_ns
    assert cpu_attention.build(folder=tmp_path) == path and path.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    assert cpu_attention.build(folder=tmp_path, force=True) == path


def test_a_failing_compiler_is_reported(tmp_path):
    broken = tmp_path / "broken-c++"
    broken.write_text("#!/bin/sh\necho 'this compiler is broken' >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(KernelUnavailable, match=r"failed \(exit 3\):\nthis compiler is broken"):
        cpu_attention.build([str(broken)], folder=tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written kept


def test_no_compiler_and_the_switch(monkeypatch, tmp_path):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    assert cpu_attention.compiler() is None
    with pytest.raises(KernelUnavailable, match="no C.. compiler found .set CXX"):
        cpu_attention.build(folder=tmp_path)
    monkeypatch.setenv("CXX", "ccache  g++")
    assert cpu_attention.compiler() == ["ccache", "g++"]
    monkeypatch.setenv("RIBSR_CPU_KERNEL", "0")
    assert not cpu_attention.available()
    with pytest.raises(KernelUnavailable, match="switched off by RIBSR_CPU_KERNEL=0"):
        cpu_attention.require()


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RIBSR_KERNEL_DIR", str(tmp_path / "k"))
    assert cpu_attention.cache_dir() == tmp_path / "k"
    monkeypatch.delenv("RIBSR_KERNEL_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cpu_attention.cache_dir() == tmp_path / "xdg" / "ribsr" / "kernels"


def test_a_cache_folder_that_cannot_be_made_builds_for_the_process(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder's parent should be")
    monkeypatch.setattr(cpu_attention, "_loaded", None)
    monkeypatch.setattr(cpu_attention, "_failure", None)
    monkeypatch.setenv("RIBSR_KERNEL_DIR", str(blocker / "kernels"))
    assert cpu_attention.available()
    assert cpu_attention._loaded.path.parent != blocker / "kernels"
    q = torch.randn(1, 1, 16, 8)
    torch.testing.assert_close(attention(q, q, q).double(), _float64(q, q, q), atol=TOL, rtol=0)


def test_the_source_ships_with_the_package():
    assert cpu_attention.SOURCE.is_file()
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"kernels/*.cpp"' in pyproject


def test_the_build_names_its_vector_instructions(monkeypatch):
    isa = cpu_attention.vector_isa()
    assert isa in ("avx512", "avx2", "neon", "generic")
    assert cpu_attention.supports(16) == (isa in cpu_attention.FAST_ISAS)
    monkeypatch.setattr(cpu_attention._loaded, "isa", "generic")  # auto leaves such builds alone
    assert not cpu_attention.supports(16)
    q = torch.randn(1, 1, 16, 8)
    torch.testing.assert_close(attention(q, q, q).double(), _float64(q, q, q), atol=TOL, rtol=0)  # still callable


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 builds")
@pytest.mark.parametrize(("march", "isa"), [("x86-64-v3", "avx2"), ("x86-64-v2", "generic")])
def test_the_narrow_vector_builds_compute_the_same(monkeypatch, tmp_path, march, isa):
    """The 8-float, 4-row variant (AVX2, NEON, generic) on this CPU, built for an older x86 level."""
    cxx = cpu_attention.compiler()
    path = tmp_path / f"cpu_attention-{march}.so"
    flags = [f for f in cpu_attention.FLAGS if not f.startswith("-march")]
    subprocess.run([*cxx, *flags, f"-march={march}", str(cpu_attention.SOURCE), "-o", str(path)], check=True)
    monkeypatch.setattr(cpu_attention, "_loaded", cpu_attention._Library(path))
    assert cpu_attention.vector_isa() == isa
    for windows, heads, n, d, rank in SHAPES:
        q, k, v = _qkv(windows, heads, n, d)
        g = torch.Generator().manual_seed(1)
        bias = torch.randn(heads, n, n, generator=g)
        factors = tuple(torch.randn(heads, n, rank, generator=g) for _ in range(2)) if rank else None
        out = attention(q, k, v, bias=bias, factors=factors, threads=2)
        torch.testing.assert_close(out.double(), _float64(q, k, v, bias, factors), atol=TOL, rtol=0)
