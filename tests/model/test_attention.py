"""The attention paths agree with each other and with a float64 per-window computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ribsr.model.attention import (
    WindowAttention,
    attend_bias,
    attend_concat,
    attend_concat_bf16,
    attend_cpu_kernel,
    attend_naive,
    attend_reference,
    make_backend,
    pad_to_multiple,
    window_partition,
    window_unpartition,
)
from ribsr.model.layers import DWCGate
from ribsr.model.positional import RIB, NoPE, RoPE, fourier_features, window_coordinates

PATHS = {"reference": attend_reference, "naive": attend_naive, "bias": attend_bias, "concat": attend_concat,
         "cpu_kernel": attend_cpu_kernel}


def _rib(heads=3, rank=8, hidden=16, freqs=4):
    rib = RIB(heads, rank, hidden, freqs)
    with torch.no_grad():
        for p in rib.parameters():
            p.normal_(0, 0.5)
    return rib


def _float64_attention(q, k, v, rib, ws):
    """Literal formula from the spec, in float64, one window and head at a time."""
    feats = fourier_features(window_coordinates(ws), rib.n_freqs).double()
    hidden = torch.relu(feats @ rib.to_hidden.double() + rib.hidden_b.double())
    out = torch.empty(q.shape, dtype=torch.float64)
    d, r = q.shape[-1], rib.rank
    for w in range(q.shape[0]):
        for h in range(q.shape[1]):
            q_pos, k_pos = hidden @ rib.to_q[h].double(), hidden @ rib.to_k[h].double()
            logits = q[w, h].double() @ k[w, h].double().T / math.sqrt(d) + q_pos @ k_pos.T / math.sqrt(r)
            out[w, h] = torch.softmax(logits, -1) @ v[w, h].double()
    return out


@pytest.mark.parametrize("ws", [4, 8, 16])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_paths_match_float64_formula(path, ws):
    rib = _rib().eval()
    q, k, v = (torch.randn(2, 3, ws * ws, 16) for _ in range(3))
    with torch.no_grad():
        out = PATHS[path](q, k, v, rib, ws)
    expected = _float64_attention(q, k, v, rib, ws)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)  # float32 vs float64


@pytest.mark.parametrize("ws", [8, 16, 32])
def test_paths_agree_to_1e5(ws):
    rib = _rib(rank=24).eval()
    q, k, v = (torch.randn(4, 3, ws * ws, 16) for _ in range(3))
    with torch.no_grad():
        outs = {name: fn(q, k, v, rib, ws) for name, fn in PATHS.items()}
    for name in ("bias", "concat", "cpu_kernel"):
        assert (outs[name] - outs["reference"]).abs().max() <= 1e-5, name
    assert (outs["naive"] - outs["reference"]).abs().max() <= 1e-6  # the same operations in float32


@pytest.mark.parametrize("ws", [8, 16])
def test_concat_bf16_matches_the_formula_at_bfloat16_precision(ws):
    """The opt-in bfloat16 path: the float64 formula to bfloat16 precision (3 significant digits) for
    O(1) logits, its outputs in the inputs' dtype, and really rounded (not float32 in disguise)."""
    rib = _rib(rank=24).eval()
    q, k, v = (torch.randn(2, 3, ws * ws, 16) for _ in range(3))
    with torch.no_grad():
        out = attend_concat_bf16(q, k, v, rib, ws)
    expected = _float64_attention(q, k, v, rib, ws)
    assert out.dtype == torch.float32 and out.shape == q.shape
    err = (out.double() - expected).abs().max().item()
    assert 1e-5 < err < 3e-2, err
    assert make_backend("concat_bf16") is attend_concat_bf16


def test_naive_keeps_low_precision_inputs_in_their_dtype():
    rib = _rib(rank=24).eval()
    q, k, v = (torch.randn(2, 3, 64, 16) for _ in range(3))
    with torch.no_grad():
        ref = attend_reference(q, k, v, rib, 8)
        out = attend_naive(q.bfloat16(), k.bfloat16(), v.bfloat16(), rib, 8)
    assert out.dtype == torch.bfloat16
    # bfloat16 matmuls (8 mantissa bits) on unit-variance inputs: a few hundredths at most
    assert 0 < (out.float() - ref).abs().max() <= 0.05


