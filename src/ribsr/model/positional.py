"""Positional schemes for window attention.

A scheme tells the attention what to add to the logits of a ws x ws window, in one of two forms:

* low-rank **factors** ``(q_f, k_f)``, each (heads, N, R) with N = ws*ws, such that the positional
  logit between tokens n and m is ``q_f[h, n] . k_f[h, m]`` (the 1/sqrt(R) scale folded into ``q_f``);
  these can be concatenated to q and k so that any fused kernel computes them (RIB, FlashBias);
* a dense additive **bias** (heads, N, N) (RPB; or the product of the factors).

Schemes may also rotate q and k (RoPE; :class:`~ribsr.model.attention.WindowAttention` rotates once,
before any attention path) or do nothing (NoPE). Their parameters are registered with
the names the released checkpoints (and the paper's code for the other schemes) use;
:class:`~ribsr.model.attention.WindowAttention` stores the scheme as its ``pos`` submodule and flattens
``pos.`` out of state-dict keys. (CPE, a depthwise conv on the layer input, lives in the transformer
layer; its attention has :class:`NoPE`.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

# Dense biases are kept between calls in eval mode while the scheme's CacheBudget allows: by default
# each scheme has its own budget of this many bytes; SST gives all its schemes one shared budget.
BIAS_CACHE_MAX_BYTES = 64 * 2**20


class CacheBudget:
    """A byte budget for cached dense biases, shared by the positional schemes that hold it.

    A scheme caches a bias only while the budget has room; entries are released when they go stale
    or the cache is cleared. ``max_bytes=0`` disables bias caching.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache budget must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.used = 0

    def reserve(self, nbytes: int) -> bool:
        """Take ``nbytes`` if they fit; returns whether they did."""
        if self.used + nbytes > self.max_bytes:
            return False
        self.used += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self.used -= nbytes

    def __repr__(self) -> str:
        return f"CacheBudget(used={self.used}, max_bytes={self.max_bytes})"


def share_bias_budget(network: nn.Module, max_bytes: int) -> None:
    """Give every positional scheme in ``network`` one :class:`CacheBudget` of ``max_bytes`` (0: no dense bias is
    kept), first come, first served (the first layers to run); clears what they cache now."""
    budget = CacheBudget(max_bytes)
    for m in network.modules():
        if isinstance(m, PositionalScheme):
            m.clear_cache()
            m.bias_budget = budget


def _init_normal(p: torch.Tensor, std: float) -> None:
    """Fill ``p`` from N(0, std^2); nothing for meta tensors (shape-only builds, as checkpoint checks make),
    whose ``normal_`` goes through torch's reference implementations and imports torch._dynamo (~0.9 s)."""
    if not p.is_meta:
        nn.init.normal_(p, mean=0.0, std=std)


def window_coordinates(ws: int, device: torch.device | None = None) -> torch.Tensor:
    """Normalised (x, y) centre coordinates in (-1, 1) of the tokens of a ws x ws window: (N, 2).

    Token n is row r = n // ws, column c = n % ws; x is the column coordinate.
    """
    idx = (torch.arange(ws, dtype=torch.float32, device=device) + 0.5) * (2.0 / ws) - 1.0
    y, x = torch.meshgrid(idx, idx, indexing="ij")  # (ws, ws) each
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)  # (N, 2)


