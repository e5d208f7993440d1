"""``loci-fast eval``: evaluate a checkpoint on held-out data; per-sample JSONL (resumable) and a table.

    loci-fast eval --checkpoint out/stage2 --data 'data/val-*.tar' --out out/eval-stage2
    loci-fast eval --checkpoint out/loci --data 'data/val-*.tar' --modes random,regularization --seeds 1-5 \
        --batch-size 8 --out out/eval-loci

Each model kind has an evaluator (``EVALUATORS``: kind -> ``module:function(args, weights, cfg, stage)``
returning ``{"table": path, "summary": line}``); object-pretraining runs (mask, depth, rgb, stage1,
stage2) report mean IoU and position error on held-out crops, Loci-s runs (stage loci) the MOVi
table over whole videos (``loci_fast.eval.video``).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# kind -> "module:function"; a kind's evaluator runs the whole evaluation of its weights.
EVALUATORS = {"pretrainer": "loci_fast.eval.command:evaluate_pretrainer",
              "loci": "loci_fast.eval.video.command:evaluate_loci",
              "loci-v1": "loci_fast.eval.tracking:evaluate_command"}  # the original Loci: CATER tracking
PRETRAINER_STAGES = ("mask", "depth", "rgb", "stage1", "stage2")
STAGE_KINDS = {**{s: "pretrainer" for s in PRETRAINER_STAGES}, "loci": "loci"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on held-out data (per-sample JSONL and a table)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="our run folder or checkpoint folder, an `export` .safetensors file, or `import-upstream` output")
    p.add_argument("--config", default=None,
                   help="config (needed when the weights carry none, e.g. import-upstream output)")
    p.add_argument("--data", nargs="+", required=True, metavar="SHARDS", help="held-out loci-video shards (globs)")
    p.add_argument("--out", required=True, help="folder for the per-sample JSONL (samples.jsonl + batches.jsonl, or videos.jsonl for Loci-s) and "
                        "results.{json,md}")
    p.add_argument("--batch-size", type=int, default=16,
                   help="crops (object pretraining) or videos (Loci-s) per batch (default: %(default)s)")
    p.add_argument("--batches", type=int, default=8, help="object pretraining: batches to evaluate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=7,
                   help="object pretraining: seed of the held-out crop stream (default: %(default)s)")
    p.add_argument("--modes", default="random",
                   help="Loci-s: inference modes, comma separated: random, regularization, segmentation "
                        "(segmentation needs the proposal in the weights) (default: %(default)s)")
    p.add_argument("--seeds", default="1", help="Loci-s: seeds of the model's random draws, e.g. 1-5 or 1,3 "
                                                "(the videos stay the same) (default: %(default)s)")
    p.add_argument("--videos", type=int, default=None,
                   help="Loci-s: only the first N videos of each --data set; CATER: the first N videos (default: all)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="Loci-s: compute precision. In float32 (as upstream) the rounding of another batch size or "
                        "rank count can move a pixel across a mask threshold; float64 makes that vanishingly "
                        "rare (default: %(default)s)")
    p.add_argument("--stage", default=None, help="stage of the weights (default: stored with them, else from the config)")
    p.add_argument("--kind", default=None, choices=sorted(EVALUATORS), help="model kind (default: from the stage)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--fresh", action="store_true", help="discard earlier results in --out instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # --- original Loci on CATER (kind loci-v1, loci_fast.eval.tracking) ---
    p.add_argument("--warmup-target", default="carry-over", choices=("carry-over", "frame0"),
                   help="CATER: warm-up steps reuse the faded target as upstream's eval does (carry-over, default) "
                        "or re-read frame 0 (quirk 11.14)")
    p.set_defaults(func=run)


def evaluator(kind: str):
    """The evaluation function of a model kind."""
    module, name = EVALUATORS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def kind_of(stage: str) -> str:
    if stage in STAGE_KINDS:
        return STAGE_KINDS[stage]
    raise ValueError(f"no evaluator for stage {stage!r} yet; `loci-fast eval` evaluates {', '.join(STAGE_KINDS)}")


def run(args: argparse.Namespace) -> int:
    from loci_fast.data.errors import DataError

    try:
        summary = evaluate_checkpoint(args)
    except (ValueError, FileNotFoundError, DataError) as err:
        print(f"loci-fast eval: {err}", file=sys.stderr)
        return 2
    if summary.get("table"):
        print(f"wrote {summary['table']}: {summary['summary']}")
    return 0


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    """Load the weights and their config, then run the evaluator of their model kind."""
    from loci_fast.train.stages import stage_from_config

    from .weights import load_weights_and_config

    weights, cfg = load_weights_and_config(args.checkpoint, args.config)
    from .tracking import handles  # the original Loci on CATER: its own evaluator, over whole videos

    if handles(args.kind, cfg):
        return evaluator("loci-v1")(args, weights, cfg, None)
    stage = args.stage or weights.stage or stage_from_config(cfg)
    kind = args.kind or kind_of(stage)
    return evaluator(kind)(args, weights, cfg, stage)


def evaluate_pretrainer(args: argparse.Namespace, weights, cfg, stage: str) -> dict:
    """Object-pretraining weights on held-out crops: per-crop JSONL (resumable by batch) and the table."""
    import torch

    from .pretraining import PretrainerEvaluator, summarise
    from .results import ResultLog, write_table

    if args.batch_size < 1 or args.batches < 1:
        raise ValueError("--batch-size and --batches must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    evaluator = PretrainerEvaluator(cfg, weights.state, stage, device)
    log = ResultLog(args.out, fresh=args.fresh)
    settings = {"checkpoint": weights.source, "data": list(args.data), "stage": stage, "batch_size": args.batch_size,
                "seed": args.seed}
    log.check_settings(settings)
    done = log.done
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.batches, initial=len(done & set(range(args.batches))), unit="batch",
                   desc=f"eval {stage}", dynamic_ncols=True)
    stream = evaluator.batches(args.data, batch_size=args.batch_size, seed=args.seed)
    for index in range(args.batches):
        batch = next(stream)  # drawn even when done, so later batches are the same crops
        if index in done:
            continue
        result = evaluator.evaluate(batch, index)
        log.add(index, result.records, result.terms)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    kept = set(range(args.batches))
    row = {"stage": stage, **summarise([r for r in log.samples if r["batch"] in kept],
                                       [b for b in log.batches if b["batch"] in kept])}
    header = {"title": f"loci-fast eval: {stage}", "checkpoint": weights.source, "data": " ".join(args.data),
              "batch_size": args.batch_size, "seed": args.seed, "device": str(device)}
    columns = [("stage", "stage"), ("crops", "crops"), ("mean_iou", "mean IoU"),
               ("position_px", "position error (px)"), ("on_object", "on-object share"), ("model_loss", "loss"),
               ("model_mask_loss", "mask loss"), ("model_rgb_loss", "rgb loss"), ("model_depth_loss", "depth loss")]
    note = ("Mean IoU: decoded mask > 0.5 against the object mask > 0.5, per crop. Position error: the "
            "encoder's (x, y) against the mask centroid, in pixels of the crop. On-object share: crops with "
            "IoU >= 0.25. Losses: the model's terms, batch means. Per crop: samples.jsonl.")
    table, _ = write_table(args.out, header, [row], columns, note)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float))
    return {"row": row, "table": str(table), "log": log, "summary": summary}
