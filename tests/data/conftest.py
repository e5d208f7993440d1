"""Real shards for the data tests: PyBullet videos from `synth` and an upstream-layout HDF5 file."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loci_fast.data.synth.run import SynthConfig, run_synth

SYNTH = dict(frames=8, size=32, min_objects=2, max_objects=4, seed=3)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """8 PyBullet videos (8 frames, 32x32) in 4 shards of 2."""
    out = tmp_path_factory.mktemp("synth")
    run_synth(out, 8, SynthConfig(**SYNTH), shard_videos=2, workers=1, progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def synth_shards(synth_dir) -> list[str]:
    return sorted(str(p) for p in synth_dir.glob("*.tar"))


def _png(arr: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), np.uint8)


def _jpeg(arr: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return np.frombuffer(buf.getvalue(), np.uint8)


def make_upstream_hdf5(path: Path, *, with_depth: bool = True, seed: int = 0, size: int = 32,
                       lengths: tuple[int, ...] = (5, 3)) -> dict:
    """Write a small file in the upstream layout (§19.1) and return the source arrays per sequence.

    Soft/amodal masks: a moving square per object, 255 where visible, 128 where hidden behind a
    lower-numbered object; frames have 1..3 instances so the per-frame counts vary."""
    import h5py

    rng = np.random.default_rng(seed)
    vlen = h5py.vlen_dtype(np.dtype("uint8"))
    truth = []
    rgb_items, depth_items, masks_all, img_inst, inst_img, bboxes, seq_idx = [], [], [], [], [], [], []
    for L in lengths:
        first = len(rgb_items)
        seq_idx.append([first, L])
        seq = {"rgb": [], "depth": [], "masks": []}
        for t in range(L):
            # 16x16 blocks of one colour (the 4:2:0 JPEG macroblock), so the decode error stays small.
            img = np.kron(rng.integers(40, 216, (size // 16, size // 16, 3)), np.ones((16, 16, 1))).astype(np.uint8)
            d8 = rng.integers(0, 256, (size, size), dtype=np.uint8)
            n = 1 + (t % 3)
            masks = np.zeros((n, size, size), np.uint8)
            occupied = np.zeros((size, size), bool)
            for m in range(n):
                y, x = 2 + 3 * m + t % 2, 3 + 4 * m
                box = np.zeros((size, size), bool)
                box[y:y + 8, x:x + 8] = True
                masks[m][box & ~occupied] = 255
                masks[m][box & occupied] = 128
                occupied |= box
            img_inst.append([len(masks_all), n])
            for m in range(n):
                masks_all.append(masks[m][None])
                inst_img.append([len(rgb_items)])
                ys, xs = np.nonzero(masks[m] > 191)
                bboxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
            rgb_items.append(_jpeg(img))
            depth_items.append(_png(d8))
            seq["rgb"].append(img)
            seq["depth"].append(d8)
            seq["masks"].append(masks)
        truth.append(seq)
    with h5py.File(path, "w") as f:
        f.create_dataset("rgb_images", (len(rgb_items),), dtype=vlen)[:] = rgb_items
        if with_depth:
            f.create_dataset("depth_images", (len(depth_items),), dtype=vlen)[:] = depth_items
        else:
            f.create_dataset("depth_images", (0,), maxshape=(None,), dtype=vlen)
        f.create_dataset("foreground_mask", data=np.stack([m.max(0)[None] for s in truth for m in s["masks"]]),
                         compression="gzip")
        f.create_dataset("instance_masks", data=np.stack(masks_all), compression="gzip", chunks=(1, 1, size, size))
        f.create_dataset("sequence_indices", data=np.array(seq_idx, np.int64))
        f.create_dataset("image_instance_indices", data=np.array(img_inst, np.int64))
        f.create_dataset("instance_masks_images", data=np.array(inst_img, np.int64))
        f.create_dataset("instance_mask_bboxes", data=np.array(bboxes, np.uint8))
        g = f.create_group("metadata")
        g.attrs["dataset_name"] = "toy"
        g.attrs["type"] = "test"
    return {"sequences": truth, "rgb_jpeg": rgb_items}


@pytest.fixture(scope="session")
def upstream_hdf5(tmp_path_factory):
    path = tmp_path_factory.mktemp("hdf5") / "toy-test-32x32-v1.hdf5"
    return path, make_upstream_hdf5(path)