def fourier_features(coords: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """[x, y, sin(x), sin(y), cos(x), cos(y), sin(2x), ...] for frequencies 1, 2, 4, ...: (N, 2 + 4F)."""
    feats = [coords]
    for i in range(n_freqs):
        f = coords * float(2**i)
        feats += [torch.sin(f), torch.cos(f)]
    return torch.cat(feats, dim=-1)


def _param_key(params: list[torch.Tensor]) -> tuple:
    # Changes whenever a parameter is updated in place (optimizer step, load_state_dict) or replaced.
    # Parameters made under torch.inference_mode keep no version counter: their bytes stand in for it.
    return tuple((p.data_ptr(), p.dtype, _bytes(p) if p.is_inference() else p._version) for p in params)


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()


class PositionalScheme(nn.Module):
    """Base class: no positional term. Subclasses override ``factors``, ``bias`` or ``rotate``."""

    #: True when the scheme's term can be written as low-rank factors (concat attention possible).
    has_factors: bool = False
    #: True when the scheme adds something to the logits at all.
    has_term: bool = False

    def __init__(self) -> None:
        super().__init__()
        # key -> (parameter versions, value, budget charged or None, bytes charged)
        self._cache: dict[tuple, tuple[tuple, object, CacheBudget | None, int]] = {}
        self.bias_budget = CacheBudget(BIAS_CACHE_MAX_BYTES)

    # -- what subclasses provide -------------------------------------------------------------
    def compute_factors(self, ws: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no low-rank factors")

    def compute_bias(self, ws: int, device: torch.device) -> torch.Tensor:
        q_f, k_f = self.factors(ws, device)
        return q_f @ k_f.transpose(-1, -2)  # (heads, N, R) @ (heads, R, N) -> (heads, N, N)

    def rotate(self, q: torch.Tensor, k: torch.Tensor, ws: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply a position-dependent transform to q and k (identity unless overridden)."""
        return q, k

    # -- cached access ---------------------------------------------------------------------
    def needs_grad(self) -> bool:
        """True when a call now would have to propagate gradients to the scheme's parameters."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def _cacheable(self) -> bool:
        return not self.training and not self.needs_grad()

    def _cached(self, kind: str, ws: int, device: torch.device, compute, budget: CacheBudget | None = None):
        """``compute()``, kept per (kind, ws, device) in eval mode; charged to ``budget`` when given."""
        if not self._cacheable():
            return compute()
        key = (kind, ws, str(device))
        version = _param_key(list(self.parameters()))
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        self._evict(key)
        with torch.no_grad():
            value = compute()
        size = sum(t.numel() * t.element_size() for t in (value if isinstance(value, tuple) else (value,)))
        if budget is None or budget.reserve(size):
            self._cache[key] = (version, value, budget, size)
        return value

    def _evict(self, key: tuple) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None and entry[2] is not None:
            entry[2].release(entry[3])

    def factors(self, ws: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(q_f, k_f), each (heads, ws*ws, R) float32, with q_f . k_f the positional logit."""
        return self._cached("factors", ws, device, lambda: self.compute_factors(ws, device))

    def bias(self, ws: int, device: torch.device) -> torch.Tensor | None:
        """The positional logits as a dense (heads, N, N) float32 bias, or None for no term."""
        if not self.has_term:
            return None
        return self._cached("bias", ws, device, lambda: self.compute_bias(ws, device), budget=self.bias_budget)

    def clear_cache(self) -> None:
        """Drop every cached tensor (and give their bytes back to the budget)."""
        for key in list(self._cache):
            self._evict(key)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half() drop cached tensors
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)


class NoPE(PositionalScheme):
    """No positional term."""


class RIB(PositionalScheme):
    """Rank-factorized Implicit Neural Bias: a tiny MLP maps window coordinates to rank-R factors.

    ``q_pos = relu(fourier(coords) @ to_hidden + hidden_b) @ to_q[head]`` and likewise ``k_pos``;
    the positional logit is ``q_pos . k_pos / sqrt(R)``. Parameter names follow the released checkpoints.
    """

    has_factors = True
    has_term = True

    def __init__(self, heads: int, rank: int, hidden_dim: int = 32, n_freqs: int = 10) -> None:
        super().__init__()
        self.heads, self.rank, self.n_freqs = heads, rank, n_freqs
        self.to_hidden = nn.Parameter(torch.empty(2 + 4 * n_freqs, hidden_dim))
        self.hidden_b = nn.Parameter(torch.zeros(1, hidden_dim))
        self.to_q = nn.Parameter(torch.empty(heads, hidden_dim, rank))
        self.to_k = nn.Parameter(torch.empty(heads, hidden_dim, rank))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.to_hidden, self.to_q, self.to_k):
            _init_normal(p, 0.05)
        nn.init.zeros_(self.hidden_b)

    def compute_factors(self, ws: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        feats = fourier_features(window_coordinates(ws, device), self.n_freqs)  # (N, 2 + 4F)
        hidden = torch.relu(feats @ self.to_hidden.float() + self.hidden_b.float())  # (N, Hd)
        q_f = torch.matmul(hidden, self.to_q.float()) * (1.0 / math.sqrt(self.rank))  # (heads, N, R)
        k_f = torch.matmul(hidden, self.to_k.float())  # (heads, N, R)
        return q_f, k_f

    def extra_repr(self) -> str:
        return f"heads={self.heads}, rank={self.rank}, n_freqs={self.n_freqs}"


def _check_window(scheme: str, ws: int, expected: int) -> None:
    if ws != expected:
        raise ValueError(f"{scheme} was built for {expected}x{expected} windows, got window size {ws}")


@functools.lru_cache(maxsize=4)
def _relative_position_index_cached(ws: int, device: str) -> torch.Tensor:
    return relative_position_index(ws, torch.device(device))


def relative_position_index(ws: int, device: torch.device | None = None) -> torch.Tensor:
    """The RPB table index of every (query, key) pair of a ws x ws window: (N, N) int32, N = ws*ws.

    For query token (qh, qw) and key token (kh, kw) (token n = row * ws + column) the index is
    ``(kh - qh + ws - 1) * (2 ws - 1) + (kw - qw + ws - 1)``; built with broadcasting, not a loop.
    """
    if ws <= 0:
        raise ValueError(f"window size must be positive, got {ws}")
    n = torch.arange(ws * ws, device=device, dtype=torch.int32)
    row, col = n // ws, n % ws  # (N,) each
    dh = row[None, :] - row[:, None] + (ws - 1)  # (N query, N key)
    dw = col[None, :] - col[:, None] + (ws - 1)
    return dh * (2 * ws - 1) + dw


class RPB(PositionalScheme):
    """Relative position bias: a learned table of (2ws-1)^2 entries per head, gathered by offset.

    The parameter ``relative_position_bias`` (heads, (2ws-1)^2) is initialised ``randn * 0.001``.
    The dense (heads, N, N) bias is gathered on every call as the RPB networks do (in eval mode it is
    cached within the bias budget); the gather index is built once per window size and device.
    """

    has_term = True

    def __init__(self, heads: int, window_size: int) -> None:
        super().__init__()
        self.heads, self.window_size = heads, window_size
        self.relative_position_bias = nn.Parameter(torch.empty(heads, (2 * window_size - 1) ** 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_normal(self.relative_position_bias, 0.001)

    def compute_bias(self, ws: int, device: torch.device) -> torch.Tensor:
        _check_window("RPB", ws, self.window_size)
        table = self.relative_position_bias
        index = _relative_position_index_cached(ws, str(table.device))  # (N, N)
        n = ws * ws
        # (heads, (2ws-1)^2) -> (heads, N*N) -> (heads, N, N)
        return table.float().index_select(1, index.view(-1)).view(self.heads, n, n)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, window_size={self.window_size}"


class FlashBias(PositionalScheme):
    """Learned per-position low-rank factors: ``flashbias_q``, ``flashbias_k``, each (heads, ws*ws, rank).

    The positional logit is ``flashbias_q[h, n] . flashbias_k[h, m] / sqrt(rank)``, used exactly like
    the RIB factors (concat or dense bias). The paper's code initialises both factors to zero, a
    saddle point where neither receives a gradient; we draw them from Normal(0, ``init_std``) so they train.
    """

    has_factors = True
    has_term = True

    def __init__(self, heads: int, rank: int, window_size: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.heads, self.rank, self.window_size, self.init_std = heads, rank, window_size, init_std
        n = window_size * window_size
        self.flashbias_q = nn.Parameter(torch.empty(heads, n, rank))
        self.flashbias_k = nn.Parameter(torch.empty(heads, n, rank))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.flashbias_q, self.flashbias_k):
            _init_normal(p, self.init_std)

    def compute_factors(self, ws: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        _check_window("FlashBias", ws, self.window_size)
        return self.flashbias_q.float() * (1.0 / math.sqrt(self.rank)), self.flashbias_k.float()

    def extra_repr(self) -> str:
        return f"heads={self.heads}, rank={self.rank}, window_size={self.window_size}"


def mixed_rope_frequencies(heads: int, head_dim: int, theta: float = 10.0) -> torch.Tensor:
    """RoPE-Mixed initial frequencies: (2, heads, head_dim // 2), [0] for x and [1] for y.

    Magnitudes ``1 / theta ** (arange(0, p, 4)[: p // 4] / p)`` with p = head_dim rounded up to a multiple
    of 4; per head a random angle a gives fx = [mag cos a, mag cos(a + pi/2)], fy = [mag sin a,
    mag sin(a + pi/2)], truncated to the head_dim // 2 rotation pairs.
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    p = -(-head_dim // 4) * 4
    mag = 1.0 / theta ** (torch.arange(0, p, 4)[: p // 4].float() / p)  # (p/4,)
    angles = torch.rand(heads, 1) * (2 * math.pi)  # (heads, 1)
    fx = torch.cat([mag * torch.cos(angles), mag * torch.cos(angles + math.pi / 2)], dim=-1)  # (heads, p/2)
    fy = torch.cat([mag * torch.sin(angles), mag * torch.sin(angles + math.pi / 2)], dim=-1)
    return torch.stack([fx, fy])[..., : head_dim // 2]


class RoPE(PositionalScheme):
    """2D rotary embedding with learnable mixed frequencies (RoPE-Mixed, "RoPEViT").

    Token n of a ws x ws window sits at integer (t_x, t_y) = (n % ws, n // ws); per head h and pair i the
    angle is ``t_x * rope_freqs[0, h, i] + t_y * rope_freqs[1, h, i]``, and channels (2i, 2i+1) of q and k
    are rotated by it as the real and imaginary parts of a complex number (in float32). Nothing is added to
    the logits, so q.k after rotation depends on the two tokens' offset only (for a given head).
    """

    def __init__(self, heads: int, head_dim: int, theta: float = 10.0) -> None:
        super().__init__()
        self.heads, self.head_dim, self.theta = heads, head_dim, theta
        self.rope_freqs = nn.Parameter(mixed_rope_frequencies(heads, head_dim, theta))

    def compute_rotation(self, ws: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotation angles, each (heads, ws*ws, head_dim // 2) float32."""
        n = torch.arange(ws * ws, device=self.rope_freqs.device)
        t_x, t_y = (n % ws).float(), (n // ws).float()  # (N,)
        f = self.rope_freqs.float()
        # (1, N, 1) * (heads, 1, d/2) -> (heads, N, d/2)
        angles = t_x[None, :, None] * f[0][:, None, :] + t_y[None, :, None] * f[1][:, None, :]
        return torch.cos(angles), torch.sin(angles)

    def rotate(self, q: torch.Tensor, k: torch.Tensor, ws: int) -> tuple[torch.Tensor, torch.Tensor]:
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"RoPE was built for head dim {self.head_dim}, got {q.shape[-1]}")
        cos, sin = self._cached("rotation", ws, q.device, lambda: self.compute_rotation(ws, q.device))
        return rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}, theta={self.theta}"


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(re + i im) * (cos + i sin) on channel pairs of x (windows, heads, N, D), computed in float32."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (windows, heads, N, D/2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)  # (windows, heads, N, D)


# attn_type -> the positional scheme of one attention layer. Every builder is called with the same keyword
# arguments (heads, head_dim, rank, window_size, hidden_dim, n_freqs) and uses those its scheme needs; the
# keys are the names configurations may use (SSTConfig.attn_type).
POSITIONAL: dict[str, Callable[..., PositionalScheme]] = {
    "RIB": lambda heads, rank, hidden_dim, n_freqs, **_: RIB(heads, rank, hidden_dim, n_freqs),
    "RPB": lambda heads, window_size, **_: RPB(heads, window_size),
    "FlashBias": lambda heads, rank, window_size, **_: FlashBias(heads, rank, window_size),
    "RoPE": lambda heads, head_dim, **_: RoPE(heads, head_dim),
    "NoPE": lambda **_: NoPE(),
    "CPE": lambda **_: NoPE(),  # the position enters through a depthwise conv on the layer input (its ``cpe``)
}
