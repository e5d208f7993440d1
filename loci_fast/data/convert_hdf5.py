"""``loci-fast data convert-hdf5``: upstream Loci-Segmented HDF5 files -> loci-video shards.

Upstream layout (reference §19.1): JPEG ``rgb_images``, 8-bit PNG ``depth_images`` (depth*255,
absent or length <= 1 when the file has no depth), ``instance_masks`` (N_inst, 1, H, W) uint8 with
``image_instance_indices`` [first, count] per image, and ``sequence_indices`` [first image, count]
per video. One sample per sequence. RGB is decoded once and stored losslessly (PNG), so the frames
equal a plain JPEG decode of the source; depth keeps its 8-bit values exactly (k/255 is level 257k
of the 16-bit PNG; depth_unit "normalized", depth_max 1). Instance masks of a frame are padded to
the video's largest count M and kept as ``instance_masks`` (T, M, H, W); the segmentation is
id = m + 1 of the strongest mask where it reaches 0.8 (upstream's GT threshold), else 0.

The layout is checked before the first shard is written: a non-HDF5 file, or a dataset shorter than
the indices that point into it, raises ``SourceError`` naming the file and the dataset; a file
without instance masks converts with an explicit warning (every video then has 0 instances, which
the object stages cannot train on). The parameters are kept in ``<name>.params.json``.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .errors import SourceError
from .params import claim_folder
from .writer import encode_video, remove_partial, shard_path, write_shard

MASK_THRESHOLD = 204  # 0.8 * 255


def _decode_rgb(item: np.ndarray, where: str) -> np.ndarray:
    if item.dtype == np.uint8 and item.ndim == 1:  # compressed: JPEG bytes
        with Image.open(io.BytesIO(item.tobytes())) as im:
            return np.asarray(im.convert("RGB"))
    arr = np.asarray(item, np.float32)  # legacy float frames, CHW or HWC in [0, 1]
    if arr.ndim == 3 and arr.shape[0] == 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{where}: rgb_images entry has shape {arr.shape}, expected JPEG bytes or 3xHxW floats")
    return np.rint(np.clip(arr, 0, 1) * 255).astype(np.uint8)


def _decode_depth(item: np.ndarray) -> np.ndarray:
    if item.dtype == np.uint8 and item.ndim == 1:
        with Image.open(io.BytesIO(item.tobytes())) as im:
            arr = np.asarray(im)
        if arr.ndim == 3:
            arr = arr[..., 0]
        scale = 65535.0 if arr.dtype == np.uint16 else 255.0
        return arr.astype(np.float32) / np.float32(scale)
    return np.asarray(item, np.float32).reshape(item.shape[-2:])


def read_sequence(f: Any, seq: int, has_depth: bool) -> dict[str, Any]:
    """Read sequence ``seq`` of an open upstream h5py file into arrays."""
    first, count = (int(x) for x in f["sequence_indices"][seq])
    where = f"{f.filename}, sequence {seq}"
    rgb = np.stack([_decode_rgb(f["rgb_images"][i], where) for i in range(first, first + count)])
    t, h, w = rgb.shape[:3]
    depth = np.stack([_decode_depth(f["depth_images"][i]) for i in range(first, first + count)]) if has_depth else None
    masks = None
    if has_instance_masks(f):
        idx = f["image_instance_indices"][first:first + count]
        m = int(idx[:, 1].max()) if len(idx) else 0
        if m:
            masks = np.zeros((t, m, h, w), np.uint8)
            for ti, (start, n) in enumerate(idx):
                if n:
                    masks[ti, :n] = f["instance_masks"][int(start):int(start) + int(n), 0]
    if masks is not None:
        strongest = masks.max(axis=1)
        seg = np.where(strongest >= MASK_THRESHOLD, masks.argmax(axis=1) + 1, 0)
        seg = seg.astype(np.uint8 if masks.shape[1] < 256 else np.uint16)
    else:
        seg = np.zeros((t, h, w), np.uint8)
    return {"rgb": rgb, "depth": depth, "segmentation": seg, "instance_masks": masks}


def file_has_depth(f: Any) -> bool:
    """Upstream's rule: depth exists when ``depth_images`` holds more than one entry."""
    return "depth_images" in f and f["depth_images"].shape[0] > 1


def has_instance_masks(f: Any) -> bool:
    return "instance_masks" in f and "image_instance_indices" in f and len(f["instance_masks"]) > 0


