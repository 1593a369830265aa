"""Window attention with a convolutional gate, and the attention paths ("backends") that compute it.

Every backend computes, per window and head,
``softmax(q k^T / sqrt(D) + P) v`` where P is the positional term of a
:class:`~ribsr.model.positional.PositionalScheme` (q and k arrive already rotated by the scheme:
:class:`WindowAttention` applies ``pos.rotate`` once, before the path). They differ only in how:

* ``concat``: the scheme's low-rank factors are concatenated to q and k, so one
  ``scaled_dot_product_attention`` call computes content and position together
  (what lets the FlashAttention kernel run on CUDA);
* ``bias``: P is materialised once as a (heads, N, N) tensor shared by all windows and passed as
  ``attn_mask`` (PyTorch's CPU flash kernel accepts an additive mask);
* ``reference``: plain float32 matmul and softmax, for tests;
* ``concat_bf16``: ``concat`` with q, k and v in bfloat16 (the kernel accumulates in float32), as the
  paper's code runs RIB attention: faster on CPUs with bfloat16 matrix units (AMX, AVX512-BF16), but
  outputs differ from ``reference`` at bfloat16's precision (~1e-3), so it is never chosen by ``auto``;
* ``naive``: the same unfused computation in the inputs' dtype (mixed precision as under autocast), as
  the RPB networks (SwinIR, HAT, PFT) compute it: the baseline of the benchmarks;
* ``cpu_kernel``: ribsr's own exact float32 CPU kernel (:mod:`ribsr.kernels.cpu_attention`, compiled on
  first use), for inference: the dense bias added inside its single pass over the scores, or (past the memory
  cap) the low-rank factors without ever widening v;
* ``auto`` (default): ``concat`` on CUDA; on CPU, for float32 inference, ``cpu_kernel`` when it is built
  (else ``bias``); otherwise ``bias`` while the dense bias stays under a memory cap, else ``concat``.

The backend is chosen once, when the network is built (:func:`make_backend`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ribsr.kernels import cpu_attention
from ribsr.model.positional import PositionalScheme

# q, k, v: (windows, heads, N, D), q and k rotated by the scheme; returns (windows, heads, N, D).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PositionalScheme, int], torch.Tensor]

# Default cap for the auto backend on CPU: beyond it the dense bias costs more than it saves.
DEFAULT_MAX_BIAS_BYTES = 512 * 2**20


def attend_reference(q, k, v, pos: PositionalScheme, ws: int) -> torch.Tensor:
    """Plain attention in float32, as the RPB networks compute it: q scaled by 1/sqrt(D), the
    (windows, heads, N, N) scores materialised, the bias added, softmax, times v."""
    logits = (q.float() * (1.0 / math.sqrt(q.shape[-1]))) @ k.float().transpose(-1, -2)
    bias = pos.bias(ws, q.device)
    if bias is not None:
        logits = logits + bias
    return (torch.softmax(logits, dim=-1) @ v.float()).to(v.dtype)


def attend_naive(q, k, v, pos: PositionalScheme, ws: int) -> torch.Tensor:
    """Unfused attention as the RPB networks compute it, in the inputs' dtype: q scaled by 1/sqrt(D), the
    (windows, heads, N, N) scores materialised, the bias added, softmax, times v.

    Low-precision inputs follow autocast: both matmuls in the inputs' dtype; adding the float32 bias
    promotes the scores to float32, and softmax runs in float32. For float32 inputs this is
    :func:`attend_reference`.
    """
    logits = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)  # (windows, heads, N, N)
    bias = pos.bias(ws, q.device)
    if bias is not None:
        logits = logits + bias  # (heads, N, N) float32, broadcast over windows
    return torch.softmax(logits, dim=-1, dtype=torch.float32).to(v.dtype) @ v


def attend_bias(q, k, v, pos: PositionalScheme, ws: int) -> torch.Tensor:
    """Fused attention with the positional term as a dense additive mask (shared by all windows)."""
    bias = pos.bias(ws, q.device)
    if bias is not None:
        bias = bias.to(q.dtype).unsqueeze(0)  # (1, heads, N, N), broadcast over windows
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def attend_concat(q, k, v, pos: PositionalScheme, ws: int) -> torch.Tensor:
    """Fused attention on [q, q_f sqrt(D)] . [k, k_f] with scale 1/sqrt(D): no bias tensor at all.

    Schemes without low-rank factors fall back to a dense mask (there is nothing to concatenate).
    """
    if not pos.has_factors:
        return attend_bias(q, k, v, pos, ws)
    windows, heads, n, d = q.shape
    q_f, k_f = pos.factors(ws, q.device)  # (heads, N, R) each, float32
    r = q_f.shape[-1]
    # SDPA scales the whole dot product by 1/sqrt(D): q_f * sqrt(D) leaves the positional logit q_f . k_f.
    # Fused kernels (CPU and CUDA) need one width for q, k and v, and run fastest at multiples of 8: the
    # extra channels are zeros (v's too), and the output's extra channels are dropped. One cat per tensor.
    pad = -(d + r) % 8
    zeros = q.new_zeros(()).expand(windows, heads, n, d + r + pad)  # stride-0 zeros, sliced per use
    q_cat = torch.cat([q, (q_f * math.sqrt(d)).to(q.dtype).expand(windows, -1, -1, -1), zeros[..., :pad]], -1)
    k_cat = torch.cat([k, k_f.to(k.dtype).expand(windows, -1, -1, -1), zeros[..., :pad]], -1)
    v_pad = torch.cat([v, zeros[..., : r + pad]], -1)  # (windows, heads, N, D+R+pad) each
    return F.scaled_dot_product_attention(q_cat, k_cat, v_pad, scale=1.0 / math.sqrt(d))[..., :d]


def attend_concat_bf16(q, k, v, pos: PositionalScheme, ws: int) -> torch.Tensor:
    """:func:`attend_concat` in bfloat16 (the paper's code's precision for RIB attention); returns v's dtype.

    The bfloat16 [q, q_f sqrt(D), 0], [k, k_f, 0] and [v, 0] are written in one pass each (the cast happens
    in the copy), not cast and then concatenated.
    """
    if not pos.has_factors:
        out = attend_bias(q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16), pos, ws)
        return out.to(v.dtype)
    windows, heads, n, d = q.shape
    q_f, k_f = pos.factors(ws, q.device)  # (heads, N, R) each, float32
    r = q_f.shape[-1]
    width = d + r + (-(d + r) % 8)
    q_cat, k_cat, v_pad = (q.new_empty((windows, heads, n, width), dtype=torch.bfloat16) for _ in range(3))
    q_cat[..., :d] = q
    q_cat[..., d : d + r] = q_f * math.sqrt(d)  # broadcast over windows
    k_cat[..., :d] = k
    k_cat[..., d : d + r] = k_f
    v_pad[..., :d] = v
    for t, start in ((q_cat, d + r), (k_cat, d + r), (v_pad, d)):
        t[..., start:] = 0
    out = F.scaled_dot_product_attention(q_cat, k_cat, v_pad, scale=1.0 / math.sqrt(d))
    return out[..., :d].to(v.dtype)


def attend_cpu_kernel(
    q, k, v, pos: PositionalScheme, ws: int, max_bias_bytes: int = DEFAULT_MAX_BIAS_BYTES
) -> torch.Tensor:
    """Exact float32 inference on the CPU by ribsr's kernel: the scheme's dense bias while heads*N*N float32
    fits ``max_bias_bytes`` (and always for schemes without factors), else its low-rank factors.

    Raises :class:`~ribsr.kernels.cpu_attention.KernelUnavailable` where the kernel cannot be built, and
    ValueError for inputs it does not take (other dtypes, gradients).
    """
    heads, n = q.shape[1], q.shape[2]
    if pos.has_factors and heads * n * n * 4 > max_bias_bytes:
        return cpu_attention.attention(q, k, v, factors=pos.factors(ws, q.device))
    return cpu_attention.attention(q, k, v, bias=pos.bias(ws, q.device))


def _kernel_applies(q: torch.Tensor, pos: PositionalScheme) -> bool:
    """Whether ``auto`` can hand this call to the CPU kernel: float32 CPU inference, not traced or compiled."""
    if q.device.type != "cpu" or q.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (q.requires_grad or pos.needs_grad()):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    return cpu_attention.supports(q.shape[-1])


class AutoAttention:
    """``concat`` on CUDA. On the CPU: for float32 inference ``cpu_kernel`` when it is built (on first use;
    not where ``RIBSR_CPU_KERNEL=0``); else ``bias`` while heads*N*N float32 fits ``max_bias_bytes`` and no
    gradient flows to the positional term, else ``concat``.

    Schemes without low-rank factors (RPB, RoPE, NoPE) always take ``bias`` (with no mask when they add
    nothing to the logits).
    """

    def __init__(self, max_bias_bytes: int = DEFAULT_MAX_BIAS_BYTES) -> None:
        self.max_bias_bytes = max_bias_bytes

    def attend_cpu_kernel(self, q, k, v, pos: PositionalScheme, ws: int) -> torch.Tensor:
        """:func:`attend_cpu_kernel` with this backend's bias cap."""
        return attend_cpu_kernel(q, k, v, pos, ws, self.max_bias_bytes)

    def choose(self, q: torch.Tensor, pos: PositionalScheme) -> AttentionFn:
        """The path this call takes for q (windows, heads, N, D) and the scheme ``pos``.

        While gradients flow to the factors (training), ``concat``: a mask that needs a gradient sends
        PyTorch's CPU kernel to a path that keeps the full scores (measured at window 32: 8x the memory
        and 1.5x the time of ``concat`` for forward+backward).
        """
        if _kernel_applies(q, pos):
            return self.attend_cpu_kernel
        if not pos.has_factors:
            return attend_bias
        heads, n = q.shape[1], q.shape[2]
        if q.device.type == "cpu" and heads * n * n * 4 <= self.max_bias_bytes and not pos.needs_grad():
            return attend_bias
        return attend_concat

    def __call__(self, q, k, v, pos: PositionalScheme, ws: int) -> torch.Tensor:
        return self.choose(q, pos)(q, k, v, pos, ws)

    def __repr__(self) -> str:
        return f"AutoAttention(max_bias_bytes={self.max_bias_bytes})"


