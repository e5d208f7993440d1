"""Training-step throughput of one stage with the Triton and with the reference kernels.

    loci-fast bench --train-step configs/pretrain-encoder-decoder-stage2.json [--dtype bf16]
    loci-fast bench --train-step configs/loci-s.json --dtype fp32 --bo 16,32,64,128

Both backends run side by side in one process on the same weights and the same random batch: an
object-shaped blob in rgb, depth and mask crops of the config's size and batch size. A step is
forward, backward and the stage's optimizer step (Ranger; upstream's five optimizers for the cater
stages, measured for one frame and for an 8-iteration video chunk from a sequence start); no data
loading and no DeepSpeed (the GPU image has none), so the model is cast to the dtype and the
optimizers keep their update math in fp32. Stage 2 runs with its
pass schedules advanced to step 7500, where all three refinement passes are weighted in: the cost
of most of an upstream stage-2 run (its first 2500 steps run pass 0 only).

For the ``loci`` stage a step is one truncated-BPTT chunk (K frames forward and backward through the
whole model, then the optimizer step) of the stage's ``example_batch``, a chunk that starts a sequence.
``bo`` sweeps the slot batch B·O (batch x ``model.num_slots``): the config's slot count stays, the
batch size becomes B·O / O. Peak memory is ``torch.cuda.max_memory_allocated`` per row on a GPU and
n/a on the CPU; ``cpu_s_per_step`` is the process CPU time (all threads) per step, which on a shared
CPU is steadier than the wall clock. A row that runs out of GPU memory is recorded as such and the
sweep goes on; the results files are rewritten after every row, so a sweep cut short keeps its rows.
"""
from __future__ import annotations

import datetime as _dt
import gc
import math
import time
from pathlib import Path
from typing import Any

import torch

BACKENDS = ("reference", "triton")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STEADY_STAGE2_STEP = 7500
SLOT_STAGES = ("loci",)  # stages whose batch is B sequences of O slots each (the --bo sweep)