def check_layout(f: Any, path: Path) -> list[str]:
    """Raise ``SourceError`` where the datasets do not fit together; return warnings to show."""
    fix = "The file is incomplete or not in upstream's layout (reference §19.1); write it again"
    missing = [k for k in ("rgb_images", "sequence_indices") if k not in f]
    if missing:
        raise SourceError(str(path), f"not in the upstream layout: no {' and no '.join(missing)} dataset",
                          "Pass a file written like upstream's create-dataset-example.py")
    n_images = int(f["rgb_images"].shape[0])
    seq = np.asarray(f["sequence_indices"][()], np.int64).reshape(-1, 2)
    if len(seq) and (seq.min() < 0 or int((seq[:, 0] + seq[:, 1]).max()) > n_images):
        last = int((seq[:, 0] + seq[:, 1]).max())
        raise SourceError(str(path), f"holds {n_images} entries, but sequence_indices reach image {last}", fix,
                          dataset="rgb_images")
    if "depth_images" in f:
        n_depth = int(f["depth_images"].shape[0])
        if n_depth > 1 and n_depth != n_images:  # 0 or 1 entries: a file without depth (upstream's rule)
            raise SourceError(str(path), f"holds {n_depth} entries but rgb_images holds {n_images}: depth is "
                              "missing for some frames", fix, dataset="depth_images")
    if not has_instance_masks(f):
        absent = [k for k in ("instance_masks", "image_instance_indices") if k not in f]
        what = f"no {' and no '.join(absent)} dataset" if absent else "an empty instance_masks dataset"
        return [f"{path}: {what}: every video gets an empty segmentation, 0 instances. The object stages "
                "(mask, depth, rgb, stage1, stage2, loci) need instance masks; convert a file that has them"]
    n_masks = int(f["instance_masks"].shape[0])
    idx = np.asarray(f["image_instance_indices"][()], np.int64).reshape(-1, 2)
    if len(idx) < n_images:
        raise SourceError(str(path), f"holds {len(idx)} entries but rgb_images holds {n_images}", fix,
                          dataset="image_instance_indices")
    used = idx[:n_images]
    ends = used[:, 0] + used[:, 1]
    if len(used) and (used.min() < 0 or int(ends.max()) > n_masks):
        raise SourceError(str(path), f"holds {n_masks} masks, but image_instance_indices point up to mask "
                          f"{int(ends.max())}", fix, dataset="instance_masks")
    return []


def _open_hdf5(path: Path) -> Any:
    import h5py

    if not path.is_file():
        raise SourceError(str(path), "no such HDF5 file" if not path.exists() else "not a file",
                          "Pass the path of an upstream Loci-Segmented .hdf5 file")
    try:
        return h5py.File(path, "r")
    except OSError as err:  # h5py's message for a non-HDF5 file: "file signature not found"
        raise SourceError(str(path), f"not a readable HDF5 file ({err})", "Pass an upstream Loci-Segmented "
                          ".hdf5 file; a partial download or a file of another format cannot be converted") from None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def convert_hdf5(path: str | Path, out: str | Path, *, name: str | None = None, dataset: str | None = None,
                 shard_videos: int = 64, static_camera: bool = True, progress: bool = True,
                 log: Callable[[str], None] = print, warn: Callable[[str], None] = _warn) -> list[Path]:
    """Convert one upstream HDF5 file into ``out/<name>-%06d.tar``; finished shards are kept on rerun.

    Raises ``SourceError`` for a file that is not HDF5 or whose datasets do not fit together, and
    ``ParamsMismatch`` when ``out`` holds shards of that name converted with other parameters.
    ``warn`` receives the warnings (default: printed to stderr), e.g. a file without instance masks.
    """
    from tqdm import tqdm

    path, out = Path(path), Path(out)
    if shard_videos < 1:
        raise ValueError(f"--shard-videos must be at least 1, got {shard_videos}")
    with _open_hdf5(path) as f:
        for message in check_layout(f, path):
            warn(message)
        attrs = dict(f["metadata"].attrs) if "metadata" in f else {}
        name = name or str(attrs.get("type", "train"))
        dataset = dataset or str(attrs.get("dataset_name", path.stem))
        has_depth = file_has_depth(f)
        n_seq = int(f["sequence_indices"].shape[0])
        out.mkdir(parents=True, exist_ok=True)
        remove_partial(out, name)
        claim_folder(out, name, {"command": "convert-hdf5", "input": path.name, "input_bytes": path.stat().st_size,
                                 "name": name, "dataset": dataset, "shard_videos": shard_videos,
                                 "static_camera": static_camera})
        paths = [shard_path(out, name, s) for s in range(-(-n_seq // shard_videos))]
        todo = [s for s, p in enumerate(paths) if not p.exists()]
        if len(todo) < len(paths):
            log(f"{len(paths) - len(todo)} of {len(paths)} shards already in {out}; converting the rest")
        bar = tqdm(total=sum(min(n_seq, (s + 1) * shard_videos) - s * shard_videos for s in todo),
                   unit="video", desc="convert", disable=not progress)
        instances = 0
        for s in todo:
            samples = []
            for seq in range(s * shard_videos, min(n_seq, (s + 1) * shard_videos)):
                arrays = read_sequence(f, seq, has_depth)
                seg = arrays["segmentation"]
                meta = {"dataset": dataset, "split": name, "static_camera": static_camera,
                        "num_instances": int(len(np.unique(seg[seg > 0]))),
                        "source": f"{path.name} sequence {seq}", "depth_unit": "normalized", "depth_max": 1.0}
                instances += meta["num_instances"]
                samples.append(encode_video({"key": f"{name}_{seq:06d}", "meta": meta, **arrays}))
                bar.update(1)
            write_shard(paths[s], samples)
        bar.close()
        if todo and not instances and has_instance_masks(f):
            warn(f"{path}: no mask in instance_masks reaches the {MASK_THRESHOLD}/255 threshold of a visible "
                 f"object: the converted videos have 0 instances. Check the masks (uint8, 255 = visible)")
    return paths
