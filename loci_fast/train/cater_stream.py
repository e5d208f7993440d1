"""Upstream's CATER training loop as a stream of iterations, split over ranks and resumable mid-video.

Upstream (loci.md §3.2) draws shuffled batches of B videos and runs, per batch, ``teacher_forcing`` warm-up
iterations on frame 0 and then one iteration per frame t = 0 .. S-1 (input frame t, target frame t+1).
Here each iteration is one batch of the engine (one optimizer step):

* ``frame`` (B, 3, h, w) the input, ``target`` (B, 3, h, w) clip(frame t+1) (frame 0 in the warm-up),
  ``target_xyz`` (B, 3) the snitch's world position at the target frame (frame 0 in the warm-up),
  ``background`` (B, 3, h, w) the static background, all float32 BGR in [0, 1];
* ``t`` (int, negative in the warm-up), ``reset`` (True on a video batch's first iteration), ``last``
  (True on its last), ``label`` (B,) the final grid label, ``final_xyz`` (B, 3) the last snitch position.

Every epoch is a seeded permutation of all videos; rank r takes video groups r, r + W, ... of B videos, and
every rank gets the same number of groups (the rest of the permutation is left out, as upstream's
drop_last). The position (epoch, group, iteration) is the state dict, so a resume decodes the current
group again and continues at the iteration where the stored run stopped.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import TrainError


def _index(shards: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(shard, key, meta) of every CATER video, in shard order."""
    from loci_fast.data.reader import iter_raw
    from loci_fast.data.streams import _meta_only

    out = []
    for shard in shards:
        for key, fields in iter_raw(shard, only=("meta.json",)):
            out.append((shard, key, _meta_only(key, fields, shard)))
    return out


def stored_size(meta: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    """The stored resolution to decode for working ``size``: itself when stored, else the smallest stored one
    at least as large (else the largest)."""
    res = [tuple(int(v) for v in r) for r in meta["resolutions"]]
    if tuple(size) in res:
        return tuple(size)
    larger = [r for r in res if r[0] >= size[0] and r[1] >= size[1]]
    return min(larger) if larger else max(res)


class CaterIterations:
    """The iterations of upstream's CATER training loop for one rank (module docstring)."""

    def __init__(self, shards: list[str], *, batch_size: int, size: tuple[int, int], sequence_len: int,
                 teacher_forcing: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.batch_size, self.size = int(batch_size), (int(size[0]), int(size[1]))
        self.sequence_len, self.teacher_forcing = int(sequence_len), int(teacher_forcing)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.videos = _index(list(shards))
        short = [(s, k, m["num_frames"]) for s, k, m in self.videos if m["num_frames"] < self.sequence_len + 1]
        if short:
            s, k, n = short[0]
            raise TrainError(f"CATER video {k!r} in {s} has {n} frames, but sequence_len {self.sequence_len} needs "
                             f"{self.sequence_len + 1} (input t and target t+1); lower it with --set "
                             f"sequence_len={n - 1} or use longer videos ({len(short)} video(s) too short)")
        self.groups = len(self.videos) // (self.batch_size * self.world_size)
        if self.groups < 1:
            raise TrainError(f"{len(self.videos)} CATER video(s) cannot fill one batch of {self.batch_size} on each "
                             f"of {self.world_size} rank(s); add videos or lower model.batch_size")
        self.iterations = self.teacher_forcing + self.sequence_len
        self.epoch, self.group, self.iteration = 0, 0, 0
        self._cache: tuple[tuple[int, int], dict[str, torch.Tensor]] | None = None

    def __len__(self) -> int:
        """Iterations per epoch on this rank (equal on every rank)."""
        return self.groups * self.iterations

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "group": self.group, "iteration": self.iteration, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "videos": len(self.videos)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "rank", "world_size", "videos"):
            if state[key] != self.state_dict()[key]:
                raise ValueError(f"cannot resume: the stored CATER stream had {key}={state[key]}, this one has "
                                 f"{self.state_dict()[key]}; resume with the same data and settings")
        self.epoch, self.group, self.iteration = int(state["epoch"]), int(state["group"]), int(state["iteration"])

    def group_videos(self, epoch: int, group: int) -> list[int]:
        """Indices of the B videos of this rank's ``group`` in ``epoch``."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.videos))
        start = (group * self.world_size + self.rank) * self.batch_size
        return [int(i) for i in perm[start:start + self.batch_size]]

    def _decode(self, index: int) -> dict[str, torch.Tensor]:
        from loci_fast.data.cater.load import decode_cater
        from loci_fast.data.reader import iter_raw

        shard, key, meta = self.videos[index]
        fields = next((f for k, f in iter_raw(shard) if k == key), None)
        if fields is None:
            raise TrainError(f"CATER video {key!r} is no longer in {shard} (did the shards change during the run?)")
        src = stored_size(meta, self.size)
        item = decode_cater(key, fields, shard, size=src, pad_to=max(meta["num_frames"], self.sequence_len + 1))
        n = self.sequence_len + 1
        frames = torch.from_numpy(item["frames"][:n])
        background = torch.from_numpy(item["background"][0])
        if src != self.size:
            warnings.warn(f"CATER shards hold no {self.size[0]}x{self.size[1]} frames; resizing {src[0]}x{src[1]} "
                          "(area). Upstream never resizes: convert the release at the working resolution",
                          stacklevel=2)
            frames = F.interpolate(frames, size=self.size, mode="area")
            background = F.interpolate(background[None], size=self.size, mode="area")[0]
        xyz = torch.from_numpy(item["snitch_xyz"]).float()
        xyz = torch.cat([xyz, xyz[-1:].expand(max(n - len(xyz), 0), 3)])[:n]
        return {"frames": frames, "background": background, "xyz": xyz, "label": torch.tensor(item["label"])}

    def _load(self, epoch: int, group: int) -> dict[str, torch.Tensor]:
        if self._cache is None or self._cache[0] != (epoch, group):
            items = [self._decode(i) for i in self.group_videos(epoch, group)]
            self._cache = ((epoch, group), {k: torch.stack([it[k] for it in items]) for k in items[0]})
        return self._cache[1]

    def batch(self, epoch: int, group: int, iteration: int) -> dict[str, Any]:
        """Iteration ``iteration`` (0-based, the warm-up first) of ``group`` in ``epoch``."""
        data = self._load(epoch, group)
        t = iteration - self.teacher_forcing
        frames, xyz = data["frames"], data["xyz"]
        now, nxt = (0, 0) if t < 0 else (t, t + 1)
        return {"frame": frames[:, now], "target": torch.clip(frames[:, nxt], 0, 1), "target_xyz": xyz[:, nxt],
                "background": data["background"], "label": data["label"], "final_xyz": xyz[:, -1],
                "t": t, "reset": iteration == 0, "last": iteration == self.iterations - 1}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch."""
        if self.group >= self.groups:
            self.epoch, self.group, self.iteration = self.epoch + 1, 0, 0
        while self.group < self.groups:
            while self.iteration < self.iterations:
                batch = self.batch(self.epoch, self.group, self.iteration)
                self.iteration += 1
                yield batch
            self.group, self.iteration = self.group + 1, 0
        self.epoch, self.group, self.iteration = self.epoch + 1, 0, 0
        self._cache = None
