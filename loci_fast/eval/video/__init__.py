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

from .run import DTYPES, evaluate_loaded
from .runner import MODES, LociVideoEvaluator

__all__ = ["DTYPES", "MODES", "evaluate_loaded", "LociVideoEvaluator", "evaluate_videos", "parse_modes", "parse_seeds"]


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
                    videos: int | None = None, device: str | None = None, dtype: str = "float32",
                    progress: bool = True, fresh: bool = False) -> dict[str, Any]:
    """Evaluate a Loci-s checkpoint on the videos of ``data`` (one dataset per pattern).

    ``checkpoint``: a run folder, an ``export`` file or ``import-upstream`` output (then ``config``
    is needed). ``videos``: only the first N windows of each dataset. ``dtype`` "float32" (as upstream)
    or "float64": per-video numbers do not depend on the batch up to float rounding, which can move
    a pixel across a mask threshold in float32; float64 makes that vanishingly rare. Writes ``videos.jsonl`` (one
    line per (mode, seed, dataset, video); a rerun skips those present) and ``results.{md,json}``
    under ``out``. Under ``torchrun``/``deepspeed`` every rank evaluates its share and rank 0 writes.
    Returns ``{"table": results.md, "json": results.json, "rows": [...], "records": [...]}`` (on rank 0;
    other ranks get ``table`` None).
    """
    from ..weights import load_weights_and_config

    weights, cfg = load_weights_and_config(checkpoint, config)
    given = str(config) if isinstance(config, (str, Path)) else None if config is None else "given"
    return evaluate_loaded(weights, cfg, data, out, modes=modes, seeds=seeds, batch_size=batch_size, videos=videos,
                           device=device, dtype=dtype, progress=progress, fresh=fresh, config_source=given)
