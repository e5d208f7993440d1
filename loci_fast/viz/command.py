"""``loci-fast viz``: per-step grids and panels, GIF and MP4, slot latents and an index.html for chosen videos.

Latents are written as safetensors + JSON; index.html links everything written.

    loci-fast viz --checkpoint out/loci --data 'data/val-*.tar' --videos 0,3 --out out/viz
"""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("viz", help="per-step grids, panels, animations and latents of chosen videos",
                       description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="our run or checkpoint folder, an `export` .safetensors file, or `import-upstream` output")
    p.add_argument("--config", default=None, help="config (needed when the weights carry none)")
    p.add_argument("--data", nargs="+", required=True, metavar="SHARDS",
                   help="loci-video shards (globs); CATER shards for an original-Loci (loci-v1) model")
    p.add_argument("--out", required=True, help="output folder (index.html, manifest.json, one folder per video)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--videos", default="0", help="indices in sorted shard order, e.g. 0,3 or 2-5 (default: 0)")
    which.add_argument("--count", type=int, default=None, help="the first N videos instead of --videos")
    p.add_argument("--mode", default=None, choices=("random", "regularization", "segmentation"),
                   help="Loci-s inference mode (default: the config's model.inference_mode)")
    p.add_argument("--seed", type=int, default=1, help="torch seed before each rollout (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--scale", type=float, default=1.0, help="picture size / model input size (default: %(default)s)")
    p.add_argument("--frames", type=int, default=None,
                   help="at most this many frames per video (default: sequence_len for Loci-s, all for CATER)")
    p.add_argument("--fps", type=float, default=4.0, help="animation frame rate (default: %(default)s)")
    p.add_argument("--no-panels", action="store_true", help="skip the individual per-step panel PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .rendering import VizError, parse_videos, render

    try:
        videos = None if args.count is not None else parse_videos(args.videos)
        if args.frames is not None and args.frames < 2:
            raise VizError(f"--frames {args.frames}: a rollout needs at least 2 frames (one to predict)")
        index = render(args.checkpoint, args.data, args.out, config=args.config, videos=videos, count=args.count,
                       mode=args.mode, seed=args.seed, device=args.device, scale=args.scale, frames=args.frames,
                       panels=not args.no_panels, fps=args.fps, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"loci-fast viz: {err}", file=sys.stderr)
        return 2
    print(f"wrote {index}")
    return 0
