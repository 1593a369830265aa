"""``ribsr convert``: the paper's .pth checkpoint -> our .safetensors carrying its config."""

from __future__ import annotations

import argparse
from pathlib import Path

from ribsr.cli.argtypes import positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a paper .pth checkpoint to .safetensors with its config",
        description="Reads a checkpoint of the paper's format (params_ema preferred) with the given config and "
        "writes a .safetensors file whose metadata carries the config, so later loads need no --config.",
    )
    p.add_argument("src", help="the paper's .pth file (or one of ours): a path or an http(s) URL")
    p.add_argument("dst", type=Path, help="output .safetensors path")
    p.add_argument("--config", required=True, help="preset name (light, base+, ...) or the paper's YAML file")
    p.add_argument("--scale", type=positive(int), default=None, help="scale of the preset (default: the checkpoint's)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--sha256", default=None, metavar="HEX",
                   help="expected SHA-256 of SRC, checked before use (for a URL, before it enters the cache)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ribsr.build import resolve_config
    from ribsr.checkpoint import checkpoint_scale, describe, load_model, read_checkpoint, save_model
    from ribsr.hub import is_url, strip_credentials

    if args.dst.exists() and not args.overwrite:
        raise FileExistsError(f"{args.dst} exists; pass --overwrite to replace it")
    fetch = dict(sha256=args.sha256, progress=not getattr(args, "quiet", False))
    scale = args.scale
    if scale is None:  # a preset name carries no scale: take the checkpoint's own
        state, _ = read_checkpoint(args.src, **fetch)
        cfg = resolve_config(args.config)
        scale = checkpoint_scale(state, cfg.upsampler) or cfg.scale
    model = load_model(args.src, config=args.config, scale=scale, **fetch)
    save_model(model, args.dst, metadata={"source": strip_credentials(args.src) if is_url(args.src)
                                            else Path(args.src).name})
    print(f"wrote {args.dst}: {describe(model)}")
    return 0
