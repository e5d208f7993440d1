"""Tiny weights and shards for the viz tests: a Loci-s video with a known red square, a CATER
release folder (with a red square painted into one frame) converted to shards."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
LOCI_CONFIG = REPO / "configs" / "tiny" / "loci-s.json"
CATER_CONFIG = REPO / "configs" / "tiny" / "cater-stage1.json"
RED = (slice(8, 24), slice(40, 56))  # rows, cols of the red square in the 64x64 Loci-s video


def loci_shard(folder: Path, frames: int = 3) -> Path:
    """One 64x64 video with depth and a pure red square at ``RED`` in every frame."""
    from loci_fast.data.writer import encode_video, write_shard

    rng = np.random.default_rng(0)
    rgb = rng.integers(60, 200, (frames, 64, 64, 3), dtype=np.uint8)
    rgb[:, RED[0], RED[1]] = (255, 0, 0)
    seg = np.zeros((frames, 64, 64), np.uint8)
    seg[:, RED[0], RED[1]] = 1
    video = {"key": "red_0", "meta": {"dataset": "unit", "split": "val", "num_instances": 1, "static_camera": True,
                                      "source": "test", "depth_unit": "m", "depth_max": 10.0},
             "rgb": rgb, "depth": rng.uniform(1, 9, (frames, 64, 64)).astype(np.float32), "segmentation": seg}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "val-000000.tar"
    write_shard(path, [encode_video(video)])
    return path


def loci_weights(path: Path, *, seed: int = 0, stage: str = "loci", config: Path = LOCI_CONFIG) -> Path:
    """A randomly initialised tiny Loci-s model as an ``export`` .safetensors file (config inside)."""
    from safetensors.torch import save_file

    from loci_fast.config import load_config
    from loci_fast.model.loci_model import LociModel

    torch.manual_seed(seed)
    model = LociModel.from_config(load_config(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": "loci-fast", "stage": stage, "config": config.read_text()})
    return path


def cater_config(path: Path) -> Path:
    """The tiny CATER stage-1 config at the release's sizes (240x320 input, level 1 on 60x80 frames)."""
    raw = json.loads(CATER_CONFIG.read_text())
    raw["model"]["input_size"], raw["model"]["latent_size"] = [240, 320], [15, 20]
    path.write_text(json.dumps(raw))
    return path


def cater_shards(tmp: Path, videos: int = 1, frames: int = 3) -> Path:
    """A release-layout folder (frame 1 of every video at 80x60 painted with a red square at rows
    20-40, cols 30-50), converted with convert-cater; returns the shard folder."""
    from PIL import Image

    from loci_fast.data.cater.synth import make_release
    from loci_fast.data.convert_cater import convert_cater

    root = make_release(tmp / "CATER", videos=videos, frames=frames, seed=0)
    for video in sorted(p for p in root.iterdir() if p.name.startswith("0")):
        frame = video / "train" / "80x60" / "frame0001.jpg"
        img = np.asarray(Image.open(frame).convert("RGB")).copy()
        img[20:40, 30:50] = (255, 0, 0)
        Image.fromarray(img).save(frame, quality=95)
    out = tmp / "shards"
    convert_cater(root, out, shard_videos=1, progress=False, log=lambda s: None)
    return out


def v1_weights(path: Path, config: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny original-Loci model as import-upstream-style weights (no metadata)."""
    from safetensors.torch import save_file

    from loci_fast.config import load_config
    from loci_fast.loci_v1 import LociV1

    cfg = load_config(config)
    torch.manual_seed(seed)
    model = LociV1.from_config(cfg["model"], teacher_forcing=int(cfg["teacher_forcing"]))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


class Links(HTMLParser):
    """Every href and src of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def page_links(index: Path) -> list[str]:
    parser = Links()
    parser.feed(index.read_text())
    return parser.links


def is_red(pixel) -> bool:
    r, g, b = (int(v) for v in pixel[:3])
    return r > 200 and g < 60 and b < 60
