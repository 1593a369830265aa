"""``ribsr export-onnx``: an SST or ESC-RIB checkpoint as an ONNX file (dynamic batch, height and width)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ribsr.cli.argtypes import positive

EPILOG = """\
The graph takes a (B, 3, H, W) batch in [0, 1] of any size and returns (B, 3, s*H, s*W); padding to
whole windows happens inside it. The positional terms are stored as constants. Without
--fused-attention the graph uses standard ONNX operators only. The file's metadata
(scale, alignment unit, configuration) lets `ribsr upscale --model FILE.onnx` tile it as it tiles
checkpoints. Needs onnx and onnxruntime: pip install 'ribsr[onnx]'.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ribsr.onnx import DEFAULT_OPSET

    p = sub.add_parser(
        "export-onnx",
        help="export a checkpoint as an ONNX file (onnxruntime, dynamic sizes)",
        description="Export an SST or ESC-RIB checkpoint as an ONNX model with dynamic batch, height and width.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint path, or 'default' for the bundled model")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--config", default=None,
                   help="network configuration (preset name or YAML/JSON) for checkpoints without one")
    p.add_argument("--scale", type=positive(int), default=None,
                   help="upscaling factor: must be the checkpoint's (without it: the checkpoint's; for "
                   "'default': the bundled model of this scale)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help="ONNX opset version, from 14 to what torch's exporter writes (20 for torch 2.13; "
                   "default: %(default)s)")
    p.add_argument("--fp16", action="store_true",
                   help="float16 weights, input and output (the softmax stays in float32)")
    p.add_argument("--fused-attention", action="store_true",
                   help="compute attention with onnxruntime's fused com.microsoft.MultiHeadAttention (no N x N "
                   "scores held, faster than the standard graph on the CPU; the file then runs only in "
                   "onnxruntime)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ribsr.checkpoint import resolve_model
    from ribsr.onnx import export_onnx, is_onnx_path

    if is_onnx_path(args.checkpoint):
        raise ValueError(f"{args.checkpoint} is already an ONNX file; export-onnx reads checkpoints")
    if args.output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists (use --overwrite)")
    model = resolve_model(args.checkpoint, config=args.config, scale=args.scale)
    path = export_onnx(model, args.output, opset=args.opset, fp16=args.fp16, fused_attention=args.fused_attention,
                       metadata={"source": Path(str(args.checkpoint)).name})
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB, x{model.config.scale}, opset {args.opset}, "
          f"{'float16' if args.fp16 else 'float32'}{', fused attention' if args.fused_attention else ''})")
    return 0
