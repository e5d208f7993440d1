"""The held-out videos of an evaluation: datasets, their windows in a fixed order, and mask checks.

A dataset is one ``--data`` pattern; its videos are visited in the order the evaluation loader
reads them on one process (shards sorted, samples in shard order), and a video longer than the
config's ``sequence_len`` gives one window per ``sequence_len`` frames (``key@start``). That order
is what ``videos=N`` cuts; on several ranks each shard goes to one rank, so every window is
evaluated exactly once.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field


@dataclass
class Dataset:
    """One ``--data`` entry: its label, shard paths and the ids of its windows in order."""

    label: str
    pattern: str
    shards: list[str]
    videos: list[str] = field(default_factory=list)


def dataset_label(pattern: str) -> str:
    """A short name for a shard pattern: ``data/movi-c/val-*.tar`` -> ``movi-c/val``."""
    parts = str(pattern).rstrip("/").split("/")
    base = re.sub(r"(\.tar)$", "", parts[-1])
    base = re.sub(r"[-_]?(\*|\{[^}]*\}|%0?\d*d|\d{3,})$", "", base).strip("-_")
    parent = parts[-2] if len(parts) > 1 and parts[-2] not in ("", ".", "..") else ""
    return f"{parent}/{base}" if parent and base else (base or parent or str(pattern))


def window_id(key: str, start: int) -> str:
    """A window's id: the video key and its first frame."""
    return f"{key}@{int(start)}"


def catalogue(patterns: list[str], sequence_len: int) -> list[Dataset]:
    """The datasets of ``patterns`` with their windows, from each video's ``meta.json`` only.

    Raises ValueError for shards without segmentation masks (the metrics need them), naming the
    shard and the fix; labels that collide get the pattern's position appended.
    """
    from loci_fast.data.reader import expand_paths, iter_raw
    from loci_fast.data.schema import has_segmentation, validate_meta

    out: list[Dataset] = []
    for n, pattern in enumerate(patterns):
        shards = expand_paths(pattern)
        label = dataset_label(pattern)
        if any(d.label == label for d in out):
            label = f"{label}#{n}"
        ds = Dataset(label, str(pattern), shards)
        for shard in shards:
            if not os.path.exists(shard):
                raise FileNotFoundError(f"--data {pattern}: no shard {shard}")
            for key, fields in iter_raw(shard, only=("meta.json",)):
                meta = validate_meta(json.loads(fields["meta.json"]), shard=shard, key=key)
                if not has_segmentation(meta):
                    raise ValueError(f"--data {pattern}: video {key!r} in {shard} has no segmentation masks "
                                     "(meta has_segmentation false), so no metric can be computed; evaluate on "
                                     "shards with masks (e.g. `loci-fast data synth` or a converter that keeps them)")
                frames = int(meta["num_frames"])
                if frames >= sequence_len:
                    ds.videos += [window_id(key, s) for s in range(0, frames - sequence_len + 1, sequence_len)]
        if not ds.videos:
            raise ValueError(f"--data {pattern}: no video has sequence_len = {sequence_len} frames; pass shards "
                             "of longer videos or a config with a shorter sequence_len")
        out.append(ds)
    return out
