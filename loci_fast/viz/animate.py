"""Animations of a video's per-step pictures: a looping GIF (Pillow) and an MP4 (imageio's ffmpeg plugin)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def write_gif(path: str | Path, frames: list[np.ndarray], fps: float = 4.0) -> Path:
    """``frames`` (each (H, W, 3) uint8, one size) as a GIF looping forever at ``fps``."""
    import imageio.v3 as iio

    path = Path(path)
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)
    return path


def ffmpeg_available() -> bool:
    """True when imageio's ffmpeg plugin (the imageio-ffmpeg package and its binary) can be used."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    return True


def write_mp4(path: str | Path, frames: list[np.ndarray], fps: float = 4.0) -> Path | None:
    """``frames`` as an H.264 MP4 (yuv420p, sides padded to even sizes); None, with a message on
    stderr, when the ffmpeg plugin is missing."""
    if not ffmpeg_available():
        print("loci-fast viz: no MP4 written: imageio's ffmpeg plugin is missing "
              "(pip install imageio-ffmpeg; it is in requirements.txt)", file=sys.stderr)
        return None
    import imageio.v2 as iio2

    path = Path(path)
    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    with iio2.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                         macro_block_size=1, ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(np.pad(frame, pad, mode="edge"))
    return path
