"""``loci-fast playground``: edit one slot's latent in a local web page and see what the decoder makes of it.

    loci-fast playground --config configs/cater-stage4.json --checkpoint out/cater-v1.safetensors \\
        --background data/CATER/background.jpg

Opens nothing by itself: it prints the address to open (http://127.0.0.1:PORT/) and serves until Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("playground", help="a local web page to flip a slot's gestalt bits and move it, "
                                          "decoded live (original Loci or Loci-s)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="our run or checkpoint folder, an `export` .safetensors file, or `import-upstream` output")
    p.add_argument("--config", default=None,
                   help="the config the weights were trained with (default: the one stored with them)")
    p.add_argument("--background", default=None,
                   help="image to composite over, e.g. CATER's background.jpg (resized to the model's size; "
                        "default: flat grey)")
    p.add_argument("--latent", default=None,
                   help='start from a slot latent: JSON {"gestalt": [...], "position": [...]} or a .safetensors '
                        "with tensors gestalt and position (default: all bits 0, centred)")
    p.add_argument("--slot", type=int, default=0, help="row of --latent when it holds several slots (default: 0)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=0, help="port (default: 0, a free one)")
    p.add_argument("--device", default=None, help="torch device for the decoder (default: cuda if available, else cpu)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(func=run)


def build_server(args: argparse.Namespace):
    """Load the weights, config, background and latent of ``args``; the (unstarted) server."""
    import torch

    from loci_fast.eval.weights import load_weights_and_config

    from .images import load_background
    from .latent import read_latent
    from .server import PlaygroundServer
    from .slots import build_slot

    weights, cfg = load_weights_and_config(args.checkpoint, args.config)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    slot = build_slot(cfg, weights.state, device, weights.source)
    if args.background:
        image, resized = load_background(args.background, slot.image_size)
        if resized:
            print(f"playground: --background resized to {slot.image_size[1]}x{slot.image_size[0]}", file=sys.stderr)
        slot.set_background(image)
    latent = (read_latent(args.latent, slot.gestalt_size, slot.position_size, args.slot) if args.latent
              else slot.default_latent())
    return PlaygroundServer(slot, latent, args.host, args.port, quiet=not args.verbose)


def run(args: argparse.Namespace) -> int:
    try:
        server = build_server(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"loci-fast playground: {err}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"playground: bound to {args.host}: anyone who reaches this address can use the page",
              file=sys.stderr)
    print(f"playground ({server.slot.kind}, {server.slot.image_size[1]}x{server.slot.image_size[0]}): "
          f"open {server.url}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
