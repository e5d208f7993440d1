"""Read loci-video shards: expand path patterns, walk tar members strictly, decode and validate.

Python's tarfile stops silently at a damaged or truncated header; we check for the end-of-archive
marker afterwards, so a cut-off shard is reported instead of looking shorter than it is.
"""
from __future__ import annotations

import glob
import io
import json
import os
import tarfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from . import codec
from .errors import REWRITE, DataError, SampleError, ShardError
from .schema import has_segmentation, rgb_layout, unpack_frames, validate_arrays, validate_fields, validate_meta


def decode_frames_rgb(data: bytes, n: int) -> np.ndarray:
    """A ``.frames`` container of n per-frame JPEG/PNG files -> (n, H, W, 3) uint8 RGB (PIL)."""
    from PIL import Image

    files = unpack_frames(data)
    if len(files) != n:
        raise ValueError(f"the frames container holds {len(files)} frames, meta.json says {n}")
    out = []
    for f in files:
        with Image.open(io.BytesIO(f)) as im:
            out.append(np.asarray(im.convert("RGB")))
    if len({a.shape for a in out}) > 1:
        raise ValueError(f"frames of different sizes {sorted({a.shape for a in out})}")
    return np.stack(out)


def _braces(pattern: str) -> list[str]:
    """Expand ``{a..b}`` (zero-padded like ``a``) and ``{x,y}`` groups, as webdataset's braceexpand.

    Used when braceexpand (a webdataset dependency) is missing, e.g. on the GPU image.
    """
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[end], 0)
        if depth == 0:
            break
    else:
        return [pattern]
    body, head, tail = pattern[start + 1:end], pattern[:start], pattern[end + 1:]
    lo, sep, hi = body.partition("..")
    if sep and lo.isdigit() and hi.isdigit():
        options = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        options, depth, cur = [], 0, ""
        for ch in body:  # split on top-level commas only
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if ch == "," and depth == 0:
                options.append(cur)
                cur = ""
            else:
                cur += ch
        options.append(cur)
    return [x for opt in options for x in _braces(head + opt + tail)]


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Shard paths from paths, globs (``*``, ``?``, ``[..]``) and brace patterns (``a-{000..003}.tar``).

    Directories expand to the ``*.tar`` files inside. Literal paths are kept even when missing, so
    the reader can name them; a glob that matches nothing raises ``ShardError``.
    """
    try:
        from braceexpand import braceexpand
    except ImportError:
        braceexpand = _braces
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        for q in braceexpand(str(p)):
            if os.path.isdir(q):
                found = sorted(glob.glob(os.path.join(q, "*.tar")))
                if not found:
                    raise ShardError(q, "the folder holds no *.tar shards", "Point at a folder of loci-video shards")
                out += found
            elif glob.has_magic(q):
                found = sorted(glob.glob(q))
                if not found:
                    raise ShardError(q, "the pattern matches no file", "Check the path or create the shards first")
                out += found
            else:
                out.append(q)
    return out


@dataclass
class ReadStats:
    """Counts kept while reading with ``on_error="skip"``."""

    skipped_samples: int = 0
    skipped_shards: int = 0
    messages: list[str] = field(default_factory=list)

    def record(self, err: DataError, *, shard_level: bool) -> None:
        if shard_level:
            self.skipped_shards += 1
        else:
            self.skipped_samples += 1
        if len(self.messages) < 100:
            self.messages.append(str(err))
        warnings.warn(f"skipping: {err}", stacklevel=3)


def _split_name(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    prefix = name[: len(name) - len(base)]
    key, _, fld = base.partition(".")
    return prefix + key, fld


def iter_raw(shard: str, only: Iterable[str] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {field: bytes})`` for each sample of a tar shard, strictly.

    ``only`` limits which fields are read (the others are skipped by seeking), e.g. ``("meta.json",)``.

    Raises ``ShardError`` for a missing, non-tar, corrupt or truncated shard (after yielding the
    samples that precede the damage, except a last sample that the damage may have cut short).
    """
    if not os.path.exists(shard):
        raise ShardError(shard, "the file does not exist", "Check the path, or generate/convert the shards first")
    try:
        tf = tarfile.open(shard, mode="r:")
    except (tarfile.TarError, OSError) as err:
        raise ShardError(shard, f"not a readable tar file ({err})", REWRITE) from None
    only = None if only is None else set(only)
    with tf:
        key, fields = None, {}
        try:
            for member in tf:
                if not member.isfile():
                    continue
                k, fld = _split_name(member.name)
                if k != key:
                    if key is not None:
                        yield key, fields
                    key, fields = k, {}
                if fld in fields:
                    raise ShardError(shard, f"member {member.name!r} appears twice", REWRITE)
                if only is None or fld in only:
                    fields[fld] = tf.extractfile(member).read()
            end = tf.offset
        except tarfile.TarError as err:
            raise ShardError(shard, f"the tar is truncated or corrupt near sample {key!r} ({err})", REWRITE) from None
        with open(shard, "rb") as f:
            f.seek(end)
            tail = f.read(1024)
        if len(tail) < 1024 or tail.count(0) != 1024:
            raise ShardError(shard, f"the tar is truncated or corrupt after sample {key!r} (no end-of-archive "
                             "marker where the last member ends)", REWRITE)
        if key is not None:
            yield key, fields


