"""``loci-fast data synth``: simulate, render and shard N videos, in parallel and resumably.

Video i is generated from the seed sequence (seed, i) alone, so the output does not depend on the
number of workers. Shard s holds videos [s*shard_videos, (s+1)*shard_videos); a shard whose final
file exists is complete (written under a temporary name, then renamed) and is not generated again.
The run's parameters are kept in ``<split>.params.json`` beside the shards; a rerun into the same
folder with other parameters is refused (see ``loci_fast.data.params``).
"""
from __future__ import annotations

import multiprocessing as mp
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..params import claim_folder
from ..writer import encode_video, remove_partial, shard_path, write_shard

SUBSTEPS = 20     # physics steps per frame at 240 Hz -> 12 frames per second, as MOVi
PHYSICS_HZ = 240


@dataclass(frozen=True)
class SynthConfig:
    frames: int = 24
    size: int = 128
    min_objects: int = 3
    max_objects: int = 10
    min_object_size: float = 0.4   # largest extent of an object in metres, drawn uniformly
    max_object_size: float = 1.0
    camera: str = "static"     # "static" (MOVi-A..D-like) or "moving" (MOVi-E-like)
    seed: int = 0
    split: str = "train"
    rgb_codec: str = "png"

    def check(self) -> None:
        if self.frames < 1 or self.size < 8:
            raise ValueError(f"--frames must be >= 1 and --size >= 8 (got {self.frames}, {self.size})")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"--objects MIN MAX needs 1 <= MIN <= MAX (got {self.min_objects} {self.max_objects})")
        if not 0.05 <= self.min_object_size <= self.max_object_size <= 3.0:
            raise ValueError("--object-size MIN MAX needs 0.05 <= MIN <= MAX <= 3.0 metres "
                             f"(got {self.min_object_size} {self.max_object_size})")
        if self.camera not in ("static", "moving"):
            raise ValueError(f"--camera must be static or moving, not {self.camera!r}")
        if "." in self.split or "/" in self.split:
            raise ValueError(f"--split {self.split!r} must not contain '.' or '/'")


_client: Any = None


def _connect():
    global _client
    if _client is None:
        import os

        # PyBullet's C library prints banners ("argv[0]=", build time) on fd 1: keep them off the
        # user's terminal and progress bar.
        saved = os.dup(1), os.dup(2)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                os.dup2(null.fileno(), 2)
                import pybullet
                import pybullet_utils.bullet_client as bc

                _client = bc.BulletClient(connection_mode=pybullet.DIRECT)
        finally:
            for fd, dup in zip((1, 2), saved):
                os.dup2(dup, fd)
                os.close(dup)
    return _client


def simulate_video(cfg: SynthConfig, index: int) -> dict[str, Any]:
    """Simulate and render video ``index``; returns the unencoded video dict (see ``encode_video``)."""
    from .render import FAR, random_camera, render_frame
    from .scene import build_scene

    p = _connect()
    rng = np.random.default_rng([cfg.seed, index])
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    scene = build_scene(p, rng, n_obj, (cfg.min_object_size, cfg.max_object_size))
    camera = random_camera(rng, moving=cfg.camera == "moving")
    p.setTimeStep(1.0 / PHYSICS_HZ)
    t_frames = cfg.frames
    rgb = np.empty((t_frames, cfg.size, cfg.size, 3), np.uint8)
    depth = np.empty((t_frames, cfg.size, cfg.size), np.float32)
    bodies = np.empty((t_frames, cfg.size, cfg.size), np.int64)
    for t in range(t_frames):
        if t:
            for _ in range(SUBSTEPS):
                p.stepSimulation()
        rgb[t], depth[t], bodies[t] = render_frame(p, camera, t / max(t_frames - 1, 1), cfg.size,
                                                   scene.light_direction)
    # Instances are the objects visible in at least one frame, numbered 1..K in creation order.
    seen = set(np.unique(bodies).tolist())
    lut = np.zeros(max(scene.objects + [scene.floor]) + 2, np.int64)  # index b+1 for body b (-1 = nothing)
    k = 0
    for body in scene.objects:
        if body in seen:
            k += 1
            lut[body + 1] = k
    seg = lut[bodies + 1].astype(np.uint8 if k < 256 else np.uint16)
    meta = {"dataset": f"pybullet-{cfg.camera}", "split": cfg.split, "num_instances": k,
            "static_camera": cfg.camera == "static", "source": f"loci-fast synth seed={cfg.seed} index={index}",
            "depth_unit": "m", "depth_max": FAR}
    return {"key": f"{cfg.split}_{index:06d}", "meta": meta, "rgb": rgb, "depth": depth, "segmentation": seg}