def _batch(batch_size: int, size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> dict:
    gen = torch.Generator().manual_seed(0)
    h, w = size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    centre = torch.rand(batch_size, 2, generator=gen) - 0.5
    radius = 0.2 + 0.3 * torch.rand(batch_size, generator=gen)
    dist = ((xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2).sqrt()
    mask = (dist < radius[:, None, None]).float()[:, None]
    rgb = torch.rand(batch_size, 3, h, w, generator=gen)
    depth = 3.0 + torch.rand(batch_size, 1, h, w, generator=gen) - mask
    return {k: v.to(device=device, dtype=dtype) for k, v in (("rgb", rgb), ("depth", depth), ("mask", mask))}


def _advance_schedules(model: torch.nn.Module, step: int) -> None:
    from loci_fast.model.losses.schedules import CallCounter

    for module in model.modules():
        if isinstance(module, CallCounter):
            with torch.no_grad():
                module.num_updates.fill_(step)


def batch_for_bo(cfg: Any, bo: int) -> int:
    """The batch size that gives the slot batch ``bo`` = B·O with the config's ``model.num_slots``."""
    from loci_fast.train.stages import stage_from_config

    slots = cfg["model"].get("num_slots")
    stage = stage_from_config(cfg)
    if stage not in SLOT_STAGES or not slots:
        raise ValueError(f"--bo (batch x slots) is for the {' and '.join(SLOT_STAGES)} stage (e.g. configs/loci-s.json); "
                         f"for stage {stage} give --batch-size instead")
    if bo < 1 or bo % int(slots):
        raise ValueError(f"--bo {bo}: must be a positive multiple of model.num_slots = {slots} "
                         f"(B·O = batch x slots), e.g. {int(slots)}, {2 * int(slots)}, {4 * int(slots)}")
    return bo // int(slots)


def parse_bo(text: str) -> list[int]:
    """``"16,32,64"`` -> [16, 32, 64]; a clear error for anything else."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--bo {text!r}: expected positive integers separated by commas, e.g. --bo 16,32,64,128")
    return values


def measure(config: str | Path, backend: str, *, steps: int = 20, warmup: int = 5, dtype: str = "fp32",
            device: str | torch.device | None = None, batch_size: int | None = None,
            input_size: int | None = None, bo: int | None = None, mode: str | None = None) -> dict[str, Any]:
    """Samples/s of ``steps`` training steps of ``config``'s stage under kernel ``backend``
    (``bo``: the slot batch B·O instead of ``batch_size``).

    ``mode``: one of the stage's ``BENCH_MODES`` (the cater stages: ``frame``, ``chunk``), whose example
    batch holds several iterations per step; samples/s then counts sample-frames."""
    from loci_fast.config import load_config
    from loci_fast.kernels import use_backend
    from loci_fast.train.stages import get_stage, stage_from_config

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    overrides: dict[str, Any] = {}
    if input_size:
        overrides["model.input_size"] = [input_size, input_size]
    if bo:
        overrides["model.batch_size"] = batch_for_bo(load_config(config, overrides), bo)
    elif batch_size:
        overrides["model.batch_size"] = batch_size
    cfg = load_config(config, overrides)
    stage = get_stage(stage_from_config(cfg))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = stage.build_model(cfg).to(device=dev, dtype=DTYPES[dtype])
    optimizer = stage.build_optimizer(model, stage.trainable_parameters(model), cfg)
    if stage.name == "stage2":
        _advance_schedules(model, STEADY_STAGE2_STEP)
    b = int(cfg["model"]["batch_size"])
    example = getattr(stage, "example_batch", None)  # stages with other inputs than object crops
    if mode is not None:
        batch = example(cfg, dev, DTYPES[dtype], mode=mode)
    else:
        batch = example(cfg, dev, DTYPES[dtype]) if example else _batch(b, tuple(cfg["model"]["input_size"]), dev,
                                                                        DTYPES[dtype])
    bench_step = getattr(stage, "bench_step", None)  # stages whose step is more than one forward + backward
    frames = int(batch.get("frames_per_step", 1)) if bench_step else 1

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    losses = []
    with use_backend(backend):
        for i in range(warmup + steps):
            if i == warmup:
                sync()
                started, cpu_started = time.perf_counter(), time.process_time()
            if bench_step:
                losses.append(bench_step(model, optimizer, batch))
                continue
            out = stage.forward(model, batch)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.detach())
            del out  # the chunk's graph and outputs go before the next step allocates its own
        sync()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    final = [float(x) for x in losses]
    if not all(math.isfinite(v) for v in final):
        raise RuntimeError(f"bench --train-step: non-finite loss with the {backend} kernels: {final}")
    slots = int(cfg["model"]["num_slots"]) if stage.name in SLOT_STAGES else None
    return {"stage": stage.name if mode is None else f"{stage.name} ({mode}, {frames} it.)", "backend": backend,
            "dtype": dtype, "batch_size": b, "num_slots": slots, "frames_per_step": frames,
            "bo": b * slots if slots else None, "input_size": list(cfg["model"]["input_size"]), "steps": steps,
            "step_ms": 1e3 * elapsed / steps, "samples_per_s": b * frames * steps / elapsed,
            "cpu_s_per_step": cpu / steps,
            "first_loss": final[0], "last_loss": final[-1],
            "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}


def _measure_or_oom(config: str | Path, backend: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure`, or a row saying the GPU ran out of memory (the sweep goes on)."""
    try:
        return measure(config, backend, **kwargs)
    except torch.cuda.OutOfMemoryError as err:
        return {"backend": backend, "bo": kwargs.get("bo"), "dtype": kwargs.get("dtype", "fp32"),
                "error": f"out of memory: {str(err).splitlines()[0]}"}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_train_step(config: str | Path, *, backends=BACKENDS, out_dir: str | Path = "bench/results",
                   bo: list[int] | None = None, log=print, malloc: str = "default", **kwargs: Any) -> dict[str, Any]:
    """Measure every backend (at every slot batch of ``bo``, side by side), write
    ``<date>-<device>-train-<stage>[-bo<first>-<last>].{json,md}``; return the results."""
    import triton

    from loci_fast.config import load_config
    from loci_fast.train.stages import get_stage, stage_from_config

    from .results_files import write_results
    from .runner import _slug, device_name

    dev = torch.device(kwargs.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = list(bo) if bo else [None]
    for size in sizes:  # every --bo value checked before the first (long) row runs
        if size is not None:
            batch_for_bo(load_config(config), size)
    results = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "device": device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
               "config": str(config), "rows": [], "malloc": malloc, "threads": torch.get_num_threads(),
               "note": ("CPU timings of interpreted Triton kernels mean nothing" if dev.type != "cuda" else "")}
    stage = stage_from_config(load_config(config))
    modes = list(getattr(get_stage(stage), "BENCH_MODES", None) or [None])
    sweep = f"-bo{sizes[0]}-{sizes[-1]}" if bo else ""
    stem = f"{results['date'][:10]}-{_slug(results['device'])}-train-{stage}{sweep}"
    for size in sizes:
        for mode, backend in ((m, b) for m in modes for b in backends):
            row = _measure_or_oom(config, backend, bo=size, mode=mode, **kwargs)
            results["rows"].append(row)
            log(row_line(row))
            results.update(speedups(results["rows"]))
            write_results(out_dir, stem, results, markdown(results))  # every row: a cut sweep keeps its rows
    return results


def speedups(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Triton over reference samples/s, per slot batch (``speedup_by_bo``) and, for one size, overall."""
    by: dict[Any, dict[str, float]] = {}
    for r in rows:
        if "error" not in r:
            by.setdefault((r.get("bo"), r.get("stage")), {})[r["backend"]] = r["samples_per_s"]
    ratios = {k: v["triton"] / v["reference"] for k, v in by.items() if {"triton", "reference"} <= set(v)}
    out: dict[str, Any] = {}
    if ratios:  # the first size (and mode) measured: the headline ratio
        out["speedup_triton_over_reference"] = next(iter(ratios.values()))
    if any(bo is not None for bo, _ in ratios):
        out["speedup_by_bo"] = {str(bo): v for (bo, _), v in ratios.items()}
    return out


def row_line(row: dict[str, Any]) -> str:
    """One line for the terminal."""
    bo = f" B·O={row['bo']}" if row.get("bo") else ""
    if "error" in row:
        return f"{row['backend']:9s}{bo}: {row['error']}"
    peak = f", peak {row['peak_memory_gib']:.2f} GiB" if row["peak_memory_gib"] is not None else ""
    return (f"{row['stage']} {row['backend']:9s} {row['dtype']}{bo}: {row['step_ms']:.1f} ms/step, "
            f"{row['samples_per_s']:.2f} samples/s{peak}")


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Training step: {results['config']}", "", f"- device: {results['device']}",
             f"- date: {results['date']}", f"- torch {results['torch']}, triton {results['triton']}",
             f"- torch threads: {results.get('threads', '-')}, allocator: {results.get('malloc', 'default')}"]
    if results["note"]:
        lines.append(f"- {results['note']}")
    lines += ["", "| stage | backend | dtype | batch | size | B·O | step (ms) | samples/s | CPU s/step "
                  "| loss first -> last | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| | {r['backend']} | {r['dtype']} | | | {r.get('bo') or '-'} | {r['error']} | | | | |")
            continue
        peak = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "n/a (CPU)"
        lines.append(f"| {r['stage']} | {r['backend']} | {r['dtype']} | {r['batch_size']} | "
                     f"{r['input_size'][0]}x{r['input_size'][1]} | {r.get('bo') or '-'} | {r['step_ms']:.1f} | "
                     f"{r['samples_per_s']:.2f} | "
                     f"{r['cpu_s_per_step']:.2f} | {r['first_loss']:.4f} -> {r['last_loss']:.4f} | {peak} |")
    if len(results.get("speedup_by_bo", {})) <= 1 and "speedup_triton_over_reference" in results:
        lines += ["", f"Triton over reference: {results['speedup_triton_over_reference']:.2f}x samples/s."]
    elif "speedup_by_bo" in results:
        lines += ["", "Triton over reference, samples/s: " + ", ".join(
            f"B·O={k}: {v:.2f}x" for k, v in results["speedup_by_bo"].items()) + "."]
    return "\n".join(lines) + "\n"
