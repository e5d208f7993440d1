"""Ranks of a distributed evaluation: started by torchrun or the deepspeed launcher (env:// rendezvous).

Evaluation only exchanges small Python records, so the process group is always gloo (CPU), whatever
device the model runs on; a single process (no ``WORLD_SIZE`` > 1) needs no group at all.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world size)``; joins the launcher's process group on first use (gloo)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def local_device(requested: str | None) -> torch.device:
    """``requested`` (plain "cuda" means this rank's GPU, ``LOCAL_RANK``), else that GPU when CUDA is
    available, else the CPU."""
    if requested == "cuda":  # every rank its own GPU
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def gather(obj: Any, world_size: int) -> list[Any]:
    """Every rank's ``obj`` in rank order (all ranks must call it); ``[obj]`` in a single process."""
    if world_size <= 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, world_size: int) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world_size <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
