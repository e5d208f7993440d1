"""``loci-fast data inspect``: what a shard set holds, and (``--check``) whether every sample is valid."""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from .errors import DataError
from .reader import decode_sample, expand_paths, iter_raw, parse_meta
from .verify import empty_shard


@dataclass
class InspectReport:
    shards: int = 0
    bytes: int = 0
    videos: int = 0
    frames: int = 0
    sizes: Counter = field(default_factory=Counter)
    fields: Counter = field(default_factory=Counter)
    has_depth: Counter = field(default_factory=Counter)
    datasets: Counter = field(default_factory=Counter)
    instances: int = 0
    checked: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def text(self) -> str:
        def fmt(c: Counter) -> str:
            return ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0])))

        lines = [f"shards: {self.shards} ({self.bytes / 2**20:.1f} MiB)",
                 f"videos: {self.videos}", f"frames: {self.frames}",
                 f"sizes (HxW): {fmt(self.sizes)}", f"fields: {fmt(self.fields)}",
                 f"has_depth: {fmt(self.has_depth)}", f"datasets: {fmt(self.datasets)}",
                 f"instances: {self.instances}"]
        if self.checked:
            lines.append("check: every sample decodes and validates" if self.ok
                         else f"check: {len(self.errors)} problem(s):")
        lines += [f"  {e}" for e in self.errors]
        return "\n".join(lines)


def inspect_shards(paths: str | Iterable[str], *, check: bool = False, progress: bool = False) -> InspectReport:
    """Summarise shards; with ``check`` decode and validate every sample, collecting each problem
    (with its shard and key) instead of stopping at the first. ``progress`` shows a bar per shard."""
    from tqdm import tqdm

    rep = InspectReport(checked=check)
    try:
        shards = expand_paths(paths)
    except DataError as err:
        rep.errors.append(str(err))
        return rep
    for shard in tqdm(shards, unit="shard", desc="inspect", disable=not progress, leave=False):
        rep.shards += 1
        rep.bytes += os.path.getsize(shard) if os.path.exists(shard) else 0
        before = rep.videos
        try:
            for key, fields in iter_raw(shard):
                try:
                    if check:
                        meta = decode_sample(key, fields, shard)["meta"]
                    else:
                        meta, _ = parse_meta(key, fields, shard)
                except DataError as err:
                    rep.errors.append(str(err))
                    try:
                        meta = json.loads(fields.get("meta.json", b"{}"))
                    except ValueError:
                        meta = {}
                    if not isinstance(meta, dict):
                        meta = {}
                rep.videos += 1
                rep.frames += int(meta.get("num_frames", 0) or 0)
                rep.sizes[f"{meta.get('height', '?')}x{meta.get('width', '?')}"] += 1
                rep.fields.update(fields.keys())
                rep.has_depth[str(meta.get("has_depth", "?")).lower()] += 1
                rep.datasets[str(meta.get("dataset", "?"))] += 1
                rep.instances += int(meta.get("num_instances", 0) or 0)
        except DataError as err:
            rep.errors.append(str(err))
            continue
        if rep.videos == before:
            rep.errors.append(str(empty_shard(shard)))
    return rep
