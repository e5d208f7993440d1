"""Write loci-video samples into webdataset tar shards ``<name>-%06d.tar``.

Each shard is written under a temporary name and renamed when complete, so a file with the final
name is always whole; an interrupted run leaves only ``*.tar.tmp*`` files, which the next run
deletes. Tar members get a fixed mtime and owner so that equal samples give byte-equal shards.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import codec
from .schema import FORMAT, VERSION, frame_instances, validate_arrays

SHARD_PATTERN = "{name}-{index:06d}.tar"
_MTIME = 1_700_000_000.0


def encode_video(video: dict[str, Any], *, rgb_codec: str = "png") -> dict[str, Any]:
    """Turn a video dict (key, meta, rgb, depth, segmentation, instance_masks) into a tar sample.

    ``meta`` needs the issue's fields (dataset, split, static_camera, source, ...); ``format``,
    ``version``, shape fields, ``frame_instances`` and ``num_instance_masks`` are filled in here.
    Depth is in the unit ``meta["depth_unit"]`` and quantised over [0, ``meta["depth_max"]``].
    """
    key = video["key"]
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/' (webdataset splits names at dots)")
    rgb, seg = video["rgb"], video["segmentation"]
    depth, masks = video.get("depth"), video.get("instance_masks")
    meta = dict(video["meta"])
    t, h, w = rgb.shape[:3]
    meta.update(format=FORMAT, version=VERSION, num_frames=int(t), height=int(h), width=int(w),
                has_depth=depth is not None, frame_instances=frame_instances(seg),
                num_instance_masks=0 if masks is None else int(masks.shape[1]))
    meta.setdefault("depth_unit", "m")
    if depth is None:
        meta["depth_max"] = 0.0
    validate_arrays({**video, "meta": meta}, shard="(being written)", key=key)
    sample: dict[str, Any] = {"__key__": key}
    sample["meta.json"] = json.dumps(meta, sort_keys=True).encode()
    if rgb_codec == "png":
        sample["rgb.png"] = codec.encode_png(rgb)
    elif rgb_codec == "jpg":
        sample["rgb.jpg"] = codec.encode_jpeg(rgb)
    else:
        raise ValueError(f"rgb_codec must be 'png' or 'jpg', got {rgb_codec!r}")
    if depth is not None:
        sample["depth.png"] = codec.encode_depth(depth, float(meta["depth_max"]))
    sample["segmentation.png"] = codec.encode_segmentation(np.asarray(seg))
    if masks is not None:
        sample["instance_masks.png"] = codec.encode_png(masks.astype(np.uint8).reshape(-1, h, w))
    return sample


def shard_path(out_dir: str | Path, name: str, index: int) -> Path:
    return Path(out_dir) / SHARD_PATTERN.format(name=name, index=index)


def write_shard(path: str | Path, samples: Iterable[dict[str, Any]]) -> int:
    """Write encoded samples to ``path`` via a temporary file and an atomic rename; return the count."""
    import webdataset as wds

    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    count = 0
    try:
        with open(tmp, "wb") as f:
            writer = wds.TarWriter(f, encoder=False, mtime=_MTIME, user="loci", group="loci")
            for sample in samples:
                writer.write(sample)
                count += 1
            writer.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


def remove_partial(out_dir: str | Path, name: str) -> list[Path]:
    """Delete temporary files left by an interrupted run; return what was deleted."""
    gone = sorted(Path(out_dir).glob(f"{name}-*.tar.tmp*"))
    for p in gone:
        p.unlink()
    return gone


class ShardWriter:
    """Roll encoded samples into ``<out_dir>/<name>-%06d.tar``, ``max_videos`` per shard.

    Samples are buffered in memory until a shard is full (shards hold tens of videos), then the
    shard is written in one go through ``write_shard``.
    """

    def __init__(self, out_dir: str | Path, name: str, *, max_videos: int = 64, start_index: int = 0):
        if max_videos < 1:
            raise ValueError(f"max_videos must be at least 1, got {max_videos}")
        self.out_dir, self.name, self.max_videos = Path(out_dir), name, max_videos
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.index, self.buffer, self.paths = start_index, [], []

    def write(self, sample: dict[str, Any]) -> None:
        self.buffer.append(sample)
        if len(self.buffer) >= self.max_videos:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            path = shard_path(self.out_dir, self.name, self.index)
            write_shard(path, self.buffer)
            self.paths.append(path)
            self.index, self.buffer = self.index + 1, []

    def close(self) -> list[Path]:
        """Write the last partial shard; return every shard path written."""
        self.flush()
        return self.paths

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