def test_auto_uses_bias_below_cap_and_concat_above(monkeypatch):
    monkeypatch.setenv("RIBSR_CPU_KERNEL", "0")  # PyTorch's kernels: where ribsr's cannot be built
    calls = []
    import ribsr.model.attention as attention

    monkeypatch.setattr(attention, "attend_bias", lambda *a: calls.append("bias") or a[0])
    monkeypatch.setattr(attention, "attend_concat", lambda *a: calls.append("concat") or a[0])
    auto = make_backend("auto")
    rib = _rib().eval()
    q = torch.randn(1, 3, 64, 16)
    with torch.no_grad():  # inference (training always takes concat)
        auto(q, q, q, rib, 8)
        auto.max_bias_bytes = 3 * 64 * 64 * 4 - 1
        auto(q, q, q, rib, 8)
    assert calls == ["bias", "concat"]


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="'flash'.*auto"):
        make_backend("flash")


def test_nope_paths_agree():
    q, k, v = (torch.randn(2, 2, 64, 8) for _ in range(3))
    ref = attend_reference(q, k, v, NoPE(), 8)
    for fn in (attend_bias, attend_concat, attend_cpu_kernel):
        torch.testing.assert_close(fn(q, k, v, NoPE(), 8), ref, atol=1e-5, rtol=0)


def test_factors_are_cached_in_eval_and_follow_parameter_updates():
    rib = _rib().eval()
    with torch.no_grad():
        a = rib.factors(8, torch.device("cpu"))
        assert rib.factors(8, torch.device("cpu"))[0] is a[0]  # cached
        rib.to_q.mul_(2.0)  # an in-place update (as an optimizer step) invalidates the cache
        b = rib.factors(8, torch.device("cpu"))
    torch.testing.assert_close(b[0], 2 * a[0])


def test_training_mode_recomputes_and_propagates_gradients():
    rib = _rib().train()
    q, k, v = (torch.randn(1, 3, 16, 8, requires_grad=True) for _ in range(3))
    for fn in (attend_bias, attend_concat, attend_reference):
        rib.zero_grad()
        fn(q, k, v, rib, 4).square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rib.parameters()), fn.__name__
    cpu = torch.device("cpu")
    first = rib.factors(4, cpu)[0]
    assert first.requires_grad and rib.factors(4, cpu)[0] is not first  # nothing is cached while training


def test_coordinates_follow_the_spec():
    c = window_coordinates(4)
    # token n = r*ws + c; x' = 2(c+0.5)/ws - 1 (column), y' = 2(r+0.5)/ws - 1 (row)
    assert c[1].tolist() == [-0.25, -0.75] and c[4].tolist() == [-0.75, -0.25]
    f = fourier_features(c, 2)
    assert f.shape == (16, 2 + 4 * 2)
    torch.testing.assert_close(f[:, 2:4], torch.sin(c))
    torch.testing.assert_close(f[:, 8:10], torch.cos(2 * c))


@pytest.mark.parametrize("h,w", [(20, 28), (17, 9), (24, 24)])
def test_padding_equals_reflect_when_possible(h, w):
    x = torch.randn(1, 2, h, w)
    ws = 8
    expected = F.pad(x, (0, (-w) % ws, 0, (-h) % ws), mode="reflect") if (h % ws or w % ws) else x
    torch.testing.assert_close(pad_to_multiple(x, ws), expected, atol=0, rtol=0)


def test_padding_beyond_the_side_continues_the_reflection():
    x = torch.arange(3.0).reshape(1, 1, 1, 3)  # a 1x3 image, window 8
    y = pad_to_multiple(x, 8)
    assert y.shape == (1, 1, 8, 8)
    assert y[0, 0, 0].tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    assert (y == y[:, :, :1]).all()  # a single row is repeated


