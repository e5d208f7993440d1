"""Evaluation metrics: our batched functions against upstream-style loops, side by side.

    loci-fast bench --eval [--quick]

The work of upstream's validation step on a batch of MOVi videos (reconstruction metrics, §18.1):
per frame the FG-ARI and the ARI with background, the Hungarian mIoU / mF1, the object count and
the foreground IoU / F1; per video the sequence FG-ARI and ARI. Upstream runs it one video at a
time (batch 1) with a triple-loop contingency; ours counts once for the whole batch. Shapes:
24 frames of 256x256, 17 predicted masks (16 slots and the background), 24 GT masks, batch 8.
Both see the same masks on the same device; the numbers are checked against each other before the
timings count. The AMI is off in upstream's MOVi evaluation and is not timed.
"""
from __future__ import annotations

import datetime as _dt
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

MOVI = dict(batch=8, frames=24, height=256, width=256, slots=16, objects=24)
QUICK = dict(batch=2, frames=24, height=256, width=256, slots=16, objects=24)
# Upstream's loops sum in float32; ours count exactly and combine in float64.
AGREEMENT = 1e-4


def make_masks(batch: int, frames: int, height: int, width: int, slots: int, objects: int, *,
               device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Blobby label maps as masks: soft predictions (B, T, slots+1, H, W) from a softmax with the
    background last, binary GT instance masks (B, T, objects, H, W) and the fg mask (B, T, 1, H, W)."""
    gen = torch.Generator().manual_seed(seed)

    def blobs(classes: int, cell: int) -> torch.Tensor:
        coarse = torch.randint(0, classes, (batch, frames, height // cell + 1, width // cell + 1), generator=gen)
        return coarse.repeat_interleave(cell, 2).repeat_interleave(cell, 3)[:, :, :height, :width]

    gt_labels = blobs(objects + 4, 24)  # labels >= objects are background
    gt = (gt_labels[:, :, None] == torch.arange(objects)[:, None, None]).float()
    # Predictions: the GT partition with slot ids scrambled, a few pixels reassigned, softmax-sharp.
    perm = torch.randperm(objects + 4, generator=gen) % (slots + 1)
    pred_labels = perm[gt_labels]
    noise = blobs(slots + 1, 8)
    flip = torch.rand(pred_labels.shape, generator=gen) < 0.1
    pred_labels = torch.where(flip, noise, pred_labels)
    logits = torch.rand(batch, frames, slots + 1, height, width, generator=gen)
    logits += 6.0 * (pred_labels[:, :, None] == torch.arange(slots + 1)[:, None, None])
    soft = torch.softmax(logits, dim=2)
    fg = gt.amax(2, keepdim=True)
    return {"soft": soft.to(device), "gt": gt.to(device), "fg": fg.to(device)}


def ours(soft: torch.Tensor, gt: torch.Tensor, fg: torch.Tensor) -> dict[str, torch.Tensor]:
    """All reconstruction metrics of a batch of videos with loci_fast.eval.metrics (upstream convention)."""
    from loci_fast.eval import metrics as m

    binary = soft > 0.8
    fg = fg > 0.8
    gt_all = torch.cat([gt > 0.8, ~fg], 2)  # upstream's [gt_masks, 1 - fg]
    c = m.video_counts(binary, gt_all)  # one count for every metric (bool: label-pair histograms)
    objects, slots = gt.shape[2], soft.shape[2] - 1
    c_fg = c.select(gt=slice(0, objects), pred=slice(0, slots))
    frames = c_fg.flat()
    matched = m.hungarian_from_counts(frames, convention="upstream")
    fg_iou, fg_f1 = m.foreground_iou_f1((1 - soft[:, :, -1:]).flatten(0, 1), fg.flatten(0, 1).float(),
                                        convention="upstream")
    return {"frame_fg_ari": m.ari_upstream_from_counts(frames),
            "frame_ari": m.ari_upstream_from_counts(c.flat()),
            "iou_sum": matched.iou_sum, "f1_sum": matched.f1_sum, "num_objects": matched.num_objects,
            "oca": m.counting_accuracy_from_counts(frames),
            "fg_iou": fg_iou, "fg_f1": fg_f1,
            "seq_fg_ari": m.ari_upstream_from_counts(c_fg.over_time()),
            "seq_ari": m.ari_upstream_from_counts(c.over_time())}


def upstream_style(soft: torch.Tensor, gt: torch.Tensor, fg: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same metrics the way upstream's validation step computes them: one video at a time, per frame."""
    from loci_fast.eval import upstream_loops as up

    out: dict[str, list] = {k: [] for k in ("frame_fg_ari", "frame_ari", "iou_sum", "f1_sum", "num_objects",
                                            "oca", "fg_iou", "fg_f1", "seq_fg_ari", "seq_ari")}
    for b in range(soft.shape[0]):
        video_soft, video_gt, video_fg = soft[b:b + 1], (gt[b:b + 1] > 0.8).float(), (fg[b:b + 1] > 0.8).float()
        gt_seq, rec_seq = [], []
        for t in range(soft.shape[1]):
            masks = video_soft[:, t]
            gt_t, fg_t = video_gt[:, t], video_fg[:, t]
            slots = (masks[:, :-1] > 0.8).float()
            out["oca"].append(up.oca_loops(masks[:, :-1], gt_t))
            out["frame_fg_ari"].append(up.ari_loops(gt_t, slots))
            gt_all = torch.cat((gt_t, 1 - fg_t), dim=1)
            rec_all = (masks > 0.8).float()
            out["frame_ari"].append(up.ari_loops(gt_all, rec_all))
            iou, f1 = up.fg_iou_loops(1 - masks[:, -1:], fg_t)
            out["fg_iou"].append(iou)
            out["fg_f1"].append(f1)
            iou_sum, f1_sum, num = up.miou_loops(slots, gt_t)
            out["iou_sum"].append(iou_sum)
            out["f1_sum"].append(f1_sum)
            out["num_objects"].append(num)
            gt_seq.append(gt_all)
            rec_seq.append(rec_all)
        gt_cat, rec_cat = torch.cat(gt_seq, dim=-1), torch.cat(rec_seq, dim=-1)
        out["seq_fg_ari"].append(up.ari_loops(gt_cat[:, :-1], rec_cat[:, :-1]))
        out["seq_ari"].append(up.ari_loops(gt_cat, rec_cat))
    return {k: torch.cat(v).double() for k, v in out.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run_eval_bench(*, quick: bool = False, out_dir: str | Path = "bench/results", device: str | None = None,
                   shapes: dict[str, int] | None = None, repeats: int = 3,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time both implementations, check they agree, write ``<date>-<device>-eval-metrics.{json,md}``."""
    from .results_files import write_results
    from .runner import _slug, device_name

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape = dict(shapes or (QUICK if quick else MOVI))
    data = make_masks(**shape, device=dev)
    log(f"bench --eval: {shape} on {device_name(dev)}")
    small = {k: v[:1, :1] for k, v in data.items()}  # warm-up: first-call costs (imports, allocator)
    ours(**small), upstream_style(**small)
    ours_s, ours_out = _time(lambda: ours(**data), dev, repeats)
    log(f"  ours: {ours_s:.3f} s")
    loops_s, loops_out = _time(lambda: upstream_style(**data), dev, 1)
    log(f"  upstream-style loops: {loops_s:.2f} s")
    diffs = {k: float((ours_out[k].double().flatten().cpu() - loops_out[k].flatten().cpu()).abs().max())
             for k in loops_out}
    ok = max(diffs.values()) <= AGREEMENT
    frames = shape["batch"] * shape["frames"]
    pooled = ours_out["iou_sum"].sum() / ours_out["num_objects"].sum()
    results = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "device": device_name(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "shapes": shape, "ours_s": ours_s, "upstream_loops_s": loops_s, "speedup": loops_s / ours_s,
               "ours_frames_per_s": frames / ours_s, "upstream_frames_per_s": frames / loops_s,
               "max_abs_diff": diffs, "agreement_tolerance": AGREEMENT, "ok": ok,
               "example": {"miou": float(pooled), "seq_fg_ari": float(ours_out["seq_fg_ari"].mean())}}
    write_results(out_dir, f"{results['date'][:10]}-{_slug(results['device'])}-eval-metrics", results,
                  markdown(results))
    return results


def markdown(r: dict[str, Any]) -> str:
    s = r["shapes"]
    lines = ["# Evaluation metrics: batched against upstream-style loops", "",
             f"- device: {r['device']} ({r['threads']} threads)", f"- date: {r['date']}", f"- torch {r['torch']}",
             f"- shapes: batch {s['batch']}, {s['frames']} frames of {s['height']}x{s['width']}, "
             f"{s['slots'] + 1} predicted masks (incl. background), {s['objects']} GT masks",
             "- metrics: per frame FG-ARI, ARI, Hungarian mIoU/mF1, OCA, fg IoU/F1; per video sequence "
             "FG-ARI and ARI (upstream convention)", "",
             "| implementation | seconds per batch | frames/s | speed-up |", "|---|---|---|---|",
             f"| upstream-style loops (batch 1 per video) | {r['upstream_loops_s']:.2f} | "
             f"{r['upstream_frames_per_s']:.1f} | 1.0x |",
             f"| loci_fast.eval.metrics (batched) | {r['ours_s']:.3f} | {r['ours_frames_per_s']:.1f} | "
             f"{r['speedup']:.0f}x |", "",
             f"Agreement (max abs difference per metric, gate {r['agreement_tolerance']:g}): "
             f"{'ok' if r['ok'] else 'FAILED'}; worst {max(r['max_abs_diff'].values()):.1e}.", ""]
    lines += [f"- {k}: {v:.1e}" for k, v in r["max_abs_diff"].items()]
    return "\n".join(lines) + "\n"