BACKENDS: dict[str, Callable[[], AttentionFn]] = {
    "auto": AutoAttention,
    "concat": lambda: attend_concat,
    "concat_bf16": lambda: attend_concat_bf16,
    "cpu_kernel": lambda: _built(attend_cpu_kernel),
    "bias": lambda: attend_bias,
    "reference": lambda: attend_reference,
    "naive": lambda: attend_naive,
}


def _built(fn: AttentionFn) -> AttentionFn:
    """``fn`` once the CPU kernel is built: a backend named explicitly fails when the network is built, not later."""
    cpu_attention.require()
    return fn


def make_backend(name: str = "auto") -> AttentionFn:
    """The attention function for a backend name: ``auto``, ``concat``, ``concat_bf16``, ``cpu_kernel``, ``bias``,
    ``reference`` or ``naive`` (``cpu_kernel`` raises :class:`~ribsr.kernels.cpu_attention.KernelUnavailable`
    where it cannot be built)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]()


def mirror_index(
    n: int | torch.Tensor, total: int | torch.Tensor, shift: int = 0, device: torch.device | None = None
) -> torch.Tensor:
    """For each of the ``total`` positions of an axis of length ``n`` padded at the end by reflection (without
    repeating the edge, continued periodically where the padding is longer than the side, a side of 1
    repeated) and then rolled back by ``shift``, the source position: (total,) int64.

    ``n`` and ``total`` may be sizes traced for export (:mod:`ribsr.onnx`): tensor ops only, no branches on them.
    """
    i = torch.arange(total, dtype=torch.int64, device=device)
    if shift:
        i = (i + shift) % total
    n_t = torch.as_tensor(n, dtype=torch.int64, device=device)
    period = (2 * n_t - 2).clamp(min=1)  # reflection without repeating the edge has period 2(n-1)
    i = i % period
    return torch.where(i < n_t, i, period - i)


def pad_to_multiple(x: torch.Tensor, ws: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom and right to multiples of ``ws`` by reflection.

    Where the padding is shorter than the side this is exactly ``F.pad(mode="reflect")`` (what the
    released models saw in training); for sides shorter than the padding, the reflection is
    continued periodically (..., 1, 0, 1, 2, ..., n-1, n-2, ...), and a side of 1 is repeated.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % ws, (-w) % ws
    if ph == 0 and pw == 0:
        return x
    if ph < h and pw < w:
        return F.pad(x, (0, pw, 0, ph), mode="reflect")
    if ph:
        x = x.index_select(-2, mirror_index(h, h + ph, device=x.device))
    if pw:
        x = x.index_select(-1, mirror_index(w, w + pw, device=x.device))
    return x


def window_partition(x: torch.Tensor, ws: int, shift: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
    """The ws x ws windows of a (B, C, H, W) map, padded at the bottom and right to (Hp, Wp), multiples of ws
    (by reflection, :func:`pad_to_multiple`), and rolled up and left by ``shift`` pixels (cyclically).

    Returns the windows, (B*nh*nw, ws*ws, C) with nh = Hp / ws, nw = Wp / ws (window (b, i, j) at index
    (b*nh + i)*nw + j, token n at row n // ws and column n % ws), and (Hp, Wp). The copy reads any memory
    layout; the windows are contiguous.
    """
    x = pad_to_multiple(x, ws)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(2, 3))
    b, c, hp, wp = x.shape
    nh, nw = hp // ws, wp // ws
    # (B, C, Hp, Wp) -> (B, Hp, Wp, C) -> (B, nh, ws, nw, ws, C) -> (B, nh, nw, ws, ws, C) -> (B*nh*nw, ws*ws, C)
    windows = x.permute(0, 2, 3, 1).reshape(b, nh, ws, nw, ws, c).transpose(2, 3)
    return windows.reshape(b * nh * nw, ws * ws, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, ws: int, padded: tuple[int, int], size: tuple[int, int], shift: int = 0
) -> torch.Tensor:
    """The inverse of :func:`window_partition`: windows (B*nh*nw, ws*ws, ...) back to a (B, C, H, W) map.

    The dimensions after the token dimension are merged into C (so (B*nh*nw, ws*ws, heads, D) needs no
    copy of its own); the map is rolled back by ``shift`` and cropped from ``padded`` (Hp, Wp) to ``size``
    (H, W). The result has channels_last strides.
    """
    (hp, wp), (h, w) = padded, size
    nh, nw = hp // ws, wp // ws
    b = windows.shape[0] // (nh * nw)
    # (B*nh*nw, ws*ws, ...) -> (B, nh, nw, ws, ws, ...) -> (B, nh, ws, nw, ws, ...) -> (B, Hp, Wp, C): one copy
    x = windows.unflatten(1, (ws, ws)).unflatten(0, (b, nh, nw)).transpose(2, 3).reshape(b, hp, wp, -1)
    x = x.permute(0, 3, 1, 2)  # (B, C, Hp, Wp)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(2, 3))
    return x[:, :, :h, :w]


class WindowAttention(nn.Module):
    """Multi-head attention inside non-overlapping ws x ws windows, optionally gated by a convolutional branch.

    ``pos`` is the layer's positional scheme and ``gate`` (None: no gate) maps the input (B, C, H, W) to
    factors multiplied onto the attention output; ``shift`` moves the windows by ws // 2 (Swin's shifted
    windows). Parameters carry the released checkpoints' names (``to_qkv``, ``to_out``, ``gate.*`` and the
    positional scheme's own, e.g. ``to_hidden``); the scheme lives in ``self.pos`` but its keys are
    stored without the ``pos.`` prefix.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        heads: int,
        pos: PositionalScheme,
        gate: nn.Module | None = None,
        shift: bool = False,
        backend: AttentionFn | None = None,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.window_size, self.heads, self.shift = dim, window_size, heads, shift
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.to_out = nn.Conv2d(dim, dim, 1)
        self.gate = gate
        self.pos = pos
        self.backend: AttentionFn = backend if backend is not None else make_backend("auto")
        self._register_state_dict_hook(_flatten_pos_keys)
        self._register_load_state_dict_pre_hook(_nest_pos_keys, with_module=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        ws, heads = self.window_size, self.heads
        shift = ws // 2 if self.shift else 0
        # The gate first, and contiguous heads below: both measured faster on the CPU (light at 128x128, one
        # thread) than the alternatives, whose temporaries made glibc return heap pages and fault them back.
        gate = self.gate(x) if self.gate is not None else None
        windows, padded = window_partition(x, ws, shift)  # (B*nh*nw, N, C)
        # to_qkv is a 1x1 conv: the same linear map on every pixel, so it commutes with padding, rolling and
        # partitioning, and runs here on the C-channel windows rather than the 3C-channel image.
        qkv = F.linear(windows, self.to_qkv.weight.flatten(1), self.to_qkv.bias)  # (B*nh*nw, N, 3C)
        # (B*nh*nw, N, 3C) -> (3, B*nh*nw, heads, N, D), channel = part*C + head*D + d: strided views, no copy
        # (the fused kernels read them as they are: measured 20% faster per layer than a contiguous copy on the
        # CPU, light-weight model, 16x16 windows at 512x512)
        q, k, v = qkv.unflatten(-1, (3, heads, c // heads)).permute(2, 0, 3, 1, 4)
        q, k = self.pos.rotate(q, k, ws)
        out = self.backend(q, k, v, self.pos, ws)  # (B*nh*nw, heads, N, D)
        out = window_unpartition(out.transpose(1, 2), ws, padded, (h, w), shift)  # (B, C, H, W)
        if gate is not None:
            out = out * gate
        return self.to_out(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, heads={self.heads}, shift={self.shift}"


def _flatten_pos_keys(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "pos.")]:
        state_dict[prefix + key[len(prefix) + 4 :]] = state_dict.pop(key)
    return state_dict


def _nest_pos_keys(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    for name in list(module.pos.state_dict(keep_vars=True)):
        if prefix + name in state_dict:
            state_dict[prefix + "pos." + name] = state_dict.pop(prefix + name)
