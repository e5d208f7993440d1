"""``python -m loci_fast.demo``: the demo from data to REPORT.md, resumable."""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from . import DESCRIPTION
from .evaluate import evaluate, evaluate_background
from .loci import evaluate_loci
from .report import plot_losses, write_report
from .stages import DATA, LOCI_DATA, STAGES, DemoStage, _add_seconds, _timings, launcher, make_data, step_time, \
    train_stage

EVALUATORS = {"object": evaluate, "background": evaluate_background, "loci": evaluate_loci}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loci_fast.demo", description=DESCRIPTION)
    parser.add_argument("--out", default="out/demo", help="demo folder (default out/demo)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks per stage (default 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    (out / "report").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(f"demo: output in {out}", flush=True)
    workers = max(1, min(2, os.cpu_count() or 1))
    shards = {"train": make_data(out, workers, DATA), "loci-train": make_data(out, workers, LOCI_DATA, "loci-")}
    _add_seconds(out, "data", time.perf_counter() - started)
    prefix, device = launcher(args.ranks)
    stages = [DemoStage(s.name, s.config, s.steps, s.init_from, s.kind) for s in STAGES]
    evaluating = 0.0
    for stage in stages:
        print(f"\ndemo: stage {stage.name} on {device}", flush=True)
        train, val = shards[stage.data]
        train_stage(stage, out, train, prefix, args.scale)
        stage.seconds = _add_seconds(out, stage.name, stage.seconds)
        stage.step_seconds = step_time(out / stage.name)
        t0 = time.perf_counter()
        EVALUATORS[stage.kind](stage, out, val)
        evaluating += time.perf_counter() - t0
    plot_losses(stages, out)
    # Wall time of the whole demo, across resumed invocations: data and training as accumulated,
    # evaluation and report as this invocation spent them.
    total = sum(_timings(out).values()) + evaluating
    report = write_report(stages, out, device, total)
    print(f"\ndemo: done in {(time.perf_counter() - started) / 60:.1f} min ({total / 60:.1f} min in all "
          f"with earlier resumed runs); report: {report}", flush=True)
    return 0
