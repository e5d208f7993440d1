"""Source/target frame pairs of one video for the background module (§19.4)."""
from __future__ import annotations

import os

from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..reader import expand_paths
from .augment import crop, resize, scale_crop_box
from .common import depth_tensor, rgb_tensor, seg_tensor

#: per-file loss settings of the background stage (§17.4, §19.4) and their defaults (the MOVi B-D values)
LOSS_SETTINGS: dict[str, float | bool] = {
    "uncertainty_regularizer": 0.0, "depth_weighting": False, "rgb_loss_factor": 0.0, "rgb_warmup": 0.0,
    "depth_warmup": 0.0, "color_input": True,
}
#: per-file settings that shape the pairs themselves; None = the view's time_std_dev / the video's meta
PAIR_SETTINGS: dict[str, Any] = {"time_std_dev": None, "static": None}
#: upstream uses a file's fg masks only if one of its first 100 is not empty
FG_CHECK_FRAMES = 100


def _check_settings(where: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(LOSS_SETTINGS) - set(PAIR_SETTINGS))
    if unknown:
        raise ValueError(f"{where}: unknown frame-pair settings {unknown}; valid: "
                         f"{', '.join(list(LOSS_SETTINGS) + list(PAIR_SETTINGS))}")
    return {**LOSS_SETTINGS, **PAIR_SETTINGS, **settings}


def settings_by_shard(entries: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{shard path: settings}`` from data-config entries (``{"shards": pattern, <setting>: value,
    ...}``, as in ``data.train`` of ``pretrain-background.json``); keys other than the settings
    (name, weight, ...) are ignored. A shard listed by two entries takes the later one's settings."""
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        keys = set(LOSS_SETTINGS) | set(PAIR_SETTINGS)
        settings = {k: entry[k] for k in keys if k in entry}
        for shard in expand_paths(entry["shards"]):
            out[os.path.abspath(shard)] = settings  # looked up by absolute path: any cwd, any spelling
    return out


def uses_fg(meta: Mapping[str, Any]) -> bool:
    """The video's fg masks count: it has instances and one is visible in its first 100 frames."""
    return meta["num_instances"] > 0 and any(len(ids) > 0 for ids in meta["frame_instances"][:FG_CHECK_FRAMES])


class FramePairsView:
    """Items are the source frames of a video (every frame once per visit); the target is the same
    frame (``time_std_dev`` = 0), uniform over the video (< 0, every upstream config) or Gaussian
    around the source (> 0). Both frames get the same ScaleCrop and flip.

    ``make`` returns ``{source,target}_{rgb,depth,fg}`` ((3|1, h, w) float32; depth in [0, 1] or -1;
    fg = segmentation > 0, all 0 when the video's masks do not count, see :func:`uses_fg`), ``dt``
    (target - source, 0 for a static camera, as upstream), ``use_depth`` and ``use_fg`` (bool), and
    the per-file loss settings of :data:`LOSS_SETTINGS` as float32 scalars.

    ``file_settings`` maps shard paths to per-file settings (:func:`settings_by_shard`): the loss
    settings, ``time_std_dev`` (overrides the view's) and ``static`` (overrides the video's
    ``static_camera``; upstream reads only the config's). Shards not listed use the defaults.
    """

    name = "frame_pairs"

    def __init__(self, size: tuple[int, int] | None = None, augment: bool = True, time_std_dev: float = -1.0,
                 file_settings: Mapping[str, Mapping[str, Any]] | None = None):
        self.size, self.augment, self.time_std_dev = size and tuple(size), augment, time_std_dev
        self.file_settings = {os.path.abspath(k): _check_settings(f"file_settings[{k!r}]", v)
                              for k, v in (file_settings or {}).items()}
        self.defaults = _check_settings("defaults", {})

    def settings(self, shard: str | None) -> dict[str, Any]:
        return self.file_settings.get(os.path.abspath(shard), self.defaults) if shard is not None else self.defaults

    def plan(self, meta: dict[str, Any], rng: np.random.Generator | None, training: bool) -> list[Any]:
        return list(range(meta["num_frames"]))

    def target(self, src: int, n: int, rng: np.random.Generator, time_std_dev: float | None = None) -> int:
        std = self.time_std_dev if time_std_dev is None else time_std_dev
        if std == 0:
            return src
        if std < 0:
            return int(rng.integers(n))
        return int(np.clip(round(src + rng.normal(0.0, std)), 0, n - 1))

    def make(self, video: dict[str, Any], item: Any, rng: np.random.Generator, training: bool) -> dict[str, Any]:
        meta = video["meta"]
        settings = self.settings(video.get("shard"))
        src = item
        tgt = self.target(item, meta["num_frames"], rng, settings["time_std_dev"])
        frames = np.array([src, tgt])
        hw = (meta["height"], meta["width"])
        size = self.size or hw
        use_fg = uses_fg(meta)
        fg = (seg_tensor(video, frames) > 0).float() * float(use_fg)
        x = torch.cat([rgb_tensor(video["rgb"][frames]), depth_tensor(video, frames), fg], 1)
        if self.augment:
            x = crop(x, scale_crop_box(rng, hw, size))
        x = resize(x, size)
        if self.augment and rng.random() < 0.5:
            x = x.flip(-1)
        out = {}
        for i, name in enumerate(("source", "target")):
            out[f"{name}_rgb"], out[f"{name}_depth"], out[f"{name}_fg"] = (
                x[i, :3].contiguous(), x[i, 3:4].contiguous(), x[i, 4:5].contiguous())
        static = meta["static_camera"] if settings["static"] is None else bool(settings["static"])
        out["dt"] = torch.tensor(0.0 if static else float(tgt - src))
        out["use_depth"] = torch.tensor(video["depth"] is not None)
        out["use_fg"] = torch.tensor(use_fg)
        out.update({k: torch.tensor(float(settings[k])) for k in LOSS_SETTINGS})
        out["frames"] = torch.tensor([src, tgt])
        return out

    def dummy(self, meta: dict[str, Any]) -> dict[str, Any]:
        h, w = self.size or (meta["height"], meta["width"])
        out = {f"{n}_{k}": torch.zeros(c, h, w) for n in ("source", "target") for k, c in
               (("rgb", 3), ("depth", 1), ("fg", 1))}
        out.update(dt=torch.tensor(0.0), use_depth=torch.tensor(False), use_fg=torch.tensor(False),
                   frames=torch.tensor([-1, -1]))
        out.update({k: torch.tensor(float(v)) for k, v in LOSS_SETTINGS.items()})
        return out
