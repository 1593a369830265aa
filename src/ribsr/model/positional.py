"""Positional schemes for window attention.

A scheme tells the attention what to add to the logits of a ws x ws window, in one of two forms:

* low-rank **factors** ``(q_f, k_f)``, each (heads, N, R) with N = ws*ws, such that the positional
  logit between tokens n and m is ``q_f[h, n] . k_f[h, m]`` (the 1/sqrt(R) scale folded into ``q_f``);
  these can be concatenated to q and k so that any fused kernel computes them (RIB, FlashBias);
* a dense additive **bias** (heads, N, N) (RPB; or the product of the factors).

Schemes may also rotate q and k (RoPE) or do nothing (NoPE). Their parameters are registered with
the names the released checkpoints use; :class:`~ribsr.model.attention.WindowAttention` stores the
scheme as its ``pos`` submodule and flattens ``pos.`` out of state-dict keys.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Dense biases at most this large are kept between calls in eval mode (per layer and window size).
BIAS_CACHE_MAX_BYTES = 64 * 2**20


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
    return tuple((p.data_ptr(), p._version, p.dtype) for p in params)


class PositionalScheme(nn.Module):
    """Base class: no positional term. Subclasses override ``factors``, ``bias`` or ``rotate``."""

    #: True when the scheme's term can be written as low-rank factors (concat attention possible).
    has_factors: bool = False
    #: True when the scheme adds something to the logits at all.
    has_term: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple, tuple[tuple, object]] = {}

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
    def _cacheable(self) -> bool:
        if self.training:
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def _cached(self, kind: str, ws: int, device: torch.device, compute, max_bytes: int | None = None):
        if not self._cacheable():
            return compute()
        key = (kind, ws, str(device))
        version = _param_key(list(self.parameters()))
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        with torch.no_grad():
            value = compute()
        size = sum(t.numel() * t.element_size() for t in (value if isinstance(value, tuple) else (value,)))
        if max_bytes is None or size <= max_bytes:
            self._cache[key] = (version, value)
        return value

    def factors(self, ws: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(q_f, k_f), each (heads, ws*ws, R) float32, with q_f . k_f the positional logit."""
        return self._cached("factors", ws, device, lambda: self.compute_factors(ws, device))

    def bias(self, ws: int, device: torch.device) -> torch.Tensor | None:
        """The positional logits as a dense (heads, N, N) float32 bias, or None for no term."""
        if not self.has_term:
            return None
        return self._cached(
            "bias", ws, device, lambda: self.compute_bias(ws, device), max_bytes=BIAS_CACHE_MAX_BYTES
        )

    def clear_cache(self) -> None:
        self._cache.clear()

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half() drop cached tensors
        self._cache.clear()
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
            nn.init.normal_(p, mean=0.0, std=0.05)
        nn.init.zeros_(self.hidden_b)

    def compute_factors(self, ws: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        feats = fourier_features(window_coordinates(ws, device), self.n_freqs)  # (N, 2 + 4F)
        hidden = torch.relu(feats @ self.to_hidden.float() + self.hidden_b.float())  # (N, Hd)
        q_f = torch.matmul(hidden, self.to_q.float()) * (1.0 / math.sqrt(self.rank))  # (heads, N, R)
        k_f = torch.matmul(hidden, self.to_k.float())  # (heads, N, R)
        return q_f, k_f

    def extra_repr(self) -> str:
        return f"heads={self.heads}, rank={self.rank}, n_freqs={self.n_freqs}"
