"""A small CATER-like folder in exactly the layout of the authors' release, for tests and demos.

Procedural frames (PIL), not a physics render: a textured floor, cones as triangles, cubes as
squares and a small golden snitch, drawn where CATER's camera projects their straight-line paths;
a cone covers the snitch for the middle of every video (``_contain`` then ``_pick_place`` in the
metadata), and the snitch is not drawn while covered. Frames are JPEG files as in the release, so
``convert-cater`` sees the same names, sizes and kind of bytes. Deterministic for a seed.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .camera import SNITCH_Z, project
from .labels import snitch_contained

RESOLUTIONS = {"320x240": (240, 320), "80x60": (60, 80)}
GOLD = (212, 175, 55)


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _floor(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    base = np.linspace(90, 170, h)[:, None, None] + rng.normal(0, 6, (h, w, 1))
    return Image.fromarray(np.clip(base + np.array([0, 4, 10]), 0, 255).astype(np.uint8))


def scene(rng: np.random.Generator, frames: int, objects: int = 4) -> tuple[dict, dict[str, np.ndarray]]:
    """CATER metadata of one video (snitch, cones, cubes; Cone_0 covers the snitch mid-video) and the
    xyz path of every instance, (frames, 3) each."""
    names = ["Spl_0", "Cone_0"] + [f"Cone_{i}" if i % 2 else f"Cube_{i}" for i in range(1, objects - 1)]
    paths = {}
    for n in names:
        a, b = rng.uniform(-2.8, 2.8, 2), rng.uniform(-2.8, 2.8, 2)
        xy = a + (b - a) * np.linspace(0, 1, frames)[:, None]
        paths[n] = np.concatenate([xy, np.full((frames, 1), SNITCH_Z if n == "Spl_0" else 0.5)], 1)
    objs = [{"shape": "spl" if n.startswith("Spl") else n.split("_")[0].lower(), "instance": n,
             "material": "metal" if n.startswith("Spl") else str(rng.choice(["metal", "rubber"])),
             "size": "small" if n.startswith("Spl") else str(rng.choice(["small", "medium", "large"])),
             "color": "gold" if n.startswith("Spl") else str(rng.choice(["red", "blue", "green", "cyan"])),
             "locations": {str(t): paths[n][t].tolist() for t in range(frames)}} for n in names]
    cover, lift = 1 + frames // 4, max(2 + frames // 4, frames - 1 - frames // 4)
    movements = {n: [["_slide", None, 0, frames - 1]] for n in names}
    movements["Cone_0"] = [["_contain", "Spl_0", 0, cover], ["_pick_place", None, lift, frames - 1]]
    return {"objects": objs, "movements": movements}, paths


def _draw(floor: Image.Image, paths: dict[str, np.ndarray], t: int, hide_snitch: bool, colours: dict) -> Image.Image:
    img = floor.copy()
    d = ImageDraw.Draw(img)
    h, w = img.height, img.width
    s = max(1.0, w / 40)
    for name, xyz in paths.items():
        if name.startswith("Spl") and hide_snitch:
            continue
        r, c = project(xyz[t:t + 1])[0]
        py, px = (r + 1) / 2 * (h - 1), (c + 1) / 2 * (w - 1)
        if name.startswith("Spl"):
            d.ellipse([px - s / 2, py - s / 2, px + s / 2, py + s / 2], fill=GOLD)
        elif name.startswith("Cone"):
            d.polygon([(px, py - 2 * s), (px - s, py + s), (px + s, py + s)], fill=colours[name])
        else:
            d.rectangle([px - s, py - s, px + s, py + s], fill=colours[name])
    return img


def make_release(root: str | Path, videos: int = 4, frames: int = 8, *, seed: int = 0, objects: int = 4) -> Path:
    """Write ``videos`` videos of ``frames`` frames (at most 301) into a new folder ``root``:
    ``background.jpg``, ``labels/<video>.json``, ``<video>/train/{320x240,80x60}/frame%04d.jpg``."""
    if not 1 <= frames <= 301 or videos < 1 or objects < 2:
        raise ValueError("need 1..301 frames, at least 1 video and at least 2 objects (snitch and a cone)")
    root = Path(root)
    root.mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(seed)
    floor = _floor(rng, 240, 320)
    (root / "background.jpg").write_bytes(_jpeg(floor, 95))
    for v in range(videos):
        name = f"{v:06d}"
        meta, paths = scene(rng, frames, objects)
        hidden = snitch_contained(meta)
        colours = {n: tuple(int(x) for x in rng.integers(40, 255, 3)) for n in paths}
        (root / "labels" / f"{name}.json").write_text(json.dumps(meta))
        for res, (h, w) in RESOLUTIONS.items():
            folder = root / name / "train" / res
            folder.mkdir(parents=True)
            small = floor.resize((w, h), Image.BILINEAR)
            for t in range(frames):
                (folder / f"frame{t:04d}.jpg").write_bytes(_jpeg(_draw(small, paths, t, bool(hidden[t]), colours)))
    return root
