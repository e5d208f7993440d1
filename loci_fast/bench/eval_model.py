"""End-to-end Loci-s evaluation speed: frames/s of ``loci-fast eval``'s per-batch work (the model's
chunk schedule and every metric) at batch 1 and at the largest batch that fits on the GPU.

    loci-fast bench --eval-model configs/loci-s.json [--eval-batches 1,max]

The weights are the config's fresh initialisation (speed does not depend on them); the windows are
synthetic (:func:`loci_fast.eval.video.throughput.synthetic_windows`). On a CPU the numbers say
only what this CPU does.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import torch


def parse_batches(text: str) -> list[int | str]:
    """``"1,8,max"`` -> [1, 8, "max"]; a clear error for anything else."""
    out: list[int | str] = []
    for part in text.replace(" ", "").split(","):
        if part == "max":
            out.append(part)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise ValueError(f"--eval-batches {text!r}: expected positive integers or 'max', e.g. 1,max")
    return out


def run_eval_model_bench(config: str | Path, *, batches: list[int | str], mode: str = "random",
                         repeats: int = 2, out_dir: str | Path = "bench/results") -> dict[str, Any]:
    """Measure, write ``<date>-<device>-eval-loci.{json,md}`` and return the results."""
    from loci_fast.config import load_config
    from loci_fast.eval.video.throughput import frames_per_second
    from loci_fast.model.loci_model import LociModel

    from .results_files import write_results
    from .runner import _slug, device_name

    cfg = load_config(config)
    torch.manual_seed(0)
    state = LociModel.from_config(cfg).state_dict()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = frames_per_second(cfg, state, batch_sizes=batches, mode=mode, repeats=repeats)
    results = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": device_name(dev),
               "torch": torch.__version__, "config": str(config), "mode": mode,
               "input_size": list(cfg["model"]["input_size"]), "sequence_len": int(cfg["sequence_len"]),
               "rows": rows}
    lines = [f"# End-to-end Loci-s evaluation: {config}", "", f"- device: {results['device']}",
             f"- date: {results['date']}, torch {results['torch']}, mode {mode}",
             f"- {results['input_size'][0]}x{results['input_size'][1]}, {results['sequence_len']}-frame windows",
             "", "| batch | frames/s |", "|---|---|"]
    lines += [f"| {r['batch_size']} | {r['frames_per_s']:.2f} |" for r in rows]
    write_results(out_dir, f"{results['date'][:10]}-{_slug(results['device'])}-eval-loci", results,
                  "\n".join(lines) + "\n")
    return results
