"""Training-step throughput of one object stage with the Triton and with the reference kernels.

    loci-fast bench --train-step configs/pretrain-encoder-decoder-stage2.json [--dtype bf16]

Both backends run side by side in one process on the same weights and the same random batch: an
object-shaped blob in rgb, depth and mask crops of the config's size and batch size. A step is
forward, backward and the stage's optimizer step (Ranger; upstream's five optimizers for the cater
stages, measured for one frame and for an 8-iteration video chunk from a sequence start); no data
loading and no DeepSpeed (the GPU image has none), so the model is cast to the dtype and the
optimizers keep their update math in fp32. Stage 2 runs with its
pass schedules advanced to step 7500, where all three refinement passes are weighted in: the cost
of most of an upstream stage-2 run (its first 2500 steps run pass 0 only).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

BACKENDS = ("reference", "triton")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STEADY_STAGE2_STEP = 7500


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


def measure(config: str | Path, backend: str, *, steps: int = 20, warmup: int = 5, dtype: str = "fp32",
            device: str | torch.device | None = None, batch_size: int | None = None,
            input_size: int | None = None, mode: str | None = None) -> dict[str, Any]:
    """Samples/s of ``steps`` training steps of ``config``'s stage under kernel ``backend``.

    ``mode``: one of the stage's ``BENCH_MODES`` (the cater stages: ``frame``, ``chunk``), whose example
    batch holds several iterations per step; samples/s then counts sample-frames."""
    from loci_fast.config import load_config
    from loci_fast.kernels import use_backend
    from loci_fast.train.stages import get_stage, stage_from_config

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    overrides: dict[str, Any] = {}
    if batch_size:
        overrides["model.batch_size"] = batch_size
    if input_size:
        overrides["model.input_size"] = [input_size, input_size]
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
                started = time.perf_counter()
            if bench_step:
                losses.append(bench_step(model, optimizer, batch))
                continue
            out = stage.forward(model, batch)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.detach())
        sync()
        elapsed = time.perf_counter() - started
    final = [float(x) for x in losses]
    if not all(math.isfinite(v) for v in final):
        raise RuntimeError(f"bench --train-step: non-finite loss with the {backend} kernels: {final}")
    return {"stage": stage.name if mode is None else f"{stage.name} ({mode}, {frames} it.)", "backend": backend,
            "dtype": dtype, "batch_size": b, "frames_per_step": frames,
            "input_size": list(cfg["model"]["input_size"]), "steps": steps,
            "step_ms": 1e3 * elapsed / steps, "samples_per_s": b * frames * steps / elapsed,
            "first_loss": final[0], "last_loss": final[-1],
            "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}


def run_train_step(config: str | Path, *, backends=BACKENDS, out_dir: str | Path = "bench/results",
                   **kwargs: Any) -> dict[str, Any]:
    """Measure every backend, write ``<date>-<device>-train-<stage>.{json,md}``; return the results."""
    import triton

    from .runner import _slug, device_name

    dev = torch.device(kwargs.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    from loci_fast.config import load_config
    from loci_fast.train.stages import get_stage, stage_from_config

    modes = list(getattr(get_stage(stage_from_config(load_config(config))), "BENCH_MODES", None) or [None])
    rows = [measure(config, backend, mode=mode, **kwargs) for mode in modes for backend in backends]
    results = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "device": device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
               "config": str(config), "rows": rows,
               "note": ("CPU timings of interpreted Triton kernels mean nothing" if dev.type != "cuda" else "")}
    by = {r["backend"]: r for r in rows if r["stage"] == rows[0]["stage"]}
    if "reference" in by and "triton" in by:
        results["speedup_triton_over_reference"] = by["triton"]["samples_per_s"] / by["reference"]["samples_per_s"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{results['date'][:10]}-{_slug(results['device'])}-train-{rows[0]['stage'].split(' ')[0]}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(results))
    results["path"] = str(out / f"{stem}.json")
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Training step: {results['config']}", "", f"- device: {results['device']}",
             f"- date: {results['date']}", f"- torch {results['torch']}, triton {results['triton']}"]
    if results["note"]:
        lines.append(f"- {results['note']}")
    lines += ["", "| stage | backend | dtype | batch | size | step (ms) | samples/s | loss first -> last | peak GiB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        lines.append(f"| {r['stage']} | {r['backend']} | {r['dtype']} | {r['batch_size']} | "
                     f"{r['input_size'][0]}x{r['input_size'][1]} | {r['step_ms']:.1f} | {r['samples_per_s']:.1f} | "
                     f"{r['first_loss']:.4f} -> {r['last_loss']:.4f} | {peak} |")
    if "speedup_triton_over_reference" in results:
        lines += ["", f"Triton over reference: {results['speedup_triton_over_reference']:.2f}x samples/s."]
    return "\n".join(lines) + "\n"