@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize("size", [(8, 8), (13, 21), (3, 17)])
def test_window_partition_holds_the_padded_rolled_blocks_and_unpartition_inverts_it(size, shift):
    ws = 8
    x = torch.randn(2, 5, *size)
    windows, (hp, wp) = window_partition(x, ws, shift)
    assert (hp % ws, wp % ws) == (0, 0) and hp - ws < size[0] <= hp and wp - ws < size[1] <= wp
    padded = torch.roll(pad_to_multiple(x, ws), shifts=(-shift, -shift), dims=(2, 3))  # (2, 5, Hp, Wp)
    nh, nw = hp // ws, wp // ws
    assert windows.shape == (2 * nh * nw, ws * ws, 5)
    b, i, j = 1, nh - 1, nw - 1  # the last window: index (b*nh + i)*nw + j, token n at (n // ws, n % ws)
    block = padded[b, :, i * ws : (i + 1) * ws, j * ws : (j + 1) * ws]  # (C, ws, ws)
    torch.testing.assert_close(windows[(b * nh + i) * nw + j], block.flatten(1).T, atol=0, rtol=0)
    back = window_unpartition(windows, ws, (hp, wp), size, shift)
    torch.testing.assert_close(back, x, atol=0, rtol=0)
    # trailing dimensions are merged into the channels: (windows, N, heads, D) -> C = heads * D
    split = window_unpartition(windows.unflatten(-1, (5, 1)), ws, (hp, wp), size, shift)
    torch.testing.assert_close(split, x, atol=0, rtol=0)


def test_window_attention_rotates_once_and_attends_within_the_window():
    """One 8x8 window (no padding) with RoPE and no gate, against the formula written out in float64."""
    torch.manual_seed(4)
    dim, heads, ws = 16, 2, 8
    d, n = dim // heads, ws * ws
    rope = RoPE(heads, d)
    with torch.no_grad():
        rope.rope_freqs.normal_(0, 1.0)
    layer = WindowAttention(dim, ws, heads, pos=rope, backend=make_backend("reference")).eval()
    x = torch.randn(1, dim, ws, ws)
    with torch.no_grad():
        out = layer(x)
        tokens = layer.to_qkv(x)[0].flatten(1).T.double()  # (N, 3C), token = row * ws + column
        q, k, v = (t.reshape(n, heads, d).transpose(0, 1) for t in tokens.split(dim, dim=1))  # (heads, N, D) each
        col, row = torch.arange(n) % ws, torch.arange(n) // ws
        f = rope.rope_freqs.double()  # (2, heads, D/2)
        angle = col[None, :, None] * f[0][:, None, :] + row[None, :, None] * f[1][:, None, :]  # (heads, N, D/2)

        def rotate(t):  # channel pairs (2i, 2i+1) turned by the angle, once
            re, im = t[..., 0::2], t[..., 1::2]
            cos, sin = angle.cos(), angle.sin()
            return torch.stack([re * cos - im * sin, re * sin + im * cos], -1).flatten(2)

        attn = torch.softmax(rotate(q) @ rotate(k).transpose(1, 2) / math.sqrt(d), -1) @ v  # (heads, N, D)
        merged = attn.transpose(0, 1).reshape(n, dim).T.reshape(1, dim, ws, ws)  # channel = head * D + d
        expected = layer.to_out(merged.float())
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift", [False, True])
def test_window_attention_paths_agree_on_odd_sizes(shift):
    layers = {}
    for name in PATHS:
        torch.manual_seed(1)
        layers[name] = WindowAttention(
            24, 8, 3, pos=_rib(rank=8), gate=DWCGate(24), shift=shift, backend=make_backend(name)
        ).eval()
    x = torch.randn(2, 24, 13, 21)
    with torch.no_grad():
        outs = {n: m(x) for n, m in layers.items()}
    assert outs["reference"].shape == x.shape
    for n in ("bias", "concat"):
        assert (outs[n] - outs["reference"]).abs().max() <= 1e-5


