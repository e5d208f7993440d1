"""``loci-fast eval`` of an original-Loci CATER model: snitch localisation (reference loci.md §4.1).

    loci-fast eval --checkpoint cater.safetensors --config configs/cater-stage4.json \
        --data 'shards/test-*.tar' --out out/eval-cater

Every video of the shards runs upstream's rollout (``cater_rollout``); the tracker's prediction for
the last frame gives top-1, top-5, L1 (the intended grid distance ``l1_grid`` and upstream's
as-implemented value ``l1_upstream``, quirk §11.1) and L2 in world units; the per-frame L2 of
contained frames gives the L2-versus-containment-duration quantiles. Videos are batched (a video's
numbers do not depend on its batch) and split over the ranks of a torchrun/deepspeed launch (each
video once; rank 0 writes). ``samples.jsonl`` holds one line per finished video, so an interrupted
run resumes where it stopped; ``results.{json,md}`` and ``containment.{json,md}`` summarise.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .cater import containment_pairs, l2_versus_containment, localisation_summary, snitch_localisation, tracking_l2
from .cater_rollout import VideoNoise, rollout_snitch
from .cater_videos import VideoRef, batch_count, iter_batches, list_cater_videos, rank_share
from .ranks import broadcast, gather, local_device, world

KIND = "loci-v1"
WARMUP_TARGETS = ("carry-over", "frame0")  # upstream's eval rollout (§11.14), or frame 0 at every warm-up step
METRICS = ("top1", "top5", "l1_grid", "l1_upstream", "l2")


def config_kind(cfg: Any) -> str:
    """'loci-v1' for an original-Loci config, else 'loci-s'."""
    try:
        return str(cfg["kind"])
    except (KeyError, TypeError):
        return "loci-s"


def handles(kind: str | None, cfg: Any) -> bool:
    """Whether ``loci-fast eval`` with ``--kind kind`` on ``cfg`` is this evaluator's job.

    Raises ValueError when the kind and the config disagree, naming the fix.
    """
    v1 = config_kind(cfg) == KIND
    if kind == KIND and not v1:
        raise ValueError("--kind loci-v1 evaluates the original Loci on CATER, but the config is a Loci-s config: "
                         "pass the CATER model's config with --config (e.g. configs/cater-stage4.json)")
    if kind not in (None, KIND) and v1:
        raise ValueError(f"--kind {kind} cannot evaluate an original-Loci (CATER) config; leave --kind out or pass "
                         "--kind loci-v1")
    return v1


def build_model(cfg: Any, state: Mapping[str, torch.Tensor], device: torch.device):
    """The original Loci of ``cfg`` with ``state`` loaded strictly, in eval mode on ``device``.

    Raises ValueError when the weights are not this config's original-Loci model (e.g. Loci-s weights).
    """
    from loci_fast.loci_v1 import LociV1

    model = LociV1.from_config(cfg["model"], teacher_forcing=cfg["teacher_forcing"])
    mine = model.state_dict()
    missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    shapes = [k for k in set(mine) & set(state) if tuple(mine[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        loci_s = ("object_discovery.", "update_gate.", "mask_pretrainer.", "rgb_pretrainer.", "depth_pretrainer.")
        looks = " (they look like Loci-s weights)" if any(k.startswith(loci_s) for k in extra) else ""
        raise ValueError(f"the checkpoint is not an original-Loci model of this config{looks}: {len(missing)} "
                         f"tensors missing, {len(extra)} unknown, {len(shapes)} with other shapes (e.g. "
                         f"{(missing + extra + sorted(shapes))[:3]}). Pass a CATER model: `loci-fast import-upstream "
                         "--kind loci-v1` output of an upstream net*.pt, with the --config it was trained with")
    model.load_state_dict({k: state[k] for k in mine}, strict=True)
    return model.to(device).eval()


def frame_size(model) -> tuple[int, int]:
    """(h, w) of the frames the model's level reads: input_size at level 2, input_size / 4 at level 1."""
    f = 4 ** (2 - model.level)
    return model.input_size[0] // f, model.input_size[1] // f


