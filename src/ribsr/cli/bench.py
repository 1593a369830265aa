"""``ribsr bench attention`` and ``ribsr bench model``: latency and measured peak memory."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ribsr.cli.argtypes import add_device, positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark the attention paths or a whole network (time and peak memory)")
    kinds = p.add_subparsers(dest="bench_kind", metavar="KIND", required=True)

    a = kinds.add_parser(
        "attention",
        help="one attention layer over all windows of an image, for every positional scheme and path",
        description="Median latency and measured peak memory of one attention layer (q, k, v of all windows of an "
        "IMAGE x IMAGE map -> output) for RIB concat, RIB bias, RPB naive, RPB mask, FlashBias, RoPE and NoPE. "
        "Forward runs as eval inference (positional terms kept between calls unless --no-cache; RPB naive "
        "gathers its bias on every call, as the RPB networks' code does); "
        "--backward adds forward+backward in training mode.",
    )
    _common(a)
    a.add_argument("--windows", type=int, nargs="+", default=[8, 16, 32, 48, 64, 96], help="window sizes")
    a.add_argument("--heads", type=int, default=3)
    a.add_argument("--head-dim", type=int, default=16)
    a.add_argument("--rank", type=int, default=24, help="RIB / FlashBias rank")
    a.add_argument("--image", type=int, default=128, help="side of the (square) feature map, in pixels")
    a.add_argument("--methods", nargs="+", default=None, help="subset of methods (default: all)")
    a.add_argument("--backward", action="store_true", help="also time forward+backward")
    a.add_argument("--no-cache", dest="cache", action="store_false",
                   help="forward: rebuild positional terms (factors, bias) on every call instead of keeping them")
    a.add_argument("--max-gb", type=float, default=None,
                   help="skip cases whose rough memory estimate exceeds this many GiB "
                   "(default: 12 on CPU, 90%% of free memory on CUDA)")
    a.add_argument("--plot", type=Path, default=None, help="write a log-log plot of time and memory (PNG)")
    a.set_defaults(func=run_attention)

    m = kinds.add_parser(
        "model",
        help="a whole network: inference latency and peak memory (or one training step)",
        description="Whole-network median latency and measured peak memory, one row per --attn-type, so RIB and "
        "RPB variants of the same preset compare side by side.",
    )
    _common(m)
    m.add_argument("preset", help="preset name (light, base+, large+, ...)")
    m.add_argument("--scale", type=positive(int), default=2)
    m.add_argument("--lr-size", default="128x128", help="input size HxW (default 128x128)")
    m.add_argument("--attn-type", nargs="+", default=["RIB"], help="positional schemes to compare (RIB RPB ...)")
    m.add_argument("--attention", default="auto", help="attention path (auto, concat, bias, reference, naive)")
    m.add_argument("--bias-cache-gb", type=float, default=None,
                   help="GiB of dense biases the network keeps between calls (default: its own, 1.25; 0: rebuild "
                   "every call, as the RPB networks' code does)")
    m.add_argument("--train", action="store_true", help="time one AdamW step instead of inference")
    m.add_argument("--batch", type=int, default=None, help="batch size (default 1; 4 with --train)")
    m.add_argument("--patch", type=int, default=None, help="with --train: LR patch side (default 64)")
    m.set_defaults(func=run_model)


def _common(p: argparse.ArgumentParser) -> None:
    add_device(p, default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument("--max-seconds", type=float, default=30.0, help="stop repeating a case after this many seconds")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON (rewritten after every case)")


def _timing(args: argparse.Namespace, **defaults: Any) -> Any:
    """The timing options as one :class:`ribsr.bench.Timing`."""
    from ribsr.bench import Timing

    return Timing(repeats=args.repeats, warmup=args.warmup, max_seconds=args.max_seconds, threads=args.threads,
                  memory=not args.no_memory, **defaults)


def _write_json(path: Path | None, env: dict[str, Any], settings: dict[str, Any], results: list) -> None:
    if path is None:
        return
    from ribsr.files import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps({**env, "settings": settings, "results": results}, indent=1))


def _resolve_device(args: argparse.Namespace) -> None:
    """``args.device`` as the device it names (``auto`` resolved; ValueError for an unknown or missing one)."""
    from ribsr.devices import resolve_device

    args.device = str(resolve_device(args.device))


def _header(env: dict[str, Any], settings: dict[str, Any]) -> None:
    print(f"# device {env['device']}, torch {env['torch']}, threads {env['threads']}, dtype {env['dtype']}")
    print(f"# {', '.join(f'{k}={v}' for k, v in settings.items())}")
    if hasattr(os, "getloadavg"):
        print(f"# load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"# peak memory: {env['memory']}")


def run_attention(args: argparse.Namespace) -> int:
    import torch

    from ribsr.bench import attention_cases, bench_attention, environment, format_table, plot_attention

    _resolve_device(args)
    cases = attention_cases(args.windows, methods=args.methods, backward=args.backward, image=args.image,
                            heads=args.heads, head_dim=args.head_dim, rank=args.rank, dtype=args.dtype,
                            device=args.device, cache=args.cache)
    if args.max_gb is not None:
        max_bytes = int(args.max_gb * 2**30)
    elif torch.device(args.device).type == "cuda":
        max_bytes = int(0.9 * torch.cuda.mem_get_info()[0])
    else:
        max_bytes = 12 * 2**30
    env = environment(args.device, args.dtype, args.threads)
    settings = dict(image=args.image, heads=args.heads, head_dim=args.head_dim, rank=args.rank,
                    repeats=args.repeats, warmup=args.warmup, cache=args.cache,
                    load_avg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    _header(env, settings)
    columns = ["method", "window", "mode", "path", "ms", "cpu_ms", "peak_mb", "held_mb", "runs", "skipped"]
    print(format_table([], columns))
    results: list[dict[str, Any]] = []
    for r in bench_attention(cases, _timing(args), max_bytes=max_bytes):
        results.append(r)
        print(format_table([r], columns).splitlines()[-1], flush=True)
        _write_json(args.json, env, settings, results)
    if args.plot is not None:
        title = (f"{env['device']}, torch {env['torch']}, {env['threads']} threads, {args.dtype}, "
                 f"image {args.image}, heads {args.heads}, head dim {args.head_dim}, rank {args.rank}")
        print(f"wrote {plot_attention(results, args.plot, title)}")
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--lr-size must look like HxW (e.g. 360x640), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"--lr-size must be positive, got {text!r}")
    return h, w


def run_model(args: argparse.Namespace) -> int:
    from ribsr.bench import bench_model, environment, format_table

    _resolve_device(args)
    if args.bias_cache_gb is not None and args.bias_cache_gb < 0:
        raise ValueError(f"--bias-cache-gb must be >= 0, got {args.bias_cache_gb}")
    if args.train:
        side = args.patch or 64
        size, batch = (side, side), args.batch or 4
    else:
        size, batch = _size(args.lr_size), args.batch or 1
    env = environment(args.device, args.dtype, args.threads)
    settings = dict(preset=args.preset, scale=args.scale, lr_size=list(size), batch=batch, train=args.train,
                    attention=args.attention, bias_cache_gb=args.bias_cache_gb, repeats=args.repeats,
                    warmup=args.warmup,
                    load_avg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    _header(env, settings)
    columns = ["preset", "scale", "attn_type", "mode", "input", "ms", "cpu_ms", "peak_mb", "held_mb", "runs",
               "skipped"]
    print(format_table([], columns))
    results: list[dict[str, Any]] = []
    for r in bench_model(args.preset, args.attn_type, scale=args.scale, lr_size=size, batch=batch,
                         train=args.train, device=args.device, dtype=args.dtype, attention=args.attention,
                         bias_cache_bytes=None if args.bias_cache_gb is None else int(args.bias_cache_gb * 2**30),
                         timing=_timing(args, subprocess_timeout=900.0)):
        results.append(r)
        print(format_table([r], columns).splitlines()[-1], flush=True)
        _write_json(args.json, env, settings, results)
    return 0