def _encoded(args: tuple[SynthConfig, int]) -> tuple[int, dict[str, Any]]:
    cfg, index = args
    return index, encode_video(simulate_video(cfg, index), rgb_codec=cfg.rgb_codec)


def _count_samples(path: Path) -> int:
    with tarfile.open(path) as tf:
        return sum(1 for m in tf if m.name.endswith(".meta.json"))


def run_synth(out: str | Path, videos: int, cfg: SynthConfig, *, shard_videos: int = 64, workers: int = 1,
              progress: bool = True, log: Callable[[str], None] = print) -> list[Path]:
    """Generate ``videos`` videos into ``out/<split>-%06d.tar``; returns every shard path (old and new)."""
    cfg.check()
    if videos < 1 or shard_videos < 1 or workers < 1:
        raise ValueError("--videos, --shard-videos and --workers must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in remove_partial(out, cfg.split):
        log(f"removed unfinished {stale.name} from an interrupted run")
    claim_folder(out, cfg.split, synth_params(cfg, videos, shard_videos))
    n_shards = -(-videos // shard_videos)
    paths = [shard_path(out, cfg.split, s) for s in range(n_shards)]
    todo = []
    for s, path in enumerate(paths):
        expected = min(videos, (s + 1) * shard_videos) - s * shard_videos
        if path.exists():
            found = _count_samples(path)
            if found != expected:
                raise FileExistsError(f"{path} holds {found} videos but this run puts {expected} there: it was "
                                      "made with other --videos/--shard-videos. Use a fresh --out folder.")
            continue
        todo.append(s)
    if len(todo) < n_shards:
        log(f"{n_shards - len(todo)} of {n_shards} shards already complete in {out}; resuming")
    jobs = [(cfg, i) for s in todo for i in range(s * shard_videos, min(videos, (s + 1) * shard_videos))]
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="video", desc="synth", disable=not progress)
    pending: dict[int, dict[int, dict[str, Any]]] = {s: {} for s in todo}
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap_unordered(_encoded, jobs) if pool else map(_encoded, jobs)
        for index, sample in results:
            s = index // shard_videos
            pending[s][index] = sample
            bar.update(1)
            expected = min(videos, (s + 1) * shard_videos) - s * shard_videos
            if len(pending[s]) == expected:
                write_shard(paths[s], [pending[s][i] for i in sorted(pending[s])])
                del pending[s]
    finally:
        bar.close()
        if pool:
            pool.terminate()
            pool.join()
    return paths


def config_dict(cfg: SynthConfig) -> dict[str, Any]:
    return asdict(cfg)


def synth_params(cfg: SynthConfig, videos: int, shard_videos: int) -> dict[str, Any]:
    """What decides the shards' content, keyed by the ``loci-fast data synth`` option names.

    ``--workers`` is left out: the output does not depend on it.
    """
    return {"command": "synth", "videos": videos, "shard_videos": shard_videos, "frames": cfg.frames,
            "size": cfg.size, "objects": [cfg.min_objects, cfg.max_objects],
            "object_size": [cfg.min_object_size, cfg.max_object_size], "camera": cfg.camera,
            "seed": cfg.seed, "split": cfg.split, "rgb_codec": cfg.rgb_codec}