def video_records(model, batch: list[dict], *, seed: int, warmup_carryover: bool,
                  device: torch.device) -> list[dict[str, Any]]:
    """Roll out one batch of decoded CATER videos and score each: one JSON-ready record per video."""
    lengths = [item["num_frames"] for item in batch]
    for item in batch:
        if len(item["snitch_xyz"]) != item["num_frames"]:
            ref = item["ref"]
            raise ValueError(f"shard {ref.shard}, video {ref.key!r}: {item['num_frames']} frames but "
                             f"{len(item['snitch_xyz'])} snitch locations; convert the release again")
        if item["num_frames"] < 2:
            raise ValueError(f"shard {item['ref'].shard}, video {item['ref'].key!r}: needs at least 2 frames")
    steps = max(lengths) - 1
    frames = torch.from_numpy(np.stack([item["frames"][: steps + 1] for item in batch])).to(device)
    background = torch.from_numpy(np.concatenate([item["background"] for item in batch])).to(device)
    noise = VideoNoise(model, [item["ref"].key for item in batch], seed)
    snitch = rollout_snitch(model, frames, background, noise, steps=steps,
                            warmup_carryover=warmup_carryover).double().cpu()
    for i, item in enumerate(batch):
        if not torch.isfinite(snitch[i, 1:item["num_frames"]]).all():
            raise ValueError(f"video {item['ref'].key!r} ({item['ref'].shard}): the tracker's snitch prediction is "
                             "not finite (NaN or inf); the checkpoint's weights are broken, evaluate another one")
    records = []
    for i, item in enumerate(batch):
        ref: VideoRef = item["ref"]
        t = item["num_frames"]
        xyz = torch.from_numpy(item["snitch_xyz"])
        final = snitch_localisation(snitch[i, t - 1][None], torch.tensor([item["label"]]), xyz[-1][None])
        l2 = tracking_l2(snitch[i, 1:t], xyz[1:t]).tolist()
        rec = {"batch": ref.ordinal,  # ResultLog's unit: here one video
               "video": ref.key, "shard": ref.shard, "split": ref.split, "frames": t,
               "label": int(final["label"][0]), "target": int(item["label"]),
               **{k: (bool(final[k][0]) if k in ("top1", "top5") else float(final[k][0])) for k in METRICS},
               "screen": snitch[i, t - 1].tolist(), "world": final["world"][0].tolist(),
               "target_xyz": xyz[-1].tolist(), "l2_track": [None] + l2,
               "contained": [int(c > 0.5) for c in item["contained"][:t]]}
        records.append(rec)
    return records


