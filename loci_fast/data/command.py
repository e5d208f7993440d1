"""``loci-fast data synth|convert-hdf5|convert-cater|inspect``: thin wrappers; the work lives in loci_fast.data."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="make, convert and inspect loci-video shards")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    p = dsub.add_parser("synth", help="simulate MOVi-style PyBullet videos into shards")
    p.add_argument("--out", required=True, help="output folder for <split>-%%06d.tar")
    p.add_argument("--videos", type=int, required=True, help="number of videos")
    p.add_argument("--frames", type=int, default=24, help="frames per video (default: %(default)s)")
    p.add_argument("--size", type=int, default=128, help="frame height = width in pixels (default: %(default)s)")
    p.add_argument("--objects", type=int, nargs=2, default=(3, 10), metavar=("MIN", "MAX"),
                   help="objects per scene, inclusive range (default: 3 10)")
    p.add_argument("--object-size", type=float, nargs=2, default=(0.4, 1.0), metavar=("MIN", "MAX"),
                   help="largest extent of an object in metres, drawn uniformly (default: 0.4 1.0; "
                        "the camera is 4.5-6 m away)")
    p.add_argument("--camera", choices=("static", "moving"), default="static",
                   help="static (MOVi-A..D-like) or moving (MOVi-E-like) camera")
    p.add_argument("--seed", type=int, default=0, help="base seed; video i uses (seed, i)")
    p.add_argument("--split", default="train", help="split name, also the shard name prefix")
    p.add_argument("--shard-videos", type=int, default=64, help="videos per shard (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="parallel simulation processes")
    p.add_argument("--rgb-codec", choices=("png", "jpg"), default="png",
                   help="png: lossless (default); jpg: quality 95, ~3x smaller, lossy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cater", action="store_true",
                   help="instead: write a small CATER-like folder in the layout of the authors' release "
                        "(procedural frames at 320x240 and 80x60, labels, background) for convert-cater; "
                        "uses --out (a new folder), --videos, --frames (at most 301), --seed")
    p.set_defaults(func=_synth)

    p = dsub.add_parser("convert-hdf5", help="convert an upstream Loci-Segmented HDF5 file into shards")
    p.add_argument("input", help="upstream HDF5 file (rgb_images, depth_images, instance_masks, ...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default=None, help="shard name prefix (default: the file's metadata type, "
                   "e.g. train)")
    p.add_argument("--dataset", default=None, help="dataset name for meta.json (default: from the file)")
    p.add_argument("--shard-videos", type=int, default=64, help="videos per shard (default: %(default)s)")
    p.add_argument("--static-camera", choices=("true", "false"), default="true",
                   help="whether the camera is static (MOVi-A..D: true; E, F: false)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_convert)

    p = dsub.add_parser("convert-cater", help="convert the authors' preprocessed CATER release into shards")
    p.add_argument("input", help="release folder: background.jpg, labels/<video>.json, <video>/train/<W>x<H>/frame*")
    p.add_argument("--out", required=True, help="output folder for train|val|test-%%06d.tar, background.jpg, "
                   "cater-splits.json")
    p.add_argument("--split", choices=("sorted", "upstream"), default="sorted",
                   help="sorted: names sorted, integer 56/14/30 %% bounds (default); upstream: file-system order "
                        "and upstream's float bounds (one video in val and test, the last in none)")
    p.add_argument("--resolutions", nargs="+", default=["320x240", "80x60"], metavar="WxH",
                   help="frame folders to keep, the first is the primary (default: 320x240 80x60)")
    p.add_argument("--shard-videos", type=int, default=16, help="videos per shard (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="parallel reading processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_convert_cater)

    p = dsub.add_parser("inspect", help="summarise shards; --check decodes and validates every sample")
    p.add_argument("paths", nargs="+", help="shard files, folders, globs or brace patterns")
    p.add_argument("--check", action="store_true", help="decode and validate every sample")
    p.set_defaults(func=_inspect)


def _fail(action: str, err: Exception) -> int:
    """A user's mistake (bad option, bad input file, a folder of other shards): one line, no traceback."""
    print(f"loci-fast data {action}: error: {err}", file=sys.stderr, flush=True)
    return 2


# What the work functions raise for a mistake on the command line or in the input (not for bugs).
_USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError)


def _synth(args: argparse.Namespace) -> int:
    from .errors import DataError
    from .synth.run import SynthConfig, run_synth

    if args.cater:
        from .cater.synth import make_release

        try:
            make_release(args.out, args.videos, args.frames, seed=args.seed)
        except (*_USER_ERRORS,) as err:
            return _fail("synth", err)
        print(f"CATER-like release folder with {args.videos} video(s) in {args.out}; next: "
              f"loci-fast data convert-cater {args.out} --out SHARDS")
        return 0
    cfg = SynthConfig(frames=args.frames, size=args.size, min_objects=args.objects[0],
                      max_objects=args.objects[1], min_object_size=args.object_size[0],
                      max_object_size=args.object_size[1], camera=args.camera, seed=args.seed, split=args.split,
                      rgb_codec=args.rgb_codec)
    try:
        paths = run_synth(args.out, args.videos, cfg, shard_videos=args.shard_videos, workers=args.workers,
                          progress=not args.no_progress)
    except (DataError, *_USER_ERRORS) as err:
        return _fail("synth", err)
    print(f"{len(paths)} shard(s) in {args.out}: {paths[0].name} .. {paths[-1].name}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert_hdf5 import convert_hdf5
    from .errors import DataError

    try:
        paths = convert_hdf5(args.input, args.out, name=args.name, dataset=args.dataset,
                             shard_videos=args.shard_videos, static_camera=args.static_camera == "true",
                             progress=not args.no_progress)
    except (DataError, *_USER_ERRORS) as err:
        return _fail("convert-hdf5", err)
    print(f"wrote {len(paths)} shard(s) to {args.out}")
    return 0


def _convert_cater(args: argparse.Namespace) -> int:
    from .convert_cater import convert_cater
    from .errors import DataError

    try:
        paths = convert_cater(args.input, args.out, split=args.split, shard_videos=args.shard_videos,
                              resolutions=tuple(args.resolutions), workers=args.workers,
                              progress=not args.no_progress)
    except (DataError, *_USER_ERRORS) as err:
        return _fail("convert-cater", err)
    print(f"wrote {', '.join(f'{s}: {len(p)} shard(s)' for s, p in paths.items())} to {args.out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect_shards

    report = inspect_shards(args.paths, check=args.check, progress=sys.stderr.isatty())
    print(report.text())
    return 0 if report.ok else 1
