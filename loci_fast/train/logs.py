"""What a run reports: rank-0 progress bar, metrics.jsonl, TensorBoard scalars, PNG grids.

(Named ``logs`` rather than ``logging`` so that running a file of this folder as a script cannot
shadow the standard library module.)
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from loci_fast.viz.grid import image_grid  # noqa: F401 - re-exported: the demo and older callers import it here

METRICS = "metrics.jsonl"


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the records of steps <= ``last_step`` (a resumed run rewrites what came after).

    A run killed mid-write can leave a partial last line; it is dropped too.
    """
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", math.inf) <= last_step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (complete lines only)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


class RunLogger:
    """Rank 0 writes; other ranks hold a logger that does nothing."""

    def __init__(self, out: Path, *, rank: int, start_step: int, max_steps: int | None,
                 samples_per_step: int, progress: bool = True, tensorboard: bool = True,
                 constants: dict[str, Any] | None = None) -> None:
        self.active = rank == 0
        self.constants = dict(constants or {})  # written into every record (e.g. the kernels)
        self.out = Path(out)
        self.samples_per_step = samples_per_step
        self._last_time = time.perf_counter()
        self._last_step = start_step
        self.bar = None
        self.tb = None
        if not self.active:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.out / METRICS, start_step)
        self.metrics = open(self.out / METRICS, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after the checkpoint we resume from.
            self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=start_step + 1)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0, smoothing=0.1)

    def step(self, step: int, scalars: dict[str, float]) -> None:
        """Record one optimiser step (loss and friends) everywhere."""
        if not self.active:
            return
        now = time.perf_counter()
        rate = self.samples_per_step * (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        record = {"step": step, **scalars, "samples_per_s": rate, "time": time.time(),
                  **self.constants}
        self.metrics.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in scalars.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(f"train/{key}", value, step)
            self.tb.add_scalar("train/samples_per_s", rate, step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{scalars.get('loss', float('nan')):.4f}",
                                 samples_s=f"{rate:.1f}", refresh=False)

    def images(self, step: int, rows: dict[str, torch.Tensor]) -> Path | None:
        """Write the PNG grid of inputs and reconstructions for ``step``."""
        if not self.active or not rows:
            return None
        from PIL import Image

        grid = image_grid(rows)
        path = self.out / "images" / f"step_{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
        if self.tb is not None:
            self.tb.add_image("train/reconstruction", grid, step, dataformats="HWC")
        return path

    def message(self, text: str) -> None:
        """A line for the user, printed above the progress bar (rank 0 only)."""
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.metrics.close()
