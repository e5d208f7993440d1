"""The CATER videos of an evaluation: listed once from the shards, split over ranks, streamed in batches.

Every video gets its ordinal (its place in the shards, in shard order) and each rank takes every
``world``-th of the videos still to do, so over all ranks each video is evaluated exactly once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from loci_fast.data.cater.load import decode_cater
from loci_fast.data.errors import DataError
from loci_fast.data.reader import expand_paths, iter_raw

CONVERT = "convert the CATER release with `loci-fast data convert-cater DIR --out SHARDS` and pass those shards"


@dataclass(frozen=True)
class VideoRef:
    """Where one CATER video is: its ordinal over the whole evaluation, shard, key, split, frame count."""

    ordinal: int
    shard: str
    key: str
    split: str
    num_frames: int


def list_cater_videos(paths: str | Iterable[str]) -> list[VideoRef]:
    """Every video of the CATER shards, reading only their meta.json.

    Raises ValueError naming the shard and the fix when a shard is missing or damaged, when a sample is
    not a converted CATER video (no label tracks), or when a key appears twice.
    """
    try:
        shards = expand_paths(paths)
    except DataError as err:
        raise ValueError(str(err)) from None
    if not shards:
        raise ValueError(f"--data {paths}: no shards match; {CONVERT}")
    refs: list[VideoRef] = []
    seen: dict[str, str] = {}
    try:
        for shard in shards:
            for key, fields in iter_raw(shard, only=("meta.json",)):
                meta = _meta(shard, key, fields)
                if key in seen:
                    raise ValueError(f"video {key!r} is in {seen[key]} and in {shard}: pass each shard once "
                                     "(and shards of one split)")
                seen[key] = shard
                refs.append(VideoRef(len(refs), shard, key, str(meta.get("split", "?")), int(meta["num_frames"])))
    except DataError as err:
        raise ValueError(str(err)) from None
    if not refs:
        raise ValueError(f"--data {paths}: the shards hold no videos; {CONVERT}")
    return refs


def _meta(shard: str, key: str, fields: dict[str, bytes]) -> dict[str, Any]:
    try:
        meta = json.loads(fields["meta.json"])
    except (KeyError, ValueError):
        raise ValueError(f"shard {shard}, sample {key!r}: no readable meta.json; convert the shards again") from None
    if meta.get("rgb_layout") != "frames" or "cater.json" not in meta.get("extra_members", []):
        raise ValueError(f"shard {shard}, sample {key!r} (dataset {meta.get('dataset', '?')!r}) carries no CATER "
                         f"labels (no cater.json snitch tracks): the tracking evaluation needs them; {CONVERT}")
    return meta


def rank_share(todo: Sequence[VideoRef], rank: int, world: int) -> list[VideoRef]:
    """The videos of ``rank`` among ``world`` ranks: every ``world``-th, starting at ``rank``."""
    return list(todo[rank::world])


def batch_count(todo: int, world: int, batch_size: int) -> int:
    """Batches every rank runs (the largest share's; smaller shares run empty batches at the end)."""
    share = -(-todo // world)
    return -(-share // batch_size)


def iter_batches(refs: Sequence[VideoRef], batch_size: int, *, size: tuple[int, int]) -> Iterator[list[dict]]:
    """Lists of up to ``batch_size`` decoded videos (``decode_cater`` at ``size``) in the order of ``refs``,
    reading each shard once."""
    wanted: dict[str, set[str]] = {}
    for r in refs:
        wanted.setdefault(r.shard, set()).add(r.key)
    order = {(r.shard, r.key): i for i, r in enumerate(refs)}
    batch: list[dict] = []
    try:
        for shard in dict.fromkeys(r.shard for r in refs):
            for key, fields in iter_raw(shard):
                if key not in wanted[shard]:
                    continue
                item = decode_cater(key, fields, shard, size=size)
                item["ref"] = refs[order[(shard, key)]]
                batch.append(item)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
    except DataError as err:
        raise ValueError(str(err)) from None
    if batch:
        yield batch
