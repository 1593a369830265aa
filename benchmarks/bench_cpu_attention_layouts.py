"""Ways to run window-64 attention through PyTorch's fused CPU kernel, against the plain calls.

Usage: PYTHONPATH=src python benchmarks/bench_cpu_attention_layouts.py [--threads T] [--repeats N] [--pairs P]

4 windows x 3 heads x 4096 tokens, head dim 16, float32 (the shape of docs/benchmarks.md's window-64 rows).
Prints the median ms of each variant and its max abs difference from the plain masked call:

* mask: ``scaled_dot_product_attention`` with a (1, heads, N, N) mask shared by the windows (RIB bias);
* mask, heads as batch: the same with q/k/v as (heads, windows, N, D) and the mask (heads, 1, N, N);
* mask, C query chunks: one call per chunk of C queries, so that a chunk's mask rows may stay in cache;
* no mask: the kernel alone (NoPE);
* width 40, v padded / v 16 wide: q and k 40 wide as in RIB concat, v zero-padded to 40 or left at 16.

``--pairs P`` then times the single masked call and 1024-query chunks alternately P times (5 calls each)
and prints the median ratio chunks / single call.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from ribsr.bench import time_callable

W, H, N, D, R = 4, 3, 4096, 16, 24


def variants() -> dict[str, object]:
    torch.manual_seed(0)
    q, k, v = (torch.randn(W, H, N, D) for _ in range(3))  # (windows, heads, N, D)
    mask = torch.randn(H, N, N) * 0.1  # (heads, N, N)
    q_cat, k_cat = torch.randn(W, H, N, D + R), torch.randn(W, H, N, D + R)
    v_pad = torch.cat([v, v.new_zeros(W, H, N, R)], -1)  # (windows, heads, N, D+R)

    def chunked(c: int):
        def run() -> torch.Tensor:
            out = torch.empty_like(q)
            for s in range(0, N, c):
                out[:, :, s:s + c] = F.scaled_dot_product_attention(q[:, :, s:s + c], k, v,
                                                                     attn_mask=mask[None, :, s:s + c])
            return out
        return run

    def heads_as_batch() -> torch.Tensor:
        qt, kt, vt = (t.transpose(0, 1) for t in (q, k, v))  # (heads, windows, N, D)
        return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask[:, None]).transpose(0, 1)

    return {
        "mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None]),
        "mask, heads as batch": heads_as_batch,
        "mask, 256 query chunks": chunked(256),
        "mask, 512 query chunks": chunked(512),
        "mask, 1024 query chunks": chunked(1024),
        "no mask": lambda: F.scaled_dot_product_attention(q, k, v),
        "width 40, v padded": lambda: F.scaled_dot_product_attention(q_cat, k_cat, v_pad, scale=0.25)[..., :D],
        "width 40, v 16 wide": lambda: F.scaled_dot_product_attention(q_cat, k_cat, v, scale=0.25),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=0, help="alternating single-call / chunked timings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = variants()
    with torch.no_grad():
        reference = {"mask": runs["mask"](), "no mask": runs["no mask"](), "width": runs["width 40, v padded"]()}
        print(f"threads {args.threads}, median of {args.repeats} calls after one warm-up")
        for name, fn in runs.items():
            wall, _ = time_callable(fn, torch.device("cpu"), repeats=args.repeats, max_seconds=60.0)
            ref = reference["width" if name.startswith("width") else "no mask" if name == "no mask" else "mask"]
            diff = (fn() - ref).abs().max().item()
            print(f"{name:26s} {statistics.median(wall) * 1000:8.1f} ms   max abs diff {diff:.1e}")
        ratios = []
        for _ in range(args.pairs):
            single, chunks = (statistics.median(time_callable(runs[n], torch.device("cpu"), repeats=5)[0])
                              for n in ("mask", "mask, 1024 query chunks"))
            ratios.append(chunks / single)
            print(f"pair: mask {single * 1000:.0f} ms, 1024 query chunks {chunks * 1000:.0f} ms")
        if ratios:
            print(f"median ratio chunks / single call over {len(ratios)} pairs: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
