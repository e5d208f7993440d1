"""The evaluation table of Loci-s runs: upstream's ``eval-movi.py`` shape beside the standard metrics.

Per (mode, dataset, seed) over the videos: IoU = Σ matched IoU / Σ non-empty GT masks × 100 (the
pooled ratio upstream's Lightning epoch means give, §18.2) and ARI = mean sequence FG-ARI × 100;
then mean ± sample standard deviation over the seeds (no std with one seed). The upstream table has
one row per mode and IoU, then ARI, columns per dataset; the standard table one row per (mode,
dataset) with FG-ARI over the video, mBO, mIoU, foreground IoU and OCA, likewise over seeds.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable

SHORT = {"random": "rnd", "regularization": "reg", "segmentation": "seg"}  # upstream's row names

Records = list[dict[str, Any]]


def _pooled(num: str, den: str, part: str) -> Callable[[Records], float | None]:
    def f(recs: Records) -> float | None:
        d = sum(r[part][den] for r in recs)
        return 100 * sum(r[part][num] for r in recs) / d if d else None
    return f


def _mean(key: str, part: str) -> Callable[[Records], float | None]:
    def f(recs: Records) -> float | None:
        vals = [r[part][key] for r in recs if r[part].get(key) is not None]
        return 100 * sum(vals) / len(vals) if vals else None
    return f


#: column -> (title, per-seed value from a seed's records); the first two are upstream's table
COLUMNS: dict[str, tuple[str, Callable[[Records], float | None]]] = {
    "iou": ("IoU", _pooled("iou_sum", "num_objects", "upstream")),
    "ari": ("ARI", _mean("seq_fg_ari", "upstream")),
    "fg_ari": ("FG-ARI (video)", _mean("fg_ari", "standard")),
    "fg_ari_frame": ("FG-ARI (frame)", _mean("fg_ari_frame", "standard")),
    "mbo": ("mBO", _mean("mbo", "standard")),
    "miou": ("mIoU", _pooled("iou_sum", "num_objects", "standard")),
    "pred_miou": ("mIoU (prediction)", _pooled("pred_iou_sum", "pred_num_objects", "standard")),
    "fg_iou": ("fg IoU", _mean("fg_iou", "standard")),
    "oca": ("OCA", _mean("oca", "upstream")),
}
STANDARD = ("fg_ari", "fg_ari_frame", "mbo", "miou", "pred_miou", "fg_iou", "oca")


def _spread(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    return {"mean": statistics.mean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else None, "seeds": len(vals)}


def table_rows(records: Records, *, modes: list[str], datasets: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """One row per (mode, dataset): videos, and per column ``{mean, std, seeds}`` over the seeds."""
    rows = []
    for mode in modes:
        for ds in datasets:
            per_seed = {s: [r for r in records if r["mode"] == mode and r["dataset"] == ds and r["seed"] == s]
                        for s in seeds}
            per_seed = {s: recs for s, recs in per_seed.items() if recs}
            row: dict[str, Any] = {"mode": mode, "dataset": ds, "seeds": sorted(per_seed),
                                   "videos": max((len(v) for v in per_seed.values()), default=0)}
            for col, (_, fn) in COLUMNS.items():
                row[col] = _spread([fn(recs) for recs in per_seed.values()])
            rows.append(row)
    return rows


def cell(stat: dict[str, Any]) -> str:
    """``mean ± std`` with one decimal, as eval-movi.py prints (``mean`` alone for one seed)."""
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}" if stat["std"] is not None else f"{stat['mean']:.1f}"


def markdown(header: dict[str, Any], rows: list[dict[str, Any]], modes: list[str], datasets: list[str]) -> str:
    """The upstream-shaped table (rows: modes; columns: IoU then ARI per dataset) and the standard one."""
    by = {(r["mode"], r["dataset"]): r for r in rows}
    lines = [f"# {header.get('title', 'Loci-s evaluation')}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "title"]
    lines += ["", "## Upstream metrics (eval-movi.py)", "",
              "| model | " + " | ".join(f"IoU {d}" for d in datasets) + " | " +
              " | ".join(f"ARI {d}" for d in datasets) + " |",
              "|---|" + "---|" * (2 * len(datasets))]
    for mode in modes:
        cells = [cell(by[(mode, d)]["iou"]) for d in datasets] + [cell(by[(mode, d)]["ari"]) for d in datasets]
        lines.append(f"| Loci-s ({SHORT.get(mode, mode)}) | " + " | ".join(cells) + " |")
    lines += ["", "## Standard metrics", "", "| mode | dataset | videos | " +
              " | ".join(COLUMNS[c][0] for c in STANDARD) + " |", "|---|---|---|" + "---|" * len(STANDARD)]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['dataset']} | {r['videos']} | " +
                     " | ".join(cell(r[c]) for c in STANDARD) + " |")
    lines += ["", "Values × 100, mean ± sample std over seeds. IoU: Hungarian matched IoU of the slot masks "
              "(> 0.8) over the non-empty GT masks, pooled over the steps of all videos; ARI: sequence FG-ARI "
              "(all steps of a video as one image), both as upstream computes them. Standard: FG-ARI over the "
              "video (argmax masks) and its per-frame mean, mBO of the video's object tracks, mIoU with empty "
              "pairs 0 (prediction: against the next frame), soft foreground IoU, object counting accuracy. "
              "Per video: videos.jsonl."]
    return "\n".join(lines) + "\n"


def write_results(out: str | Path, header: dict[str, Any], records: Records, *, modes: list[str],
                  datasets: list[str], seeds: list[int]) -> tuple[Path, Path, list[dict[str, Any]]]:
    """``results.json`` (header + rows) and ``results.md`` under ``out``; returns both paths and the rows."""
    out = Path(out)
    rows = table_rows(records, modes=modes, datasets=datasets, seeds=seeds)
    (out / "results.json").write_text(json.dumps({**header, "rows": rows}, indent=1) + "\n")
    (out / "results.md").write_text(markdown(header, rows, modes, datasets))
    return out / "results.json", out / "results.md", rows
