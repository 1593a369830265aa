"""``ribsr info``: what a checkpoint holds and which presets fit it."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a checkpoint (config, parameters, presets that fit)")
    p.add_argument("checkpoint", help="checkpoint path or http(s) URL (downloaded once into the torch.hub cache)")
    p.add_argument("--sha256", default=None, metavar="HEX",
                   help="expected SHA-256 of the model file (for a URL: checked before it enters the cache)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ribsr.checkpoint import describe_state, matching_presets, read_checkpoint
    from ribsr.hub import redact

    state, config = read_checkpoint(args.checkpoint, sha256=args.sha256, progress=not getattr(args, "quiet", False))
    n = sum(v.numel() for v in state.values())
    print(f"{redact(args.checkpoint)}: {len(state)} tensors, {n / 1e6:.3f} M parameters")
    print(f"  shapes: {describe_state(state)}")
    if config is not None:
        print(f"  config: {config.to_json()}")
    else:
        print("  config: none stored (the paper's format); pass --config when loading")
    fits = matching_presets(state)
    print(f"  presets that fit: {', '.join(fits) if fits else 'none'}")
    return 0
