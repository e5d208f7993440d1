"""``loci-fast data convert-cater``: the authors' preprocessed CATER release -> loci-video shards.

Release layout (reference loci.md §6.1, upstream ``data/datasets/CATER/dataset.py``)::

    DIR/background.jpg                      static empty scene, stored once beside the shards
    DIR/labels/<video>.json                 CATER scene metadata of each video
    DIR/<video>/train/320x240/frame*.jpg    one folder per video (names starting with "0"); frame
    DIR/<video>/train/80x60/frame*.jpg      files sorted by name (.jpg or .png), at most 301

One sample per video and split, in the "frames" layout of loci-video v1 (``schema`` docstring):
``rgb.frames`` / ``rgb_80x60.frames`` hold each resolution's files with their bytes unchanged,
``labels.json`` the metadata file unchanged, ``cater.json`` the derived tracks (snitch xyz per
frame, final grid label, 301 containment flags: ``cater.labels``); no segmentation. Shards are
``<split>-%06d.tar`` for split train, val and test; ``background.jpg`` (unchanged) and
``cater-splits.json`` (the membership of every split, the overlaps) are written beside them.

Splits: ``sorted`` (default) sorts the video names and cuts at integer bounds 56 % / 14 % / 30 %;
``upstream`` takes the folders in the order the file system lists them (``os.walk``, as upstream)
and upstream's bounds int(N*0.7*0.8), int(N*0.7*0.2), int(N*0.7), int(N*0.3) in floating point,
so that for N = 5500 video 3849 is in both val and test and the last video in none (stated in the
manifest and the log). Upstream's own split is frozen in its cached pickles, which are not read
(unpickling runs code); the ``upstream`` order equals it only on a file system that lists the folders
as the authors' did.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .cater import labels as cater_labels
from .errors import SourceError
from .params import claim_folder
from .schema import FORMAT, VERSION, frames_field, pack_frames, validate_fields, validate_meta
from .writer import remove_partial, shard_path, write_shard

SPLITS = ("train", "val", "test")
SPLIT_MODES = ("sorted", "upstream")
RESOLUTIONS = ("320x240", "80x60")
MAX_FRAMES = cater_labels.NUM_FRAMES
MANIFEST = "cater-splits.json"
BACKGROUND = "background.jpg"
RELEASE = "the authors' preprocessed CATER release (Loci README)"


def parse_resolution(text: str) -> tuple[int, int]:
    """``"320x240"`` (W x H, the release's folder names) -> (height, width)."""
    w, sep, h = text.partition("x")
    if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise ValueError(f"resolution {text!r} is not WxH like 320x240")
    return int(h), int(w)


def list_videos(root: Path, mode: str) -> list[str]:
    """Video folders (names starting with "0"): sorted, or in file-system order for ``upstream``."""
    names = [e.name for e in os.scandir(root) if e.name.startswith("0") and e.is_dir()]
    return sorted(names) if mode == "sorted" else names


def split_bounds(n: int, mode: str) -> dict[str, tuple[int, int]]:
    """[start, end) of each split over n videos."""
    if mode == "sorted":
        a, b = n * 56 // 100, n * 70 // 100
        return {"train": (0, a), "val": (a, b), "test": (b, n)}
    train, val = int(n * 0.7 * 0.8), int(n * 0.7 * 0.2)  # upstream's float products, truncated
    test_start, test = int(n * 0.7), int(n * 0.3)
    return {"train": (0, train), "val": (train, train + val), "test": (test_start, test_start + test)}


def split_membership(videos: list[str], mode: str) -> dict[str, Any]:
    """{"splits": {split: [video, ...]}, "overlaps": {video: [splits]}, "unassigned": [video, ...]}."""
    if mode not in SPLIT_MODES:
        raise ValueError(f"--split must be one of {SPLIT_MODES}, got {mode!r}")
    bounds = split_bounds(len(videos), mode)
    splits = {s: videos[a:b] for s, (a, b) in bounds.items()}
    where: dict[str, list[str]] = {}
    for s, names in splits.items():
        for v in names:
            where.setdefault(v, []).append(s)
    return {"splits": splits, "overlaps": {v: s for v, s in where.items() if len(s) > 1},
            "unassigned": [v for v in videos if v not in where]}


def _frame_error(path: Path, problem: str) -> SourceError:
    return SourceError(str(path), problem, f"Re-extract this frame (or the video's folder) from {RELEASE}")


def check_frame(path: Path, data: bytes, size: tuple[int, int]) -> None:
    """Cheap checks of one frame file without decoding its pixels: format, completeness, size."""
    from PIL import Image
    import io

    if data[:2] == b"\xff\xd8":
        if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
            raise _frame_error(path, "truncated JPEG (no end-of-image marker)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if data[-8:-4] != b"IEND":
            raise _frame_error(path, "truncated PNG (no IEND chunk at the end)")
    else:
        raise _frame_error(path, "neither a JPEG nor a PNG file" if data else "an empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            got = (im.height, im.width)
    except OSError as err:
        raise _frame_error(path, f"unreadable image header ({err})") from None
    if got != size:
        raise _frame_error(path, f"is {got[1]}x{got[0]}, but its folder is {size[1]}x{size[0]}")


def read_frames(folder: Path) -> list[bytes]:
    """The frame files of one resolution folder, sorted by name, bytes unchanged (checked)."""
    if not folder.is_dir():
        raise SourceError(str(folder), "missing", f"Each video folder of {RELEASE} holds train/<W>x<H>/ for every "
                          "resolution converted: re-extract this video, or leave the resolution out with --resolutions")
    names = sorted(n for n in os.listdir(folder) if n.startswith("frame") and n.endswith((".jpg", ".png")))
    if not names:
        raise SourceError(str(folder), "holds no frame*.jpg or frame*.png file", f"Re-extract this video from {RELEASE}")
    if len(names) > MAX_FRAMES:
        raise SourceError(str(folder), f"holds {len(names)} frames; CATER videos have at most {MAX_FRAMES}",
                          "Remove the extra files (upstream cannot load more than 301 frames)")
    size = parse_resolution(folder.name)
    out = []
    for n in names:
        data = (folder / n).read_bytes()
        check_frame(folder / n, data, size)
        out.append(data)
    return out


def read_labels(root: Path, video: str) -> tuple[bytes, dict[str, Any]]:
    path = root / "labels" / f"{video}.json"
    fix = f"Copy labels/{video}.json from {RELEASE} (CATER's scenes/*.json metadata of that video)"
    if not path.is_file():
        raise SourceError(str(path), "missing: every video needs its scene metadata", fix)
    raw = path.read_bytes()
    try:
        meta = json.loads(raw)
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        return raw, {"tracks": cater_labels.tracks(meta)}
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise SourceError(str(path), f"not usable CATER metadata ({err})", fix) from None


def check_background(root: Path) -> bytes:
    """``background.jpg`` of the release, decoded once to check it; returns its bytes."""
    from PIL import Image
    import io

    path = root / BACKGROUND
    fix = f"Copy background.jpg (the empty scene) from {RELEASE} into {root}"
    if not path.is_file():
        raise SourceError(str(path), "missing", fix)
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode not in ("RGB", "L"):
                raise OSError(f"mode {im.mode}")
    except (OSError, SyntaxError, ValueError) as err:
        raise SourceError(str(path), f"does not decode as an image ({err})", fix) from None
    return data


def encode_cater_video(root: Path, video: str, split: str, resolutions: list[tuple[int, int]],
                       background_sha256: str) -> dict[str, Any]:
    """Read, check and pack one video into a loci-video sample (no pixel is decoded or re-encoded)."""
    if "." in video or "/" in video:
        raise SourceError(str(root / video), "a video folder name with '.', which a webdataset key cannot hold",
                          "Rename the folder (and its labels/<video>.json) without dots")
    frames = [read_frames(root / video / "train" / f"{w}x{h}") for h, w in resolutions]
    counts = [len(f) for f in frames]
    if len(set(counts)) > 1:
        raise SourceError(str(root / video / "train"), "resolutions hold different numbers of frames ("
                          + ", ".join(f"{w}x{h}: {c}" for (h, w), c in zip(resolutions, counts)) + ")",
                          f"Re-extract this video from {RELEASE}")
    raw_labels, derived = read_labels(root, video)
    (h, w), t = resolutions[0], counts[0]
    extra = [frames_field(rh, rw) for rh, rw in resolutions[1:]]
    meta = {"format": FORMAT, "version": VERSION, "dataset": "CATER", "split": split, "num_frames": t,
            "height": h, "width": w, "has_depth": False, "num_instances": 0, "static_camera": True,
            "source": f"CATER release, video {video}", "depth_unit": "m", "depth_max": 0.0,
            "num_instance_masks": 0, "frame_instances": [[] for _ in range(t)], "rgb_layout": "frames",
            "resolutions": [[rh, rw] for rh, rw in resolutions], "has_segmentation": False,
            "extra_members": ["cater.json", "labels.json"], "video": video,
            "background": BACKGROUND, "background_sha256": background_sha256}
    sample = {"__key__": video, "meta.json": json.dumps(meta, sort_keys=True).encode(),
              "rgb.frames": pack_frames(frames[0]), "labels.json": raw_labels,
              "cater.json": json.dumps(derived["tracks"]).encode()}
    for name, f in zip(extra, frames[1:]):
        sample[name] = pack_frames(f)
    validate_meta(meta, shard="(being written)", key=video)
    validate_fields(set(sample) - {"__key__"}, meta, shard="(being written)", key=video)
    return sample


def _encode_job(job: tuple) -> tuple[str, int, dict[str, Any]]:
    root, video, split, index, resolutions, sha = job
    return split, index, encode_cater_video(Path(root), video, split, resolutions, sha)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def convert_cater(root: str | Path, out: str | Path, *, split: str = "sorted", shard_videos: int = 16,
                  resolutions: tuple[str, ...] = RESOLUTIONS, workers: int = 1, progress: bool = True,
                  log: Callable[[str], None] = print, warn: Callable[[str], None] = _warn) -> dict[str, list[Path]]:
    """Convert a CATER release folder into ``out/<split>-%06d.tar`` for train, val and test.

    Finished shards are kept on a rerun with the same parameters (``<split>.params.json``); a rerun
    with others raises ``ParamsMismatch``. Bad or missing frames, labels or background raise
    ``SourceError`` naming the file and the fix, before or while the shards are written (a shard
    is only ever complete or absent). Returns {split: shard paths}.
    """
    from tqdm import tqdm

    root, out = Path(root), Path(out)
    if shard_videos < 1 or workers < 1:
        raise ValueError("--shard-videos and --workers must be at least 1")
    if not root.is_dir():
        raise SourceError(str(root), "no such folder", f"Pass the folder of {RELEASE} (the one holding "
                          "background.jpg, labels/ and the video folders)")
    res = [parse_resolution(r) for r in resolutions]
    if not res or len(set(res)) != len(res):
        raise ValueError(f"--resolutions must name distinct sizes, got {list(resolutions)}")
    background = check_background(root)
    if not (root / "labels").is_dir():
        raise SourceError(str(root / "labels"), "missing", f"Copy the labels/ folder of {RELEASE} into {root}")
    videos = list_videos(root, split)
    if not videos:
        raise SourceError(str(root), "holds no video folder (names starting with '0')",
                          f"Pass the folder of {RELEASE}")
    member = split_membership(videos, split)
    if member["overlaps"] or member["unassigned"]:
        warn(f"--split upstream: {len(member['overlaps'])} video(s) in two splits "
             f"({', '.join(f'{v}: {s}' for v, s in list(member['overlaps'].items())[:3])}) and "
             f"{len(member['unassigned'])} in none ({', '.join(member['unassigned'][:3])}), as upstream's bounds "
             "give; the sorted default has neither")
    sha = hashlib.sha256(background).hexdigest()
    out.mkdir(parents=True, exist_ok=True)
    bg_out = out / BACKGROUND
    if bg_out.exists() and bg_out.read_bytes() != background:
        raise SourceError(str(bg_out), f"differs from {root / BACKGROUND}: {out} holds another dataset's shards",
                          "Write to another --out folder, or delete it to start over")
    paths: dict[str, list[Path]] = {}
    jobs = []
    for s in SPLITS:
        names = member["splits"][s]
        for stale in remove_partial(out, s):
            log(f"removed unfinished {stale.name} from an interrupted run")
        claim_folder(out, s, {"command": "convert-cater", "input": root.name, "split": split,
                              "shard_videos": shard_videos, "resolutions": list(resolutions),
                              "videos": len(names), "videos_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
                              "background_sha256": sha})
        paths[s] = [shard_path(out, s, i) for i in range(-(-len(names) // shard_videos))]
        done = [p for p in paths[s] if p.exists()]
        if done:
            log(f"{s}: {len(done)} of {len(paths[s])} shards already in {out}; converting the rest")
        jobs += [(str(root), v, s, i, res, sha) for i, v in enumerate(names)
                 if not paths[s][i // shard_videos].exists()]
    if not bg_out.exists():
        tmp = bg_out.with_name(f"{BACKGROUND}.tmp{os.getpid()}")
        tmp.write_bytes(background)
        os.replace(tmp, bg_out)
    manifest = {"dataset": "CATER", "source": root.name, "split_mode": split, "background": BACKGROUND,
                "background_sha256": sha, "resolutions": list(resolutions), **member}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

    pending: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    bar = tqdm(total=len(jobs), unit="video", desc="convert-cater", disable=not progress)
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.imap_unordered(_encode_job, jobs, chunksize=1) if pool else map(_encode_job, jobs)
        for s, index, sample in results:
            shard = index // shard_videos
            got = pending.setdefault((s, shard), {})
            got[index] = sample
            bar.update(1)
            expected = min(len(member["splits"][s]), (shard + 1) * shard_videos) - shard * shard_videos
            if len(got) == expected:
                write_shard(paths[s][shard], [got[i] for i in sorted(got)])
                del pending[(s, shard)]
    finally:
        bar.close()
        if pool:
            pool.terminate()
            pool.join()
    return paths
