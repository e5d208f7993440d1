"""Ranks of an evaluation: single process, or the process group ``torchrun``/``deepspeed`` describe in the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Ranks:
    """This process's rank, the world size, its device, and a gloo group for Python objects."""

    rank: int
    world_size: int
    device: torch.device
    group: Any = None
    owned: bool = False  # this object started the process group (and ends it in close)

    @classmethod
    def from_env(cls, device: str | None = None) -> "Ranks":
        """Join the process group when ``WORLD_SIZE`` > 1 (gloo on the CPU, nccl on GPUs)."""
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 or dist.is_initialized():
            cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
            owned = not dist.is_initialized()
            if owned:
                dist.init_process_group("nccl" if cuda else "gloo")
            rank, world = dist.get_rank(), dist.get_world_size()
            if device is None or str(device) == "cuda":
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % max(torch.cuda.device_count(), 1)}" \
                    if cuda else "cpu"
            group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
            return cls(rank, world, torch.device(device), group, owned)
        return cls(0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's ``items``, concatenated in rank order, on rank 0 (others get [])."""
        if self.world_size == 1:
            return list(items)
        import torch.distributed as dist

        boxes = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(items, boxes, dst=0, group=self.group)
        return [x for box in boxes for x in box] if self.rank == 0 else []

    def close(self) -> None:
        """Wait for every rank, then end the process group if this object started it."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)
            if self.owned:
                dist.destroy_process_group()
