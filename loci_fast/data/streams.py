"""Streams of batches over shard sets, equal across ranks, resumable, deterministic.

Training (``training=True``): each DataLoader worker draws shards at random (set i with
probability w_i / sum(w), then a shard uniformly: webdataset's resampled shards), keeps a buffer
of ``buffer_videos`` videos and fills every batch with random items of random buffered videos.
Every (rank, worker) yields a fixed number of batches, so each rank sees exactly
``epoch_batches`` per epoch. Randomness comes from (seed, epoch, rank, worker) only.

Evaluation (``training=False``): shards are split over rank x worker slots (shard i goes to slot
i mod slots), every item of every video is visited exactly once, and batches are padded with
dummy items (``valid`` False) and whole dummy batches so that every rank yields the same count.

Which items a batch holds is decided from ``meta.json`` alone; pixels are decoded only for the
items that are produced. Resuming therefore skips consumed batches by reading metadata, without
decoding or re-yielding them.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .errors import REWRITE, DataError, SampleError, ShardError
from .reader import ReadStats, decode_sample, expand_paths, iter_raw, parse_meta
from .schema import validate_meta
from .verify import CHECK, empty_shard

MAX_FAILED_DRAWS = 64  # consecutive shard draws without one good video before giving up
MAX_EMPTY_VIDEOS = 1000  # consecutive videos without a single item before giving up


@dataclass
class ShardSet:
    shards: list[str]
    weight: float = 1.0


def shard_sets(paths: Any) -> list[ShardSet]:
    """Normalise ``paths``: a path/glob/brace pattern, a list of them (one set), or a dict
    ``{pattern or tuple of patterns: weight}`` for weighted mixing of several sets."""
    if isinstance(paths, dict):
        sets = [ShardSet(expand_paths(list(k) if isinstance(k, tuple) else k), float(w)) for k, w in paths.items()]
    else:
        sets = [ShardSet(expand_paths(paths))]
    for s in sets:
        if not s.shards:
            raise ShardError(str(paths), "no shards given", "Pass shard paths, a folder, a glob or a brace pattern")
        if not s.weight > 0:
            raise ValueError(f"mixing weight {s.weight} for {s.shards[0]}... must be positive")
    return sets


class _Video:
    """A buffered video: raw members, parsed meta, its remaining items, decoded lazily."""

    __slots__ = ("shard", "key", "fields", "meta", "items", "_decoded")

    def __init__(self, shard: str, key: str, fields: dict[str, bytes], meta: dict[str, Any], items: list[Any]):
        self.shard, self.key, self.fields, self.meta, self.items = shard, key, fields, meta, items
        self._decoded = None

    def decoded(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded = decode_sample(self.key, self.fields, self.shard)
            self.fields = None  # free the compressed bytes
        return self._decoded


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if isinstance(vals[0], torch.Tensor):
            try:
                out[k] = torch.stack(vals)
            except RuntimeError as err:
                raise DataError(f"items of one batch differ in {k!r} shape ({err}); videos of different "
                                "sizes need a common `size=`") from None
        else:
            out[k] = vals
    return out


def scan_items(view: Any, sets: list[ShardSet], *, on_error: str) -> dict[str, int]:
    """Evaluation items per shard, from meta.json only (for epoch lengths and evaluation padding)."""
    counts: dict[str, int] = {}
    for s in sets:
        for shard in s.shards:
            n = 0
            for _key, meta in _iter_metas(shard, on_error, ReadStats()):
                n += len(view.plan(meta, np.random.default_rng(0), False))
            counts[shard] = n
    return counts


def _iter_metas(shard: str, on_error: str, stats: ReadStats) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, fields, meta in _iter_parsed(shard, on_error, stats, only_meta=True):
        yield key, meta


def _iter_parsed(shard: str, on_error: str, stats: ReadStats,
                 only_meta: bool = False) -> Iterator[tuple[str, dict[str, bytes], dict[str, Any]]]:
    """(key, raw fields, validated meta) per sample; with ``only_meta`` only meta.json is read (the
    member list is then checked later, at decode time). Bad samples/shards raise or are skipped."""
    try:
        for key, fields in iter_raw(shard, only=("meta.json",) if only_meta else None):
            try:
                meta = _meta_only(key, fields, shard) if only_meta else parse_meta(key, fields, shard)[0]
            except SampleError as err:
                if on_error == "raise":
                    raise
                stats.record(err, shard_level=False)
                continue
            yield key, fields, meta
    except ShardError as err:
        if on_error == "raise":
            raise
        stats.record(err, shard_level=True)


def _meta_only(key: str, fields: dict[str, bytes], shard: str) -> dict[str, Any]:
    if "meta.json" not in fields:
        raise SampleError(shard, key, "no meta.json (a truncated shard can cut a sample short)", REWRITE)
    try:
        return validate_meta(json.loads(fields["meta.json"]), shard=shard, key=key)
    except ValueError as err:
        raise SampleError(shard, key, f"meta.json is not valid JSON ({err})", REWRITE) from None


def _too_few_items(view: Any, sets: list[ShardSet], total: int, batch_size: int, world_size: int,
                   on_error: str) -> ShardError:
    """Why a training stream has not one batch, with the fix a command-line user can apply."""
    shards = [sh for s in sets for sh in s.shards]
    videos = {sh: sum(1 for _ in _iter_metas(sh, on_error, ReadStats())) for sh in shards}
    empty = [sh for sh in shards if not videos[sh]]
    if len(empty) == len(shards):
        return empty_shard(empty[0], others=len(empty) - 1)
    if not total:
        return ShardError(shards[0], f"the {sum(videos.values())} video(s) of the {len(shards)} shard(s) give no "
                          f"{view.name} item: no visible instance, or fewer frames than a window",
                          f"Use shards with objects in view and enough frames. {CHECK}")
    return ShardError(shards[0], f"the {len(shards)} shard(s) hold {total} {view.name} items, fewer than one batch "
                      f"of {batch_size} per rank x {world_size} rank(s)", "Use a smaller batch size "
                      "(model.batch_size in the training config) or shards with more videos")


class ViewStream(IterableDataset):
    """The IterableDataset behind every loader; yields whole collated batches (use batch_size=None)."""

    def __init__(self, view: Any, sets: list[ShardSet], *, batch_size: int, training: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, epoch_batches: int | None = None,
                 on_error: str = "raise", buffer_videos: int = 8, items_per_visit: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.view, self.sets, self.batch_size, self.training = view, sets, batch_size, training
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers = max(num_workers, 1)
        self.on_error, self.buffer_videos, self.items_per_visit = on_error, buffer_videos, items_per_visit
        self.epoch, self.skip, self.template = 0, {}, None
        for s in sets:
            for shard in s.shards:
                if not os.path.exists(shard):
                    raise ShardError(shard, "the file does not exist",
                                     "Check the path, or generate/convert the shards first")
        if training:
            if epoch_batches is None:
                total = sum(scan_items(view, sets, on_error=on_error).values())
                epoch_batches = total // (batch_size * world_size)
                if epoch_batches < 1:
                    raise _too_few_items(view, sets, total, batch_size, world_size, on_error)
            self.epoch_batches = int(epoch_batches)
            self._plan_training()
        else:
            self._plan_eval()

    # -- planning ------------------------------------------------------------------------------
    def _plan_training(self) -> None:
        nw, eb = self.num_workers, self.epoch_batches
        self.worker_batches = [eb // nw + (w < eb % nw) for w in range(nw)]

    def _plan_eval(self) -> None:
        shards = [sh for s in self.sets for sh in s.shards]
        slots = self.world_size * self.num_workers
        if len(shards) < slots:
            raise ShardError(shards[0], f"{len(shards)} shard(s) cannot be split over {self.world_size} rank(s) x "
                             f"{self.num_workers} worker(s) = {slots} readers for evaluation",
                             f"Write at least {slots} shards (e.g. a smaller --shard-videos) or use fewer workers")
        counts = scan_items(self.view, self.sets, on_error=self.on_error)
        self.template = None
        for sh in shards:
            for _k, meta in _iter_metas(sh, self.on_error, ReadStats()):
                self.template = meta
                break
            if self.template is not None:
                break
        if self.template is None:
            raise ShardError(shards[0], "no readable sample in any shard", "Check the shards with "
                             "`loci-fast data inspect --check`")
        self.slot_shards = [shards[g::slots] for g in range(slots)]
        per_slot = [math.ceil(sum(counts[s] for s in self.slot_shards[g]) / self.batch_size) for g in range(slots)]
        nw = self.num_workers
        per_rank = [per_slot[r * nw:(r + 1) * nw] for r in range(self.world_size)]
        target = max(sum(p) for p in per_rank)
        mine = list(per_rank[self.rank])
        for _ in range(target - sum(mine)):  # whole dummy batches go to the least loaded workers
            mine[int(np.argmin(mine))] += 1
        self.worker_batches = mine
        self.epoch_batches = target

    def __len__(self) -> int:
        return self.epoch_batches

    # -- iteration -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        if nw != self.num_workers:
            raise RuntimeError(f"the stream was built for num_workers={self.num_workers} but runs with {nw}")
        stats = ReadStats()
        gen = self._train_batches(wid, stats) if self.training else self._eval_batches(wid, stats)
        for b, items in enumerate(gen):
            if b < self.skip.get(wid, 0):
                continue  # consumed before a resume: chosen from metadata, never decoded
            if info is None:  # in the caller's process: tiny tensor ops, where extra threads only contend
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    batch = self._produce(items, stats)
                finally:
                    torch.set_num_threads(threads)
            else:
                batch = self._produce(items, stats)
            batch["_worker"], batch["_batch"] = wid, b
            batch["_skipped"] = stats.skipped_samples + stats.skipped_shards
            yield batch

    def _rng(self, wid: int, *extra: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, self.rank, wid, *extra])

    def _draw_videos(self, wid: int, stats: ReadStats) -> Iterator[tuple[str, str, dict, dict]]:
        rng = self._rng(wid, 1)
        weights = np.array([s.weight for s in self.sets])
        weights = weights / weights.sum()
        failed = 0
        while True:
            s = self.sets[int(rng.choice(len(self.sets), p=weights))]
            shard = s.shards[int(rng.integers(len(s.shards)))]
            got = False
            for key, fields, meta in _iter_parsed(shard, self.on_error, stats):
                got, failed = True, 0
                yield shard, key, fields, meta
            if not got:
                failed += 1
                if failed >= MAX_FAILED_DRAWS:
                    raise DataError(f"{failed} shard draws in a row gave no readable video (last: {shard}); "
                                    "check the shards with `loci-fast data inspect --check`")

    def _train_batches(self, wid: int, stats: ReadStats) -> Iterator[list[tuple[_Video, Any, int]]]:
        rng = self._rng(wid, 0)
        source = self._draw_videos(wid, stats)
        buffer: list[_Video] = []
        counter = 0
        for _ in range(self.worker_batches[wid]):
            items = []
            while len(items) < self.batch_size:
                empty = 0
                while len(buffer) < self.buffer_videos:
                    shard, key, fields, meta = next(source)
                    vrng = self._rng(wid, 2, counter)
                    counter += 1
                    plan = self.view.plan(meta, vrng, True)
                    order = [plan[i] for i in vrng.permutation(len(plan))][: self.items_per_visit]
                    if order:
                        buffer.append(_Video(shard, key, fields, meta, order))
                        self.template = self.template or meta
                    else:
                        empty += 1
                        if empty >= MAX_EMPTY_VIDEOS:
                            raise DataError(f"{empty} videos in a row (last: {shard}, sample {key!r}) have no "
                                            f"{self.view.name} item: no visible instance, or fewer frames than "
                                            "sequence_len. Check the shards and the loader settings")
                j = int(rng.integers(len(buffer)))
                video = buffer[j]
                items.append((video, video.items.pop(), int(rng.integers(2**62))))
                if not video.items:
                    buffer.pop(j)
            yield items

    def _eval_batches(self, wid: int, stats: ReadStats) -> Iterator[list[tuple[_Video | None, Any, int]]]:
        shards = self.slot_shards[self.rank * self.num_workers + wid]

        def items() -> Iterator[tuple[_Video, Any, int]]:
            for shard in shards:
                for key, fields, meta in _iter_parsed(shard, self.on_error, stats):
                    plan = self.view.plan(meta, None, False)
                    video = _Video(shard, key, fields, meta, plan)
                    for i, item in enumerate(plan):
                        # Evaluation items get their own seed, so results do not depend on the split.
                        seed = int(np.random.default_rng([self.seed, _stable_hash(key), i]).integers(2**62))
                        yield video, item, seed

        it = items()
        for _ in range(self.worker_batches[wid]):
            batch = []
            for _ in range(self.batch_size):
                batch.append(next(it, (None, None, 0)))
            yield batch
        leftover = next(it, None)
        if leftover is not None:
            raise DataError(f"internal: evaluation items beyond the planned count in {leftover[0].shard} "
                            "(did the shards change while reading?)")

    def _produce(self, items: list[tuple[_Video | None, Any, int]], stats: ReadStats) -> dict[str, Any]:
        out, valid, keys = [], [], []
        for video, item, seed in items:
            made = None
            if video is not None and video.meta is not None:
                try:
                    made = self.view.make(video.decoded(), item, np.random.default_rng(seed), self.training)
                except SampleError as err:
                    if self.on_error == "raise":
                        raise
                    stats.record(err, shard_level=False)
                    video.items, video.fields, video.meta = [], None, None  # the rest of it pads too
            valid.append(made is not None)
            keys.append(video.key if made is not None else "")
            if made is None:
                made = self.view.dummy(self.template)
            out.append(made)
        batch = _collate(out)
        batch["valid"] = torch.tensor(valid)
        batch["key"] = keys
        return batch


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())
