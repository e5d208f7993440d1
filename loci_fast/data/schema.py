"""The ``loci-video`` schema, version 1, and its one validator.

One webdataset sample per video, all members named ``<key>.<field>``:

=====================  ======================================================================
``meta.json``          required; the keys in ``META_TYPES`` (see ``validate_meta``)
``rgb.png``/``rgb.jpg`` required; the T frames stacked vertically, (T*H, W, 3) uint8
``depth.png``          iff ``has_depth``: 16-bit PNG, (T*H, W), value q means q/65535*depth_max
``segmentation.png``   required; (T*H, W) integer ids, 0 = background, 8-bit or 16-bit PNG
``instance_masks.png`` optional; (T*M*H, W) uint8 soft (amodal) masks, channel m <-> id m+1
=====================  ======================================================================

Backward-compatible extension for datasets whose compressed frames must be kept byte for byte
(CATER): optional meta keys, each with a default that describes every earlier shard:

* ``rgb_layout`` "stacked" (default) or "frames": the RGB member is then ``rgb.frames``, the
  original per-frame files (JPEG/PNG bytes, unchanged) in one container (``pack_frames``);
* ``resolutions`` (default ``[[height, width]]``): with "frames", each further [H, W] has a member
  ``rgb_<W>x<H>.frames`` holding the same frames at that size;
* ``has_segmentation`` (default true): false means no ``segmentation.png`` (then num_instances is 0,
  and readers hand out an all-zero segmentation);
* ``extra_members`` (default ``[]``): names of further members a dataset keeps (e.g. CATER's
  ``labels.json``), required when listed, passed through as bytes.

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
RGB_LAYOUTS = ("stacked", "frames")
FRAMES_FIELD = "rgb.frames"
FRAMES_MAGIC = b"LVFRAMES"  # container: magic, uint32 LE count n, n uint32 LE lengths, the n files' bytes
# optional extension keys (module docstring) -> accepted types; absent means the v1 default
EXTENSION_TYPES: dict[str, tuple[type, ...]] = {
    "rgb_layout": (str,), "resolutions": (list,), "has_segmentation": (bool,), "extra_members": (list,),
}


def frames_field(height: int, width: int) -> str:
    """The member of a further resolution in the "frames" layout: ``rgb_<W>x<H>.frames``."""
    return f"rgb_{width}x{height}.frames"


def pack_frames(files: list[bytes]) -> bytes:
    """Put per-frame files (bytes unchanged, in order) into one ``.frames`` container."""
    n = len(files)
    head = FRAMES_MAGIC + n.to_bytes(4, "little") + b"".join(len(f).to_bytes(4, "little") for f in files)
    return head + b"".join(files)


def unpack_frames(data: bytes) -> list[bytes]:
    """The per-frame files of a ``.frames`` container; ``ValueError`` when it is damaged."""
    m = len(FRAMES_MAGIC)
    if data[:m] != FRAMES_MAGIC or len(data) < m + 4:
        raise ValueError("not a frames container (bad magic)")
    n = int.from_bytes(data[m:m + 4], "little")
    start = m + 4 + 4 * n
    if len(data) < start:
        raise ValueError(f"frames container header for {n} frames is cut short")
    lengths = [int.from_bytes(data[m + 4 + 4 * i:m + 8 + 4 * i], "little") for i in range(n)]
    if start + sum(lengths) != len(data):
        raise ValueError(f"frames container holds {len(data) - start} bytes of frames, its header says {sum(lengths)}")
    out = []
    for ln in lengths:
        out.append(data[start:start + ln])
        start += ln
    return out


def rgb_layout(meta: dict[str, Any]) -> str:
    return meta.get("rgb_layout", "stacked")


def has_segmentation(meta: dict[str, Any]) -> bool:
    return meta.get("has_segmentation", True)


def extension_fields(meta: dict[str, Any]) -> set[str]:
    """The members that the extension keys of ``meta`` add (further resolutions, extra members)."""
    names = set(meta.get("extra_members", []))
    if rgb_layout(meta) == "frames":
        names |= {frames_field(h, w) for h, w in meta.get("resolutions", [])[1:]}
    return names


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
    for k, types in EXTENSION_TYPES.items():
        if k in meta and (not isinstance(meta[k], types) or (bool not in types and isinstance(meta[k], bool))):
            raise bad(f"meta.json field {k!r} is {meta[k]!r}, expected {'/'.join(t.__name__ for t in types)}")
    if rgb_layout(meta) not in RGB_LAYOUTS:
        raise bad(f"meta.json rgb_layout is {meta['rgb_layout']!r}, expected one of {RGB_LAYOUTS}")
    res = meta.get("resolutions", [[meta["height"], meta["width"]]])
    if (not res or not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) and x > 0 for x in r)
                           for r in res) or res[0] != [meta["height"], meta["width"]]):
        raise bad(f"meta.json resolutions is {res!r}: expected [[H, W], ...] starting with [height, width]")
    if len(res) > 1 and rgb_layout(meta) != "frames":
        raise bad("meta.json lists further resolutions, which only the 'frames' rgb_layout stores")
    if not has_segmentation(meta) and (meta["num_instances"] or meta["num_instance_masks"] or any(fi)):
        raise bad("has_segmentation is false but instances are listed")
    extra = meta.get("extra_members", [])
    if not all(isinstance(x, str) and "." in x for x in extra) or set(extra) & (KNOWN_FIELDS | {FRAMES_FIELD}):
        raise bad(f"meta.json extra_members is {extra!r}: expected member names like 'labels.json' that are not "
                  "loci-video fields")
    return meta


def validate_fields(names: set[str], meta: dict[str, Any], *, shard: str, key: str | None) -> str:
    """Check which members a sample has against its meta; return the RGB field name."""
    rgb_fields = (FRAMES_FIELD,) if rgb_layout(meta) == "frames" else RGB_FIELDS
    rgb = [n for n in RGB_FIELDS + (FRAMES_FIELD,) if n in names]
    problems = []
    if len(rgb) != 1 or rgb[0] not in rgb_fields:
        problems.append(f"RGB members {rgb} do not fit rgb_layout {rgb_layout(meta)!r} (one of {rgb_fields})")
    required = [n for n in REQUIRED_FIELDS if n != "segmentation.png" or has_segmentation(meta)]
    problems += [f"no {n}" for n in required if n not in names]
    if not has_segmentation(meta) and "segmentation.png" in names:
        problems.append("has_segmentation is false but segmentation.png is present")
    extension = extension_fields(meta)
    problems += [f"no {n}" for n in sorted(extension - names)]
    if meta["has_depth"] and "depth.png" not in names:
        problems.append("has_depth is true but depth.png is missing")
    if not meta["has_depth"] and "depth.png" in names:
        problems.append("has_depth is false but depth.png is present")
    if (meta["num_instance_masks"] > 0) != ("instance_masks.png" in names):
        problems.append(f"num_instance_masks is {meta['num_instance_masks']} but instance_masks.png is "
                        f"{'present' if 'instance_masks.png' in names else 'missing'}")
    unknown = names - KNOWN_FIELDS - {FRAMES_FIELD} - extension
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
