"""One Loci-s evaluation run: settings and resume, the loop over modes, datasets, batches and seeds, the table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from .runner import LociVideoEvaluator, check_mode, select

DTYPES = {"float32": torch.float32, "float64": torch.float64}

Done = set[tuple[str, int, str, str]]


def _check_args(batch_size: int, videos: int | None, dtype: str) -> None:
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if videos is not None and videos < 1:
        raise ValueError(f"--videos must be >= 1, got {videos}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose {' or '.join(DTYPES)}")


def _open_log(out, fresh: bool, settings: dict[str, Any], ranks):
    """Rank 0's log (None elsewhere) and the finished records every rank skips; settings mismatch refused."""
    from .log import VideoLog

    log = VideoLog(out, fresh=fresh) if ranks.rank == 0 else None
    error = None
    if log is not None:
        try:
            log.check_settings(settings)
        except ValueError as err:
            error = str(err)
    error = ranks.broadcast(error)  # every rank stops, not only rank 0
    if error:
        raise ValueError(error)
    return log, ranks.broadcast(log.done if log is not None else None)


def _dataset_batches(evaluator: LociVideoEvaluator, ds, wanted: set[str], mode: str, seeds: list[int],
                     done: Done, batch_size: int, ranks):
    """Per loader batch and seed: this rank's finished records (every rank yields as often)."""
    for batch in evaluator.loader(ds.shards, batch_size=batch_size, rank=ranks.rank, world_size=ranks.world_size):
        ids = [f"{k}@{int(s)}" for k, s in zip(batch["key"], batch["start"].tolist())]
        mine = [i for i, ok in enumerate(batch["valid"].tolist()) if ok and ids[i] in wanted]
        for seed in seeds:
            todo = [i for i in mine if (mode, seed, ds.label, ids[i]) not in done]
            records = []
            if todo:
                got = evaluator.evaluate(select(batch, todo), seed, [ids[i] for i in todo])
                records = [{"mode": mode, "seed": seed, "dataset": ds.label, "video": ids[i], **r}
                           for i, r in zip(todo, got)]
            yield records


def evaluate_loaded(weights, cfg, data: str | Sequence[str], out: str | Path, *, modes: Sequence[str] | str,
                    seeds: Sequence[int] | str, batch_size: int, videos: int | None = None, device: str | None = None,
                    dtype: str = "float32", progress: bool = True, fresh: bool = False,
                    config_source: str | None = None) -> dict[str, Any]:
    """:func:`~loci_fast.eval.video.evaluate_videos` on loaded weights
    (:class:`~loci_fast.eval.weights.LoadedWeights`) and config."""
    from . import parse_modes, parse_seeds
    from .catalogue import catalogue
    from .distributed import Ranks

    modes, seeds = parse_modes(modes), parse_seeds(seeds)
    data = [data] if isinstance(data, (str, Path)) else [str(d) for d in data]
    _check_args(batch_size, videos, dtype)
    for mode in modes:
        check_mode(mode, cfg, weights.state)
    datasets = catalogue(data, int(cfg["sequence_len"]))
    selected = {ds.label: ds.videos[:videos] if videos else ds.videos for ds in datasets}
    ranks = Ranks.from_env(device)
    settings = {"checkpoint": weights.source, "data": data, "config": config_source, "dtype": dtype}
    log, done = _open_log(out, fresh, settings, ranks)
    bar = None
    if progress and ranks.rank == 0:
        from tqdm import tqdm

        todo = sum(1 for m in modes for s in seeds for label, vids in selected.items() for v in vids
                   if (m, s, label, v) not in done)
        bar = tqdm(total=todo, unit="video", desc="eval loci", dynamic_ncols=True)
    for mode in modes:
        evaluator = None  # built once per mode, only if some dataset has work left
        for ds in datasets:
            wanted = set(selected[ds.label])
            if all((mode, s, ds.label, v) in done for s in seeds for v in wanted):
                continue
            evaluator = evaluator or LociVideoEvaluator(cfg, weights.state, mode, ranks.device, DTYPES[dtype])
            for records in _dataset_batches(evaluator, ds, wanted, mode, seeds, done, batch_size, ranks):
                gathered = ranks.gather(records)
                if log is not None:
                    log.add(gathered)
                if bar is not None:
                    bar.update(len(gathered))
    if bar is not None:
        bar.close()
    result = {"table": None, "json": None, "rows": [], "records": []}
    if log is not None:
        result = _write_table(out, log.records, weights, data, modes, seeds, selected, ranks, dtype, batch_size)
    ranks.close()
    return result


def _write_table(out, records, weights, data, modes, seeds, selected, ranks, dtype, batch_size) -> dict[str, Any]:
    from ..movi import write_results

    kept = [r for r in records if r["mode"] in modes and r["seed"] in seeds
            and r["video"] in set(selected.get(r["dataset"], ()))]
    header = {"title": "loci-fast eval: Loci-s", "checkpoint": weights.source, "data": " ".join(data),
              "modes": ",".join(modes), "seeds": ",".join(map(str, seeds)),
              "videos per dataset": ", ".join(f"{k} {len(v)}" for k, v in selected.items()),
              "device": str(ranks.device), "dtype": dtype, "ranks": ranks.world_size, "batch_size": batch_size,
              "torch": torch.__version__}
    js, md, rows = write_results(out, header, kept, modes=modes, datasets=list(selected), seeds=seeds)
    return {"table": str(md), "json": str(js), "rows": rows, "records": kept}
