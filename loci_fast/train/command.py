"""``loci-fast train`` and ``loci-fast export``: argument parsing only; imports stay lazy.

Under the DeepSpeed launcher (the launcher adds ``--local_rank`` before the subcommand, which
``loci_fast.cli`` accepts)::

    deepspeed --num_gpus 2 --module loci_fast.cli train --config CFG --out DIR
    torchrun --nproc_per_node 2 -m loci_fast.cli train --config CFG --out DIR
    loci-fast train --config CFG --out DIR          # one process, no launcher
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``export`` subcommands."""
    p = subparsers.add_parser(
        "train", help="train one stage under DeepSpeed (mask, depth, rgb, stage1, stage2, background, proposal, ...)",
        description="Train one stage. The stage follows from the config's pretraining_mode and "
                    "pretrainer_iterations (as upstream) unless --stage names it.")
    p.add_argument("--config", required=True, help="training config (upstream JSON schema)")
    p.add_argument("--data", nargs="+", metavar="SHARDS",
                   help="training shard patterns, e.g. 'data/synth-{000000..000003}.tar' "
                        "(default: the config's data.train)")
    p.add_argument("--deepspeed", metavar="DS.json",
                   help="DeepSpeed config (default: the config's 'deepspeed' key, else fp32 ZeRO 0)")
    p.add_argument("--out", help="run folder: checkpoints, metrics.jsonl, TensorBoard, images "
                                 "(default out/<model_path>)")
    p.add_argument("--init-from", nargs="+", default=[], metavar="CKPT",
                   help="initialise weights from earlier stages' checkpoints (run folders, "
                        "checkpoint folders or .safetensors files)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue a run: 'auto' = latest complete checkpoint in --out")
    p.add_argument("--max-steps", type=int, help="optimiser steps to train (default: until stopped)")
    p.add_argument("--seed", type=int, help="random seed (default: the config's seed)")
    p.add_argument("--stage", help="stage name, overriding the config (see loci_fast/train/stages/: "
                                   "mask, depth, rgb, stage1, stage2, background, proposal, ...), "
                                   "or package.module:ATTRIBUTE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set model.batch_size=8 (repeatable)")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--image-every", type=int, default=250, help="PNG grid every N steps")
    p.add_argument("--keep", type=int, default=2, help="complete checkpoints kept (0: all)")
    p.add_argument("--max-nonfinite", type=int, default=10,
                   help="stop (with a checkpoint) after this many non-finite losses in a row")
    p.add_argument("--workers", type=int, help="data workers per rank (default: num_workers)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (metrics.jsonl and TensorBoard still written)")
    p.set_defaults(func=_train)

    e = subparsers.add_parser("export", help="write a checkpoint's weights as safetensors",
                              description="Export plain weights (fp32) with the config and "
                                          "stage as metadata.")
    e.add_argument("checkpoint", help="run folder, its checkpoints folder, or one checkpoint folder")
    e.add_argument("--out", required=True, help="output .safetensors file")
    e.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    from loci_fast.data import DataError

    from .engine import train
    from .errors import TrainError
    from .preflight import TrainOptions

    options = TrainOptions(
        config=args.config, data=args.data, deepspeed=args.deepspeed, out=args.out,
        init_from=args.init_from, resume=args.resume, max_steps=args.max_steps, seed=args.seed,
        stage=args.stage, overrides=args.overrides, save_every=args.save_every,
        image_every=args.image_every, keep=args.keep, max_nonfinite=args.max_nonfinite,
        workers=args.workers, progress=args.progress)
    try:
        train(options)
    except (TrainError, DataError) as err:
        print(f"loci-fast train: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


def _export(args: argparse.Namespace) -> int:
    from .errors import TrainError
    from .export import export

    try:
        path, count = export(args.checkpoint, args.out)
    except (TrainError, FileNotFoundError) as err:
        print(f"loci-fast export: error: {err}", file=sys.stderr, flush=True)
        return 2
    print(f"wrote {count} tensors to {path}")
    return 0
