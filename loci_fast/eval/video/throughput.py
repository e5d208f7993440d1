"""End-to-end evaluation speed of Loci-s: frames per second of :meth:`LociVideoEvaluator.evaluate`
(model, chunk schedule and every metric) at given batch sizes, and the largest batch that fits on a GPU.

For ``loci-fast bench --eval``: ``frames_per_second(cfg, state, batch_sizes=(1, "max"))``. Frames are
the scored steps (time >= 0) of the evaluated windows. Numbers only mean something on the named device.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from .runner import LociVideoEvaluator


def synthetic_windows(cfg, batch_size: int, *, objects: int = 3, instances: int = 32, seed: int = 0) -> dict[str, Any]:
    """A batch of ``video_chunks``-shaped windows of the config's size: squares moving over a gradient,
    with their instance and fg masks (the evaluator's input; the content does not change the cost)."""
    gen = torch.Generator().manual_seed(seed)
    s = int(cfg["sequence_len"])
    h, w = (int(x) for x in cfg["model"]["input_size"])
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    masks = torch.zeros(batch_size, s, instances, h, w)
    corner = torch.randint(0, max(h // 2, 1), (batch_size, objects, 2), generator=gen)
    for t in range(s):
        for o in range(objects):
            for b in range(batch_size):
                y, x = int(corner[b, o, 0]), (int(corner[b, o, 1]) + t * max(w // 32, 1)) % max(w // 2, 1)
                masks[b, t, o, y:y + h // 4, x:x + w // 4] = 1
    fg = masks.amax(2, keepdim=True)
    tint = torch.rand(batch_size, 1, 3, 1, 1, generator=gen)
    rgb = (0.3 * tint + 0.3 * (xx + yy)[None, None, None] * (1 - fg) + 0.8 * fg).clamp(0, 1)
    return {"rgb": rgb, "depth": (0.3 + 0.5 * yy)[None, None, None].expand(batch_size, s, 1, h, w).clone(),
            "use_depth": torch.ones(batch_size, dtype=torch.bool), "time_steps": torch.arange(s).expand(batch_size, s),
            "fg": fg, "instance_masks": masks, "start": torch.zeros(batch_size, dtype=torch.int64)}


def _time(evaluator: LociVideoEvaluator, batch_size: int, repeats: int) -> float:
    batch = synthetic_windows(evaluator.cfg, batch_size)
    ids = [f"synthetic{i}@0" for i in range(batch_size)]
    sync = torch.cuda.synchronize if evaluator.device.type == "cuda" else (lambda: None)
    evaluator.evaluate(batch, 0, ids)  # warm-up (allocations, kernel compilation)
    sync()
    start = time.perf_counter()
    for r in range(repeats):
        records = evaluator.evaluate(batch, r + 1, ids)
    sync()
    frames = sum(rec["steps"] for rec in records) * repeats
    return frames / (time.perf_counter() - start)


def largest_batch(evaluator: LociVideoEvaluator, *, limit: int = 1024) -> int:
    """The largest power-of-two batch that evaluates without running out of GPU memory (1 on the CPU)."""
    if evaluator.device.type != "cuda":
        return 1
    best, b = 1, 1
    while b <= limit:
        try:
            evaluator.evaluate(synthetic_windows(evaluator.cfg, b), 0, [f"s{i}@0" for i in range(b)])
            best, b = b, b * 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return best


def frames_per_second(cfg, state: dict[str, torch.Tensor], *, batch_sizes: Sequence[int | str] = (1, "max"),
                      mode: str = "random", device: str | None = None, repeats: int = 2) -> list[dict[str, Any]]:
    """``[{"batch_size", "frames_per_s", "device"}]`` per entry of ``batch_sizes`` ("max": :func:`largest_batch`)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    evaluator = LociVideoEvaluator(cfg, state, mode, dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    out = []
    for b in batch_sizes:
        size = largest_batch(evaluator) if b == "max" else int(b)
        out.append({"batch_size": size, "frames_per_s": _time(evaluator, size, repeats), "device": name})
    return out
