"""``loci-fast eval`` for Loci-s runs: whole held-out videos, per mode and seed, batched, on any number of ranks.

    loci-fast eval --checkpoint out/loci --data 'data/val-*.tar' --modes random,regularization \
        --seeds 1-5 --batch-size 8 --out out/eval-loci

Modules: :mod:`.catalogue` (datasets and their windows in a fixed order), :mod:`.draws` (per-video
random draws), :mod:`.runner` (the model over a batch of windows), :mod:`.scores` (per-video
metrics), :mod:`.log` (resumable ``videos.jsonl``), :mod:`.distributed` (ranks), and the table in
:mod:`loci_fast.eval.movi`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from .runner import MODES, LociVideoEvaluator, check_mode

__all__ = ["MODES", "LociVideoEvaluator", "evaluate_videos", "parse_modes", "parse_seeds"]


def parse_seeds(text: str | Iterable[int]) -> list[int]:
    """``"1-5"``, ``"1,3,7"`` or ``"1-3,9"`` (or a list of ints) -> the seeds in order, no repeats."""
    if not isinstance(text, str):
        seeds = [int(s) for s in text]
    else:
        seeds = []
        for part in text.split(","):
            m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
            if not m:
                raise ValueError(f"--seeds {text!r}: {part.strip()!r} is neither a seed nor a range; write e.g. "
                                 "1-5 or 1,3,7")
            lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
            if hi < lo:
                raise ValueError(f"--seeds {text!r}: the range {lo}-{hi} is empty; write it low-high, e.g. 1-5")
            seeds += range(lo, hi + 1)
    if not seeds:
        raise ValueError("--seeds: no seed given; write e.g. 1-5")
    return list(dict.fromkeys(seeds))


def parse_modes(text: str | Iterable[str]) -> list[str]:
    """``"random,regularization"`` -> the modes, each checked against :data:`MODES`."""
    modes = [m.strip() for m in text.split(",")] if isinstance(text, str) else [str(m) for m in text]
    modes = [m for m in modes if m]
    for m in modes:
        if m not in MODES:
            raise ValueError(f"--modes: unknown mode {m!r}; choose from {', '.join(MODES)}")
    if not modes:
        raise ValueError(f"--modes: no mode given; choose from {', '.join(MODES)}")
    return list(dict.fromkeys(modes))


def evaluate_videos(checkpoint: str | Path, data: str | Sequence[str], out: str | Path, *, config: Any = None,
                    modes: Sequence[str] | str = ("random",), seeds: Sequence[int] | str = (1,), batch_size: int = 4,
                    videos: int | None = None, device: str | None = None, progress: bool = True,
                    fresh: bool = False) -> dict[str, Any]:
    """Evaluate a Loci-s checkpoint on the videos of ``data`` (one dataset per pattern).

    ``checkpoint``: a run folder, an ``export`` file or ``import-upstream`` output (then ``config``
    is needed). ``videos``: only the first N windows of each dataset. Writes ``videos.jsonl`` (one
    line per (mode, seed, dataset, video); a rerun skips those present) and ``results.{md,json}``
    under ``out``. Under ``torchrun``/``deepspeed`` every rank evaluates its share and rank 0 writes.
    Returns ``{"table": results.md, "json": results.json, "rows": [...], "records": [...]}`` (on rank 0;
    other ranks get ``table`` None).
    """
    from loci_fast.config import ConfigError, load_config

    from ..weights import load_weights

    weights = load_weights(checkpoint)
    source = config or weights.config
    if source is None:
        raise ValueError(f"{weights.source} carries no config: pass --config (the config it was trained with)")
    try:
        cfg = source if hasattr(source, "replace") else load_config(source)
    except ConfigError as err:
        raise ValueError(f"config: {err}") from None
    given = str(config) if isinstance(config, (str, Path)) else None if config is None else "given"
    return evaluate_loaded(weights, cfg, data, out, modes=modes, seeds=seeds, batch_size=batch_size, videos=videos,
                           device=device, progress=progress, fresh=fresh, config_source=given)


def evaluate_loaded(weights, cfg, data: str | Sequence[str], out: str | Path, *, modes: Sequence[str] | str,
                    seeds: Sequence[int] | str, batch_size: int, videos: int | None = None, device: str | None = None,
                    progress: bool = True, fresh: bool = False, config_source: str | None = None) -> dict[str, Any]:
    """:func:`evaluate_videos` on loaded weights (:class:`~loci_fast.eval.weights.LoadedWeights`) and config."""
    import torch

    from .catalogue import catalogue
    from .distributed import Ranks
    from .log import VideoLog

    modes, seeds = parse_modes(modes), parse_seeds(seeds)
    data = [data] if isinstance(data, (str, Path)) else [str(d) for d in data]
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if videos is not None and videos < 1:
        raise ValueError(f"--videos must be >= 1, got {videos}")
    for mode in modes:
        check_mode(mode, cfg, weights.state)
    datasets = catalogue(data, int(cfg["sequence_len"]))
    ranks = Ranks.from_env(device)
    selected = {ds.label: ds.videos[:videos] if videos else ds.videos for ds in datasets}
    settings = {"checkpoint": weights.source, "data": data, "config": config_source}
    log = VideoLog(out, fresh=fresh) if ranks.rank == 0 else None
    error = None
    if log is not None:
        try:
            log.check_settings(settings)
        except ValueError as err:
            error = str(err)
    error = ranks.broadcast(error)
    if error:
        raise ValueError(error)
    done = ranks.broadcast(log.done if log is not None else None)
    todo = sum(1 for m in modes for s in seeds for label, vids in selected.items() for v in vids
               if (m, s, label, v) not in done)
    bar = None
    if progress and ranks.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=todo, unit="video", desc="eval loci", dynamic_ncols=True)
    for mode in modes:
        evaluator = None
        for ds in datasets:
            wanted = set(selected[ds.label])
            if all((mode, s, ds.label, v) in done for s in seeds for v in wanted):
                continue
            evaluator = evaluator or LociVideoEvaluator(cfg, weights.state, mode, ranks.device)
            for batch in evaluator.loader(ds.shards, batch_size=batch_size, rank=ranks.rank,
                                          world_size=ranks.world_size):
                ids = [f"{k}@{int(s)}" for k, s in zip(batch["key"], batch["start"].tolist())]
                mine = [i for i, ok in enumerate(batch["valid"].tolist()) if ok and ids[i] in wanted]
                for seed in seeds:
                    todo_i = [i for i in mine if (mode, seed, ds.label, ids[i]) not in done]
                    records = []
                    if todo_i:
                        from .runner import select

                        got = evaluator.evaluate(select(batch, todo_i), seed, [ids[i] for i in todo_i])
                        records = [{"mode": mode, "seed": seed, "dataset": ds.label, "video": ids[i], **r}
                                   for i, r in zip(todo_i, got)]
                    gathered = ranks.gather(records)
                    if log is not None:
                        log.add(gathered)
                        if bar is not None:
                            bar.update(len(gathered))
        del evaluator
    if bar is not None:
        bar.close()
    if log is None:
        ranks.close()
        return {"table": None, "json": None, "rows": [], "records": []}
    from ..movi import write_results

    kept = [r for r in log.records if r["mode"] in modes and r["seed"] in seeds
            and r["video"] in set(selected.get(r["dataset"], ()))]
    header = {"title": "loci-fast eval: Loci-s", "checkpoint": weights.source, "data": " ".join(data),
              "modes": ",".join(modes), "seeds": ",".join(map(str, seeds)),
              "videos per dataset": ", ".join(f"{k} {len(v)}" for k, v in selected.items()),
              "device": str(ranks.device), "ranks": ranks.world_size, "batch_size": batch_size,
              "torch": torch.__version__}
    js, md, rows = write_results(out, header, kept, modes=modes, datasets=[d.label for d in datasets], seeds=seeds)
    ranks.close()
    return {"table": str(md), "json": str(js), "rows": rows, "records": kept}
