"""``ribsr serve``: a local web page to upscale images and compare them with a slider (:mod:`ribsr.serve`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ribsr.cli.argtypes import DEFAULT_MAX_OUTPUT_PIXELS, add_device, pixel_count, positive

EPILOG = """\
Open the printed address in a browser: drop or pick images, choose the model (the bundled default model at
x2/x3/x4, the real-world x4 model with its denoise strength, the ESC-RIB x2 model, or a checkpoint path on this
machine) and what it is compared with (bicubic or a second model), and the tiling. Each image shows a progress
bar, then a before/after slider that zooms to single pixels, and a download of the model's output (PNG, as ribsr
upscale writes it).

Images run one at a time, in the order they were sent (--max-queued wait at most); images whose output would
have more than --max-output-pixels pixels are refused before they are decoded. The page and its script are
served by ribsr itself: nothing is loaded from the internet.

The server listens on 127.0.0.1 by default and then answers only requests that name a loopback host and come from
its own page. --host 0.0.0.0 makes it reachable from other machines: anyone who can reach it can upload images
and, unless --no-checkpoints, load checkpoint files of this machine by path.
"""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="a local web page: drop images, upscale, compare with a slider, download",
        description="Serve a web page to upscale images and compare the result with bicubic or a second model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine)")
    p.add_argument("--port", type=int, default=8765, help="port (default: %(default)s; 0: a free one)")
    p.add_argument("--max-output-pixels", type=pixel_count, default=DEFAULT_MAX_OUTPUT_PIXELS, metavar="N",
                   help="refuse images whose output would have more pixels, before decoding them (default: "
                   "%(default)s = 16384x16384, as ribsr upscale; 0: no limit)")
    p.add_argument("--max-upload-mb", type=positive(float), default=512, metavar="MB",
                   help="refuse larger uploads unread (default: %(default)s)")
    p.add_argument("--max-queued", type=positive(int), default=8, metavar="N",
                   help="images waiting at most; more are refused until one is done (default: %(default)s)")
    p.add_argument("--keep", type=positive(int), default=16, metavar="N",
                   help="finished images whose results are kept for the page (default: %(default)s)")
    p.add_argument("--no-checkpoints", action="store_true",
                   help="offer the bundled models only (no checkpoint paths of this machine)")
    p.add_argument("--max-memory", type=positive(float), default=None, metavar="GB",
                   help="memory budget in GiB for one image's activations and buffers (as ribsr upscale)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ribsr.serve import _is_loopback, make_server

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535, got {args.port}")
    server = make_server(
        args.host, args.port, max_output_pixels=args.max_output_pixels or None,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_queued=args.max_queued, keep_jobs=args.keep,
        checkpoints=not args.no_checkpoints, max_memory=args.max_memory, dtype=args.dtype, device=args.device,
    )
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this address can upload images"
              + ("" if args.no_checkpoints else " and load checkpoint files of this machine by path"),
              file=sys.stderr)
    print(f"ribsr serve: {server.url} (device {server.service.device}; Ctrl+C stops)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0
