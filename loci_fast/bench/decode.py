"""Decode throughput of the loci-video views (frames per second per DataLoader worker).

``decode_throughput(paths)`` runs each view as a training stream for ``seconds`` and counts the
frames it delivers: ``iter_videos`` (plain decode, frames of whole videos), ``video_chunks``
(B x S frames per batch), ``object_crops`` (one frame per item), ``frame_pairs`` (two frames per
item). ``encoding_table(paths)`` measures bytes per frame and decode time of each stored field
against the alternatives we did not choose.
"""
from __future__ import annotations

import io
import time
import zlib
from typing import Any

import numpy as np

VIEWS = ("iter_videos", "video_chunks", "object_crops", "frame_pairs")


def _timed(batches, frames_of, seconds: float) -> tuple[int, int, float]:
    start = time.perf_counter()
    n = frames = 0
    for batch in batches:
        n += 1
        frames += frames_of(batch)
        if time.perf_counter() - start >= seconds:
            break
    return n, frames, time.perf_counter() - start


def decode_throughput(paths: Any, *, seconds: float = 3.0, workers: int = 1, batch_size: int = 8,
                      sequence_len: int | None = None) -> list[dict[str, Any]]:
    """Frames/s (total and per worker) for each view over the shards ``paths`` (training streams,
    augmentation on). ``sequence_len`` defaults to the first video's length."""
    from loci_fast.data import frame_pairs, iter_videos, object_crops, video_chunks

    first = next(iter_videos(paths))
    S = sequence_len or first["meta"]["num_frames"]
    size = (first["meta"]["height"], first["meta"]["width"])
    big = 10**6  # epoch long enough that the clock, not the epoch, stops the run
    runs = {
        "iter_videos": (lambda: iter_videos(paths), lambda v: v["meta"]["num_frames"], 0),
        "video_chunks": (lambda: video_chunks(paths, batch_size=max(1, batch_size // 4), sequence_len=S,
                                              num_workers=workers, epoch_batches=big),
                         lambda b: b["rgb"].shape[0] * b["rgb"].shape[1], workers),
        "object_crops": (lambda: object_crops(paths, batch_size=batch_size, size=size, num_workers=workers,
                                              epoch_batches=big), lambda b: b["rgb"].shape[0], workers),
        "frame_pairs": (lambda: frame_pairs(paths, batch_size=batch_size, num_workers=workers,
                                            epoch_batches=big), lambda b: 2 * b["source_rgb"].shape[0], workers),
    }
    results = []
    for view, (make, frames_of, nw) in runs.items():
        if view == "iter_videos":
            n, frames, secs = 0, 0, 0.0
            while secs < seconds:  # loop over the shards again until the time is up
                dn, df, ds = _timed(make(), frames_of, seconds - secs)
                n, frames, secs = n + dn, frames + df, secs + ds
        else:
            n, frames, secs = _timed(iter(make()), frames_of, seconds)
        results.append({"view": view, "workers": max(nw, 1), "batches": n, "frames": frames, "seconds": secs,
                        "frames_per_s": frames / secs, "frames_per_s_per_worker": frames / secs / max(nw, 1),
                        "size": f"{size[0]}x{size[1]}"})
    return results


def _decode_time(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def encoding_table(paths: Any, videos: int = 4) -> list[dict[str, Any]]:
    """Bytes per frame and decode ms per frame of each field's encoding and its alternatives."""
    from PIL import Image

    from loci_fast.data import codec
    from loci_fast.data.reader import iter_videos

    rows: dict[str, dict[str, float]] = {}

    def add(name: str, data: bytes, decode, frames: int) -> None:
        r = rows.setdefault(name, {"bytes": 0.0, "seconds": 0.0, "frames": 0})
        r["bytes"] += len(data)
        r["seconds"] += _decode_time(decode)
        r["frames"] += frames

    for i, v in enumerate(iter_videos(paths)):
        if i >= videos:
            break
        t = v["meta"]["num_frames"]
        rgb, seg, depth = v["rgb"], v["segmentation"], v["depth"]
        b = codec.encode_png(rgb)
        add("rgb: stacked PNG (chosen)", b, lambda b=b, t=t: codec.decode_image(b, t, channels=3), t)
        b = codec.encode_jpeg(rgb)
        add("rgb: stacked JPEG q95 4:4:4 (--rgb-codec jpg)", b, lambda b=b, t=t: codec.decode_image(b, t, channels=3), t)
        frames_png = [io.BytesIO() for _ in range(t)]
        for f, buf in zip(rgb, frames_png):
            Image.fromarray(f).save(buf, format="PNG", compress_level=codec.PNG_LEVEL)
        blob = b"".join(x.getvalue() for x in frames_png)
        add("rgb: one PNG per frame", blob,
            lambda fp=frames_png: [np.asarray(Image.open(io.BytesIO(x.getvalue()))) for x in fp], t)
        b = zlib.compress(rgb.tobytes(), 6)
        add("rgb: raw uint8 + zlib", b, lambda b=b: np.frombuffer(zlib.decompress(b), np.uint8), t)
        if depth is not None:
            dm = float(v["meta"]["depth_max"])
            b = codec.encode_depth(depth, dm)
            add("depth: 16-bit PNG (chosen)", b, lambda b=b, t=t, dm=dm: codec.decode_depth(b, t, dm), t)
            b = zlib.compress(depth.astype(np.float32).tobytes(), 6)
            add("depth: float32 + zlib", b, lambda b=b: np.frombuffer(zlib.decompress(b), np.float32), t)
            b = zlib.compress(depth.astype(np.float16).tobytes(), 6)
            add("depth: float16 + zlib", b, lambda b=b: np.frombuffer(zlib.decompress(b), np.float16), t)
        b = codec.encode_segmentation(seg)
        add("segmentation: 8-bit PNG (chosen)", b, lambda b=b, t=t: codec.decode_image(b, t), t)
        b = zlib.compress(seg.astype(np.uint8).tobytes(), 6)
        add("segmentation: raw uint8 + zlib", b, lambda b=b: np.frombuffer(zlib.decompress(b), np.uint8), t)
    return [{"encoding": k, "bytes_per_frame": r["bytes"] / r["frames"],
             "decode_ms_per_frame": 1e3 * r["seconds"] / r["frames"]} for k, r in rows.items()]