def test_state_dict_uses_released_names():
    m = WindowAttention(24, 8, 3, pos=_rib(), gate=DWCGate(24))
    keys = set(m.state_dict())
    assert {"to_hidden", "hidden_b", "to_q", "to_k", "to_qkv.weight", "gate.0.weight", "gate.1.bias"} <= keys
    assert not any(k.startswith("pos.") for k in keys)
    other = WindowAttention(24, 8, 3, pos=_rib(), gate=DWCGate(24))
    other.load_state_dict(m.state_dict())
    torch.testing.assert_close(other.pos.to_q, m.pos.to_q)


@pytest.mark.parametrize("size", [(12, 12), (16, 16), (40, 24)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_backends_get_unit_stride_heads(size, channels_last):
    # A strided last dimension sends SDPA to its slow math path on the CPU (it happened for images smaller
    # than the window, whose padding comes back from index_select in NCHW layout).
    strides = []

    def spy(q, k, v, pos, ws):
        strides.append((q.stride(-1), k.stride(-1), v.stride(-1)))
        return attend_reference(q, k, v, pos, ws)

    layer = WindowAttention(24, 32, 3, pos=_rib(), backend=spy).eval()
    x = torch.randn(1, 24, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        layer(x)
    assert strides == [(1, 1, 1)]


def test_auto_trains_through_concat_on_the_cpu(monkeypatch):
    monkeypatch.setenv("RIBSR_CPU_KERNEL", "0")
    auto = make_backend("auto")
    rib = _rib()
    q = torch.randn(1, 3, 64, 16)
    assert auto.choose(q, rib) is attend_concat  # gradients flow to the factors
    with torch.no_grad():
        assert auto.choose(q, rib) is attend_bias
    assert auto.choose(q, NoPE()) is attend_bias


def test_auto_takes_the_cpu_kernel_for_float32_inference_only():
    auto = make_backend("auto")
    rib = _rib()
    q = torch.randn(1, 3, 64, 16)
    with torch.no_grad():
        assert auto.choose(q, rib) == auto.attend_cpu_kernel
        assert auto.choose(q, NoPE()) == auto.attend_cpu_kernel
        assert auto.choose(q.bfloat16(), rib) is attend_bias  # other dtypes: PyTorch's kernels
        assert auto.choose(torch.randn(1, 3, 64, 72), rib) is attend_bias  # head width past the kernel's 64
    assert auto.choose(q, rib) is attend_concat  # gradients to the factors: training
    assert auto.choose(q.requires_grad_(), NoPE()) is attend_bias  # gradients to q


def test_auto_kernel_gives_the_factors_past_the_bias_cap(monkeypatch):
    import ribsr.model.attention as attention

    seen = []
    real = attention.cpu_attention.attention
    monkeypatch.setattr(attention.cpu_attention, "attention",
                        lambda q, k, v, bias=None, factors=None: seen.append((bias is not None, factors is not None))
                        or real(q, k, v, bias=bias, factors=factors))
    auto = make_backend("auto")
    rib = _rib(rank=24).eval()
    q, k, v = (torch.randn(2, 3, 64, 16) for _ in range(3))
    with torch.no_grad():
        below = auto(q, k, v, rib, 8)
        auto.max_bias_bytes = 3 * 64 * 64 * 4 - 1
        above = auto(q, k, v, rib, 8)
        ref = attend_reference(q, k, v, rib, 8)
    assert seen == [(True, False), (False, True)]
    for out in (below, above):
        assert (out - ref).abs().max() <= 1e-5


def test_auto_falls_back_where_the_kernel_cannot_be_built(monkeypatch):
    import ribsr.kernels.cpu_attention as cpu_attention

    monkeypatch.setattr(cpu_attention, "_loaded", None)
    monkeypatch.setattr(cpu_attention, "_failure", "no C++ compiler found (test)")
    auto = make_backend("auto")
    rib = _rib().eval()
    q, k, v = (torch.randn(2, 3, 64, 16) for _ in range(3))
    with torch.no_grad():
        assert auto.choose(q, rib) is attend_bias
        torch.testing.assert_close(auto(q, k, v, rib, 8), attend_reference(q, k, v, rib, 8), atol=1e-5, rtol=0)
    with pytest.raises(cpu_attention.KernelUnavailable, match="no C.. compiler found"):
        make_backend("cpu_kernel")  # named explicitly: an error when the network is built
