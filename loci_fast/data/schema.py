"""The ``loci-video`` schema, version 1, and its one validator.

One webdataset sample per video, all members named ``<key>.<field>``:

=====================  ======================================================================
``meta.json``          required; the keys in ``META_TYPES`` (see ``validate_meta``)
``rgb.png``/``rgb.jpg`` required; the T frames stacked vertically, (T*H, W, 3) uint8
``depth.png``          iff ``has_depth``: 16-bit PNG, (T*H, W), value q means q/65535*depth_max
``segmentation.png``   required; (T*H, W) integer ids, 0 = background, 8-bit or 16-bit PNG
``instance_masks.png`` optional; (T*M*H, W) uint8 soft (amodal) masks, channel m <-> id m+1
=====================  ======================================================================

Stacking frames into one image keeps one decode call per field and lets PNG's row filters work
across the whole clip; decoded arrays are (T, H, W, 3), (T, H, W), (T, H, W) and (T, M, H, W).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import REWRITE, SampleError

FORMAT = "loci-video"
VERSION = 1
DEPTH_LEVELS = 65535  # 16-bit quantisation of depth over [0, depth_max]
RGB_FIELDS = ("rgb.png", "rgb.jpg")
REQUIRED_FIELDS = ("meta.json", "segmentation.png")
OPTIONAL_FIELDS = ("depth.png", "instance_masks.png")
KNOWN_FIELDS = set(RGB_FIELDS) | set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS)

# key -> accepted python types. The first eleven are the fields; the rest make depth
# decodable and let loaders count items (windows, crops, pairs) from metadata alone.
META_TYPES: dict[str, tuple[type, ...]] = {
    "format": (str,), "version": (int,), "dataset": (str,), "split": (str,),
    "num_frames": (int,), "height": (int,), "width": (int,), "has_depth": (bool,),
    "num_instances": (int,), "static_camera": (bool,), "source": (str,),
    "depth_unit": (str,),          # "m" (metric, synth) or "normalized" ([0, 1], upstream HDF5)
    "depth_max": (int, float),     # depth value of PNG level 65535; 0 when has_depth is false
    "num_instance_masks": (int,),  # M of instance_masks.png, 0 when absent
    "frame_instances": (list,),    # per frame, the sorted ids with at least one visible pixel
}
DEPTH_UNITS = ("m", "normalized")


def validate_meta(meta: Any, *, shard: str, key: str | None) -> dict[str, Any]:
    """Check a decoded ``meta.json`` against loci-video v1; return it or raise ``SampleError``."""
    def bad(problem: str, fix: str = REWRITE) -> SampleError:
        return SampleError(shard, key, problem, fix)

    if not isinstance(meta, dict):
        raise bad(f"meta.json holds a {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise bad(f"meta.json format is {meta.get('format')!r}, not {FORMAT!r}: this is not a loci-video shard")
    if meta.get("version") != VERSION:
        raise bad(f"schema version {meta.get('version')!r} is not supported (this reader knows version {VERSION})",
                  "Rewrite the shard with this version of loci-fast, or upgrade loci-fast to read it")
    missing = [k for k in META_TYPES if k not in meta]
    if missing:
        raise bad(f"meta.json lacks {', '.join(missing)}")
    for k, types in META_TYPES.items():
        v = meta[k]
        if not isinstance(v, types) or (bool not in types and isinstance(v, bool)):
            raise bad(f"meta.json field {k!r} is {v!r}, expected {'/'.join(t.__name__ for t in types)}")
    for k in ("num_frames", "height", "width"):
        if meta[k] < 1:
            raise bad(f"meta.json field {k!r} is {meta[k]}, must be at least 1")
    if meta["num_instances"] < 0 or meta["num_instance_masks"] < 0:
        raise bad("meta.json instance counts are negative")
    if meta["depth_unit"] not in DEPTH_UNITS:
        raise bad(f"meta.json depth_unit is {meta['depth_unit']!r}, expected one of {DEPTH_UNITS}")
    if meta["has_depth"] and not meta["depth_max"] > 0:
        raise bad(f"has_depth is true but depth_max is {meta['depth_max']!r}; it must be positive")
    fi = meta["frame_instances"]
    if len(fi) != meta["num_frames"] or not all(isinstance(f, list) for f in fi):
        raise bad(f"frame_instances must hold one list per frame ({meta['num_frames']}), found {len(fi)} entries")
    return meta


def validate_fields(names: set[str], meta: dict[str, Any], *, shard: str, key: str | None) -> str:
    """Check which members a sample has against its meta; return the RGB field name."""
    rgb = [n for n in RGB_FIELDS if n in names]
    problems = []
    if len(rgb) != 1:
        problems.append("no RGB frames (rgb.png or rgb.jpg)" if not rgb else "both rgb.png and rgb.jpg")
    problems += [f"no {n}" for n in REQUIRED_FIELDS if n not in names]
    if meta["has_depth"] and "depth.png" not in names:
        problems.append("has_depth is true but depth.png is missing")
    if not meta["has_depth"] and "depth.png" in names:
        problems.append("has_depth is false but depth.png is present")
    if (meta["num_instance_masks"] > 0) != ("instance_masks.png" in names):
        problems.append(f"num_instance_masks is {meta['num_instance_masks']} but instance_masks.png is "
                        f"{'present' if 'instance_masks.png' in names else 'missing'}")
    unknown = names - KNOWN_FIELDS
    if unknown:
        problems.append(f"unknown members {sorted(unknown)}")
    if problems:
        raise SampleError(shard, key, "; ".join(problems) + " (a truncated shard can cut a sample short)", REWRITE)
    return rgb[0]


def validate_arrays(video: dict[str, Any], *, shard: str, key: str | None) -> None:
    """Check decoded (or to-be-encoded) arrays against the meta: shapes, dtypes, id ranges."""
    meta = video["meta"]
    t, h, w = meta["num_frames"], meta["height"], meta["width"]

    def check(name: str, arr: Any, shape: tuple[int, ...], kinds: str) -> None:
        if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype.kind not in kinds:
            got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise SampleError(shard, key, f"{name} is {got}, expected shape {shape} ({kinds!r} dtype kind) "
                              "from meta.json", REWRITE)

    check("rgb", video["rgb"], (t, h, w, 3), "u")
    if video["rgb"].dtype != np.uint8:
        raise SampleError(shard, key, f"rgb is {video['rgb'].dtype}, expected uint8", REWRITE)
    if meta["has_depth"]:
        check("depth", video["depth"], (t, h, w), "f")
    elif video.get("depth") is not None:
        raise SampleError(shard, key, "has_depth is false but a depth array is given", REWRITE)
    check("segmentation", video["segmentation"], (t, h, w), "ui")
    im = video.get("instance_masks")
    if meta["num_instance_masks"]:
        check("instance_masks", im, (t, meta["num_instance_masks"], h, w), "u")
    elif im is not None:
        raise SampleError(shard, key, "num_instance_masks is 0 but instance masks are given", REWRITE)
    seg = video["segmentation"]
    if seg.size and (seg.min() < 0 or seg.max() > max(meta["num_instances"], meta["num_instance_masks"])):
        raise SampleError(shard, key, f"segmentation ids span [{seg.min()}, {seg.max()}] but num_instances is "
                          f"{meta['num_instances']}", REWRITE)


def frame_instances(segmentation: np.ndarray) -> list[list[int]]:
    """Per frame, the sorted non-zero ids present in a (T, H, W) segmentation."""
    return [sorted(int(i) for i in np.unique(f) if i != 0) for f in segmentation]