def parse_meta(key: str, fields: dict[str, bytes], shard: str) -> tuple[dict[str, Any], str]:
    """Validate a raw sample's meta.json and member list; return (meta, rgb field name)."""
    if "meta.json" not in fields:
        raise SampleError(shard, key, f"no meta.json (members: {sorted(fields)}); a truncated shard can cut a "
                          "sample short", REWRITE)
    try:
        meta = json.loads(fields["meta.json"])
    except ValueError as err:
        raise SampleError(shard, key, f"meta.json is not valid JSON ({err})", REWRITE) from None
    meta = validate_meta(meta, shard=shard, key=key)
    rgb_field = validate_fields(set(fields), meta, shard=shard, key=key)
    return meta, rgb_field


def decode_sample(key: str, fields: dict[str, bytes], shard: str) -> dict[str, Any]:
    """Decode one raw sample into the ``iter_videos`` dict, validating it fully."""
    meta, rgb_field = parse_meta(key, fields, shard)
    t = meta["num_frames"]
    try:
        video = {
            "key": key, "meta": meta, "shard": shard,
            "rgb": (codec.decode_image(fields[rgb_field], t, channels=3) if rgb_layout(meta) == "stacked"
                    else decode_frames_rgb(fields[rgb_field], t)),
            "depth": (codec.decode_depth(fields["depth.png"], t, meta["depth_max"]) if meta["has_depth"] else None),
            "segmentation": (codec.decode_image(fields["segmentation.png"], t) if has_segmentation(meta)
                             else np.zeros((t, meta["height"], meta["width"]), np.uint8)),
            "instance_masks": None,
            "extra": {n: fields[n] for n in meta.get("extra_members", [])},
        }
        if meta["num_instance_masks"]:
            m = codec.decode_image(fields["instance_masks.png"], t * meta["num_instance_masks"])
            video["instance_masks"] = m.reshape(t, meta["num_instance_masks"], *m.shape[1:])
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for damaged images
        raise SampleError(shard, key, f"an image member does not decode ({err})", REWRITE) from None
    validate_arrays(video, shard=shard, key=key)
    return video


def iter_videos(paths: str | os.PathLike | Iterable[str | os.PathLike], *, on_error: str = "raise",
                stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Yield every video of the shards as a dict.

    Keys: ``key``, ``meta``, ``shard``, ``rgb`` (T, H, W, 3) uint8, ``depth`` (T, H, W) float32 in
    ``meta["depth_unit"]`` or None, ``segmentation`` (T, H, W) uint8/uint16 ids (0 = background),
    ``instance_masks`` (T, M, H, W) uint8 soft masks (0-255) or None, ``extra`` {member: bytes} of
    the meta's ``extra_members`` (CATER: ``labels.json``, ``cater.json``). Shards in the "frames"
    layout (CATER) decode with PIL to RGB here; ``loci_fast.data.cater`` decodes them as upstream.

    ``on_error="raise"`` (default) raises ``ShardError``/``SampleError`` naming shard and key;
    ``"skip"`` warns, counts in ``stats`` and goes on.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    stats = stats if stats is not None else ReadStats()
    for shard in expand_paths(paths):
        try:
            for key, fields in iter_raw(shard):
                try:
                    yield decode_sample(key, fields, shard)
                except SampleError as err:
                    if on_error == "raise":
                        raise
                    stats.record(err, shard_level=False)
        except ShardError as err:
            if on_error == "raise":
                raise
            stats.record(err, shard_level=True)


def as_float_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> float32 in [0, 1]."""
    return rgb.astype(np.float32) / np.float32(255.0)
