"""Load converted CATER shards as upstream's loader hands them to the model (§6.1, §6.3).

Frames are decoded at load time from the stored original bytes: with OpenCV when it is installed
(``cv2.imdecode(..., IMREAD_COLOR)``: BGR, exactly upstream's pixels), otherwise with PIL and the
channels flipped to BGR (a warning says so: JPEG decoders can differ by one level on some pixels).
The background is ``background.jpg`` beside the shards, resized to the working resolution with
OpenCV's cubic interpolation (without OpenCV, a numpy re-implementation of it that gives OpenCV's
pixels for the release's 320x240 -> 80x60; PIL's bicubic differs by up to 15 levels there).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from functools import lru_cache
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import SampleError, ShardError
from ..reader import expand_paths, iter_raw, parse_meta
from ..schema import FRAMES_FIELD, frames_field, rgb_layout, unpack_frames
from .labels import NUM_FRAMES

_warned: set[str] = set()


def _warn_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        warnings.warn(message, stacklevel=3)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def decode_bgr(data: bytes) -> np.ndarray:
    """One JPEG/PNG file -> (H, W, 3) uint8 BGR, as upstream's ``cv2.imdecode(IMREAD_COLOR)``."""
    cv2 = _cv2()
    if cv2 is not None:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError("OpenCV cannot decode the frame")
        return img
    _warn_once("decode", "OpenCV (opencv-python-headless) is not installed: CATER frames are decoded with PIL "
               "and flipped to BGR, which can differ from upstream's OpenCV decode by one level on some pixels")
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])


def _cubic_taps(dst: int, src: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_CUBIC taps along one axis: (dst, 4) source indices (replicated at the borders)
    and (dst, 4) fixed-point weights (Keys kernel, a = -0.75, scaled by 2048), all in float32 as
    OpenCV computes them."""
    a, one = np.float32(-0.75), np.float32(1)
    f = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    x = (f - s.astype(np.float32)).astype(np.float32)
    w0 = ((a * (x + one) - 5 * a) * (x + one) + 8 * a) * (x + one) - 4 * a
    w1 = ((a + 2) * x - (a + 3)) * x * x + one
    w2 = ((a + 2) * (one - x) - (a + 3)) * (one - x) * (one - x) + one
    w = np.stack([w0, w1, w2, one - w0 - w1 - w2], 1).astype(np.float32)
    idx = np.clip(s[:, None] + np.arange(-1, 3)[None], 0, src - 1)
    return idx, np.rint(w * np.float32(2048)).astype(np.int64)


def resize_cubic_numpy(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV's ``resize(INTER_CUBIC)`` of a (H, W, C) uint8 image re-done in numpy: integer horizontal
    pass, float32 vertical pass rounded to nearest. Equal to OpenCV 5.0 for CATER's 4x and 2x
    downscales (measured); within one level for other sizes."""
    h, w = size
    yi, yw = _cubic_taps(h, img.shape[0])
    xi, xw = _cubic_taps(w, img.shape[1])
    rows = (img.astype(np.int64)[:, xi] * xw[None, :, :, None]).sum(2).astype(np.float32)  # (H, w, C)
    beta = yw.astype(np.float32) * np.float32(1.0 / (2048 * 2048))
    acc = rows[yi[:, 0]] * beta[:, 0, None, None]
    for k in range(1, 4):
        acc = acc + rows[yi[:, k]] * beta[:, k, None, None]
    return np.clip(np.rint(acc), 0, 255).astype(np.uint8)


def resize_cubic(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) with OpenCV's INTER_CUBIC (its numpy re-implementation
    ``resize_cubic_numpy`` without OpenCV)."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    cv2 = _cv2()
    if cv2 is not None:
        return cv2.resize(img, dsize=(w, h), interpolation=cv2.INTER_CUBIC)
    return resize_cubic_numpy(img, size)


@lru_cache(maxsize=8)
def _background(path: str, sha256: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise ShardError(path, "missing: CATER shards keep the background once, beside them",
                         "Copy background.jpg from the folder convert-cater wrote next to these shards")
    data = open(path, "rb").read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ShardError(path, "is not the background these shards were converted with (sha256 differs)",
                         "Copy the background.jpg that convert-cater wrote beside them")
    return decode_bgr(data)


def load_background(shard: str, meta: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """(1, 3, H, W) float32 BGR in [0, 1]: the shard folder's background at ``size`` (height, width)."""
    img = _background(os.path.join(os.path.dirname(os.path.abspath(shard)), meta["background"]),
                      meta["background_sha256"])
    return (resize_cubic(img, size).transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255.0))


def decode_cater(key: str, fields: dict[str, bytes], shard: str, *, size: tuple[int, int] | None = None,
                 pad_to: int = NUM_FRAMES) -> dict[str, Any]:
    """One raw CATER sample -> upstream's item as a dict.

    ``size`` (height, width) picks the resolution (default: the sample's first, 240x320). Returns
    ``frames`` (pad_to, 3, H, W) float32 BGR in [0, 1], zero-padded after ``num_frames``;
    ``background`` (1, 3, H, W) float32 BGR; ``snitch_xyz`` (n, 3) float64; ``label`` int;
    ``contained`` (301,) float64; ``key``, ``split``, ``num_frames``, ``meta``.
    """
    meta, _ = parse_meta(key, fields, shard)
    if rgb_layout(meta) != "frames" or "cater.json" not in meta.get("extra_members", []):
        raise SampleError(shard, key, "not a CATER sample (no 'frames' layout or no cater.json)",
                          "Convert the release with `loci-fast data convert-cater`")
    res = [tuple(r) for r in meta["resolutions"]]
    size = res[0] if size is None else tuple(size)
    if size not in res:
        raise SampleError(shard, key, f"has no frames at {size[0]}x{size[1]} (HxW); it holds {res}",
                          "Pick one of those sizes, or convert the release with that --resolutions")
    member = FRAMES_FIELD if size == res[0] else frames_field(*size)
    t = meta["num_frames"]
    if t > pad_to:
        raise SampleError(shard, key, f"holds {t} frames, more than pad_to={pad_to}", "Raise pad_to")
    try:
        files = unpack_frames(fields[member])
        if len(files) != t:
            raise ValueError(f"{member} holds {len(files)} frames, meta.json says {t}")
        frames = np.zeros((pad_to, 3, *size), np.float32)
        for i, f in enumerate(files):
            img = decode_bgr(f)
            if img.shape != (*size, 3):
                raise ValueError(f"frame {i} of {member} is {img.shape}, expected {(*size, 3)}")
            frames[i] = img.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        tracks = json.loads(fields["cater.json"])
    except (OSError, ValueError, SyntaxError) as err:
        raise SampleError(shard, key, f"CATER member does not decode ({err})",
                          "Convert the release again with `loci-fast data convert-cater`") from None
    return {"key": key, "split": meta["split"], "meta": meta, "num_frames": t, "frames": frames,
            "background": load_background(shard, meta, size),
            "snitch_xyz": np.asarray(tracks["snitch_xyz"], np.float64).reshape(-1, 3), "label": int(tracks["label"]),
            "contained": np.asarray(tracks["contained"], np.float64)}


def iter_cater(paths: str | os.PathLike | Iterable[str | os.PathLike], *, size: tuple[int, int] | None = None,
               pad_to: int = NUM_FRAMES) -> Iterator[dict[str, Any]]:
    """Every video of CATER shards as ``decode_cater`` returns it (paths, folders, globs, braces)."""
    for shard in expand_paths(paths):
        for key, fields in iter_raw(shard):
            yield decode_cater(key, fields, shard, size=size, pad_to=pad_to)