def summarise(records: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(row, containment)``: the means of ``METRICS`` over the videos, and the L2-versus-containment
    curves (ours: the L2 of frame t against the duration at frame t; upstream's one-frame offset, §11.17)."""
    if not records:
        raise ValueError("no videos were evaluated")
    res = {k: torch.tensor([float(r[k]) for r in records], dtype=torch.float64) for k in METRICS}
    row: dict[str, Any] = {"videos": len(records), **localisation_summary(res)}
    curves = {}
    for name, offset in (("containment", False), ("containment_upstream_offset", True)):
        vals, durs = [], []
        for r in records:
            l2 = torch.tensor([float("nan") if v is None else v for v in r["l2_track"]], dtype=torch.float64)
            v, d = containment_pairs(l2[None], torch.tensor(r["contained"], dtype=torch.float64)[None],
                                     upstream_offset=offset)
            vals.append(v)
            durs.append(d)
        c = l2_versus_containment(torch.cat(vals), torch.cat(durs))
        curves[name] = {"duration": c["duration"].tolist(), "count": c["count"].tolist(), "q": c["q"].tolist(),
                        "quantiles": c["quantiles"].tolist(), "mean": c["mean"].tolist()}
    return row, curves


def write_containment(out: Path, curves: dict[str, Any]) -> Path:
    """``containment.json`` (both curves) and ``containment.md`` (ours, one row per duration)."""
    (out / "containment.json").write_text(json.dumps(curves, indent=1) + "\n")
    c = curves["containment"]
    qs = " | ".join(f"q{round(q * 100)}" for q in c["q"])
    lines = ["# L2 (world units) versus containment duration", "",
             "Duration: consecutive frames the snitch has been inside a cone at the scored frame. Upstream's "
             "one-frame offset: containment.json, `containment_upstream_offset`.", "",
             f"| frames contained | predictions | {qs} | mean |", "|---|---|" + "---|" * (len(c["q"]) + 1)]
    for d, n, q, m in zip(c["duration"], c["count"], c["quantiles"], c["mean"]):
        lines.append(f"| {d} | {n} | " + " | ".join(f"{v:.4f}" for v in q) + f" | {m:.4f} |")
    (out / "containment.md").write_text("\n".join(lines) + "\n")
    return out / "containment.md"


def _open_log(out: str | Path, fresh: bool, settings: dict[str, Any], rank: int, size: int):
    """Rank 0's ResultLog (None elsewhere) and, on every rank, the ordinals already done; a refused
    resume raises on every rank."""
    from .results import ResultLog

    log, done = None, None
    if rank == 0:
        try:
            log = ResultLog(out, fresh=fresh)
            log.check_settings(settings)
            done = sorted(log.done)
        except ValueError as err:
            done = str(err)
    done = broadcast(done, size)
    if isinstance(done, str):
        raise ValueError(done)
    return log, set(done)


def _run_share(model, refs: Sequence[VideoRef], todo: int, log, bar, *, size: int, batch_size: int,
               seed: int, warmup_carryover: bool, device: torch.device) -> None:
    """Evaluate this rank's videos batch by batch; after each batch rank 0 logs every rank's records."""
    stream = iter_batches(refs, batch_size, size=frame_size(model))
    for _ in range(batch_count(todo, size, batch_size)):
        try:
            batch = next(stream, [])
            records: list | str = video_records(model, batch, seed=seed, device=device,
                                                warmup_carryover=warmup_carryover) if batch else []
        except ValueError as err:  # passed to every rank, so none waits for a rank that stopped
            records = str(err)
        parts = gather(records, size)
        failed = [p for p in parts if isinstance(p, str)]
        if failed:
            raise ValueError(failed[0])
        for part in parts:
            for rec in part if log is not None else ():
                log.add(rec["batch"], [rec], {"video": rec["video"]})
            if bar is not None:
                bar.update(len(part))


def _write_summary(out: str | Path, records: list[dict[str, Any]], header: dict[str, Any]) -> dict[str, Any]:
    """results.{json,md} and containment.{json,md}; returns the summary."""
    from .results import write_table

    row, curves = summarise(records)
    columns = [("videos", "videos"), ("top1", "top-1"), ("top5", "top-5"), ("l1_grid", "L1 grid (cells)"),
               ("l1_upstream", "L1 as upstream computes it"), ("l2", "L2 (world units)")]
    note = ("At the last frame: top-1 = predicted 6x6 cell is the target cell, top-5 = target among the 5 cells "
            "nearest the prediction (fractions of videos). L1 grid = |dcol| + |drow| in cells; L1 as upstream "
            "computes it = |dcol| + |dk|/6 (true division of the class index, quirk 11.1). L2 = world distance "
            "of the prediction lifted to the snitch plane. Per video: samples.jsonl; L2 versus containment "
            "duration: containment.md.")
    results, table = write_table(out, header, [row], columns, note)
    results.write_text(json.dumps({**json.loads(results.read_text()), "containment": curves}, indent=1) + "\n")
    write_containment(Path(out), curves)
    return {"row": row, "containment": curves, "table": str(table)}


def evaluate_tracking(cfg: Any, state: Mapping[str, torch.Tensor], shards: str | Sequence[str], out: str | Path, *,
                      batch_size: int = 16, device: str | None = None, fresh: bool = False, progress: bool = True,
                      seed: int = 7, warmup_target: str = "carry-over", videos: int | None = None,
                      source: str = "weights") -> dict[str, Any]:
    """Evaluate a CATER model on every video of ``shards`` (or the first ``videos``); see the module docstring.

    Under torchrun or the deepspeed launcher each rank evaluates its share and rank 0 writes. Returns
    (on every rank) ``{"row": metrics, "containment": curves, "table": path of results.md}``.
    """
    if batch_size < 1 or (videos is not None and videos < 1):
        raise ValueError("--batch-size and --videos must be >= 1")
    if warmup_target not in WARMUP_TARGETS:
        raise ValueError(f"--warmup-target {warmup_target!r}: choose one of {', '.join(WARMUP_TARGETS)}")
    rank, size = world()
    dev = local_device(device)
    model = build_model(cfg, state, dev)
    refs = list_cater_videos(shards)[:videos]
    shard_list = [shards] if isinstance(shards, str) else list(shards)
    settings = {"kind": KIND, "checkpoint": source, "data": shard_list, "seed": seed, "warmup_target": warmup_target}
    log, done = _open_log(out, fresh, settings, rank, size)
    todo = [r for r in refs if r.ordinal not in done]
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(refs), initial=len(refs) - len(todo), unit="video", desc="eval cater", dynamic_ncols=True)
    try:
        _run_share(model, rank_share(todo, rank, size), len(todo), log, bar, size=size,
                   batch_size=batch_size, seed=seed, warmup_carryover=warmup_target == "carry-over", device=dev)
    finally:
        if bar is not None:
            bar.close()
    summary = None
    if log is not None:
        wanted = {r.ordinal for r in refs}
        header = {"title": "loci-fast eval: CATER snitch localisation", "checkpoint": source,
                  "data": " ".join(shard_list), "splits": ", ".join(sorted({r.split for r in refs})),
                  "seed": seed, "warmup_target": warmup_target, "device": str(dev), "ranks": size}
        summary = _write_summary(out, [r for r in log.samples if r["batch"] in wanted], header)
    return broadcast(summary, size)


def evaluate_command(args: Any, weights: Any, cfg: Any, stage: str | None = None) -> dict[str, Any]:
    """``loci-fast eval`` for kind loci-v1 (called by eval/command.py): the summary line on rank 0 only."""
    out = evaluate_tracking(cfg, weights.state, args.data, args.out, batch_size=args.batch_size, device=args.device,
                             fresh=args.fresh, progress=not args.no_progress, seed=args.seed,
                             warmup_target=getattr(args, "warmup_target", "carry-over"),
                             videos=getattr(args, "videos", None), source=weights.source)
    if world()[0] != 0:
        return {}
    line = ", ".join(f"{k} {v:.4f}" for k, v in out["row"].items() if isinstance(v, float))
    return {**out, "summary": line}
