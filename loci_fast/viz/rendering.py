"""``render``: load a Loci-s or original-Loci model and chosen videos, and write every picture of them.

Output layout under ``out``::

    index.html                     every file below, linked relatively
    manifest.json                  settings and, per video, the files written
    video-0003-<key>/
        grid/step-000.png ...      Loci-s: upstream's --save grid per step
        objects/step-000.png ...   CATER: the objects view per step; nice/ the nice view
        panels/step-000/*.png      per-step panels (per slot, overlays, background, uncertainty)
        animation.gif, animation.mp4
        latents.safetensors, latents.json   (schema in loci_fast.viz.latents)
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .html import VideoPage, write_index

KINDS = ("loci", "loci-v1")
LATENT_KEYS = ("time", "position", "gestalt", "priority", "snitch")
ANIMATION_SIDE = 960  # animation frames are shrunk to at most this many pixels on their longer side


class VizError(ValueError):
    """Bad input to ``loci-fast viz``; the message names the problem and the fix."""


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _latents_only(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in LATENT_KEYS if k in record}


def animation_frame(picture: np.ndarray) -> np.ndarray:
    """A picture for the GIF/MP4: shrunk (Lanczos) when its longer side exceeds ``ANIMATION_SIDE``."""
    h, w = picture.shape[:2]
    if max(h, w) <= ANIMATION_SIDE:
        return picture
    from PIL import Image

    f = ANIMATION_SIDE / max(h, w)
    return np.asarray(Image.fromarray(picture).resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS))


def load_viz_model(checkpoint: str | Path, config: Any = None, mode: str | None = None,
                   device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Any, str]:
    """(model in eval mode on ``device``, its config, kind "loci" or "loci-v1") from any weights format
    ``loci-fast eval`` takes; ``mode`` overrides a Loci-s config's ``model.inference_mode``."""
    from loci_fast.config import ConfigError, load_config
    from loci_fast.config.schema_v1 import is_loci_v1
    from loci_fast.eval.weights import load_weights

    weights = load_weights(checkpoint)
    source = config if config is not None else weights.config
    if source is None:
        raise VizError(f"{weights.source} carries no config: pass --config (the config it was trained with)")
    try:
        raw = load_config(source)
        v1 = is_loci_v1(dict(raw))
        cfg = load_config(source, {"model.inference_mode": mode}) if mode and not v1 else raw
    except ConfigError as err:
        raise VizError(f"config: {err}") from None
    if v1:
        from loci_fast.loci_v1 import LociV1

        if mode:
            raise VizError("--mode selects a Loci-s inference mode; the original Loci (loci-v1) has none: drop --mode")
        model, kind = LociV1.from_config(cfg["model"], teacher_forcing=int(cfg["teacher_forcing"])), "loci-v1"
    else:
        stage = weights.stage or cfg.get("stage")
        if stage not in (None, "loci"):
            raise VizError(f"{weights.source} holds {stage!r} weights; viz draws whole models (stage loci, or an "
                           f"original-Loci loci-v1 config): for {stage} weights use `loci-fast eval`")
        from loci_fast.model.loci_model import LociModel

        model, kind = LociModel.from_config(cfg), "loci"
    state = weights.state
    if kind == "loci" and not hasattr(model, "proposal"):  # a segmentation run's proposal, unused in this mode
        state = {k: v for k, v in state.items() if not k.startswith("proposal.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        hint = ""
        if any(k.startswith("proposal.") for k in missing):
            hint = ("; segmentation mode needs the position proposal's weights: use a checkpoint trained in "
                    "segmentation mode (or with --init-proposal), or pick --mode random")
        raise VizError(f"{weights.source} does not fit the {kind} model of the config: {len(missing)} missing "
                       f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}) keys{hint}; "
                       "pass the --config the weights were trained with")
    return model.to(device).eval(), cfg, kind


def parse_videos(text: str) -> list[int]:
    """``"0,3,5-7"`` -> [0, 3, 5, 6, 7] (indices in sorted shard order)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise VizError(f"--videos {text!r}: {part!r} is not an index or a range like 2-5 (indices count from 0)")
        a, b = int(m[1]), int(m[2] or m[1])
        if b < a:
            raise VizError(f"--videos {text!r}: the range {part} runs backwards; write {b}-{a}")
        out += range(a, b + 1)
    if not out:
        raise VizError(f"--videos {text!r}: name at least one video index (e.g. --videos 0,3)")
    return sorted(set(out))


def catalogue(shards: list[str]) -> list[dict[str, Any]]:
    """Every video's meta.json, in shard order, without decoding frames (for checks and the progress bar)."""
    from loci_fast.data.reader import iter_raw

    metas = []
    for shard in shards:
        for key, fields in iter_raw(shard, ("meta.json",)):
            try:
                metas.append(json.loads(fields["meta.json"]))
            except (KeyError, ValueError):
                raise VizError(f"shard {shard}, sample {key!r}: no readable meta.json; rewrite the shard with "
                               "`loci-fast data synth`, convert-hdf5 or convert-cater") from None
    return metas


def check_wanted(wanted: Iterable[int], count: int, data: Any) -> list[int]:
    """``wanted`` sorted, each an index into ``count`` videos; errors name how many there are and the fix."""
    wanted = sorted(set(wanted))
    if count == 0:
        raise VizError(f"--data {data}: the shards hold no videos; write some with `loci-fast data synth` "
                       "(or convert-cater for CATER)")
    bad = [i for i in wanted if i >= count]
    if bad:
        raise VizError(f"--videos {','.join(map(str, bad))}: the shards hold {count} videos (indices 0-{count - 1}); "
                       "pick indices in that range or use --count")
    return wanted


def pick_videos(items: Iterator[dict[str, Any]], wanted: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The decoded videos at ``wanted`` positions of ``items``, one at a time (decoding stops after the last)."""
    for index, item in enumerate(items):
        if index in wanted:
            yield index, item
        if index >= wanted[-1]:
            return


def _sorted_shards(data: Any) -> list[str]:
    from loci_fast.data.reader import expand_paths

    paths = sorted(set(expand_paths([data] if isinstance(data, (str, Path)) else list(data))))
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise VizError(f"--data: {missing[0]} does not exist; check the path or create the shards first")
    return paths


def _loci_inputs(cfg, video: dict[str, Any], frames: int | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    from loci_fast.data.views.video_chunks import VideoChunksView

    n = int(video["meta"]["num_frames"])
    s = min(n, int(frames or cfg["sequence_len"]))
    view = VideoChunksView(s, size=tuple(int(v) for v in cfg["model"]["input_size"]), augment=False)
    item = view.make(video, 0, np.random.default_rng(0), False)
    return item["rgb"], item["depth"], bool(item["use_depth"])


def _write_loci_video(model, cfg, video, folder: Path, *, seed: int, scale: float, frames: int | None,
                      panels: bool, bar) -> tuple[list[np.ndarray], dict[str, list[str]], dict]:
    from loci_fast.data.views.video_chunks import teacher_forcing_length

    from .rollout import rollout_loci_s
    from .views import loci_grid, panel_images, step_panels

    rgb, depth, use_depth = _loci_inputs(cfg, video, frames)
    tf = teacher_forcing_length(int(cfg["teacher_forcing"]), int(cfg["backprop_steps"]))
    size = tuple(max(1, round(s * scale)) for s in rgb.shape[-2:])
    latent = tuple(model.decoder.latent_size)
    pictures, groups, records = [], {"grid": [], "panels": []}, []
    for r in rollout_loci_s(model, rgb, depth, use_depth, teacher_forcing_steps=tf, seed=seed):
        records.append(_latents_only(r))
        p = step_panels(r, size, latent)
        grid = loci_grid(p, size, r["mask"].shape[1])
        name = f"step-{r['step']:03d}"
        _save_png(folder / "grid" / f"{name}.png", grid)
        groups["grid"].append(f"grid/{name}.png")
        if panels:
            groups["panels"] += _save_panels(folder, name, panel_images(p))
        pictures.append(animation_frame(grid))
        bar.update(1)
    return pictures, groups, {"records": records, "teacher_forcing_steps": tf, "size": list(size)}


def _save_panels(folder: Path, step: str, images: dict[str, np.ndarray]) -> list[str]:
    """Each panel of one step as ``panels/<step>/<panel>.png``; their paths relative to ``folder``."""
    names = []
    for pname, img in images.items():
        _save_png(folder / "panels" / step / f"{pname}.png", img)
        names.append(f"panels/{step}/{pname}.png")
    return names


def _write_cater_video(model, cfg, video, folder: Path, *, seed: int, scale: float, frames: int | None,
                       panels: bool, bar) -> tuple[list[np.ndarray], dict[str, list[str]], dict]:
    from .cater import cater_panels, nice_view, objects_view, panel_images, rollout_v1

    n = int(video["num_frames"])
    t = min(n, int(frames)) if frames else n
    h, w = (int(v) for v in cfg["model"]["input_size"])
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    pictures, groups, records = [], {"objects": [], "nice": [], "panels": []}, []
    for r in rollout_v1(model, torch.from_numpy(video["frames"][:t]), torch.from_numpy(video["background"]),
                        warmup=int(cfg["teacher_forcing"]), seed=seed):
        records.append(_latents_only(r))
        p = cater_panels(r, size)
        name = f"step-{r['step']:03d}"
        objects = objects_view(r, size)
        _save_png(folder / "objects" / f"{name}.png", objects)
        _save_png(folder / "nice" / f"{name}.png", nice_view(p, size))
        groups["objects"].append(f"objects/{name}.png")
        groups["nice"].append(f"nice/{name}.png")
        if panels:
            groups["panels"] += _save_panels(folder, name, panel_images(p))
        pictures.append(animation_frame(objects))
        bar.update(1)
    return pictures, groups, {"records": records, "warmup": int(cfg["teacher_forcing"]), "size": list(size)}


def _iter_inputs(kind: str, cfg, shards: list[str]) -> Iterator[dict[str, Any]]:
    if kind == "loci":
        from loci_fast.data.reader import iter_videos

        return iter_videos(shards)
    from loci_fast.data.cater.load import iter_cater

    h, w = (int(v) for v in cfg["model"]["input_size"])
    div = 4 if int(cfg["model"]["level"]) == 1 else 1
    return iter_cater(shards, size=(h // div, w // div))


def _steps(kind: str, cfg, meta: dict[str, Any], frames: int | None) -> int:
    """How many rollout steps a video gives (for the progress bar), from its meta.json."""
    n = int(meta["num_frames"])
    if kind == "loci":
        from loci_fast.data.views.video_chunks import teacher_forcing_length

        return teacher_forcing_length(int(cfg["teacher_forcing"]), int(cfg["backprop_steps"])) + \
            min(n, int(frames or cfg["sequence_len"])) - 1
    return int(cfg["teacher_forcing"]) + (min(n, int(frames)) if frames else n) - 1


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(key))[:60]


def write_one(kind: str, model, cfg, index: int, video: dict[str, Any], out: Path, *, seed: int, scale: float,
              frames: int | None, panels: bool, fps: float, bar) -> tuple[VideoPage, dict[str, Any]]:
    """One video's pictures, animations and latents under ``out/video-NNNN-<key>/``; its index entry
    and manifest record."""
    from .animate import write_gif, write_mp4
    from .latents import latent_tensors, write_latents

    key = str(video["key"])
    folder = out / f"video-{index:04d}-{_safe(key)}"
    write_video = _write_loci_video if kind == "loci" else _write_cater_video
    pictures, groups, info = write_video(model, cfg, video, folder, seed=seed, scale=scale, frames=frames,
                                         panels=panels, bar=bar)
    animations = [write_gif(folder / "animation.gif", pictures, fps).name]
    mp4 = write_mp4(folder / "animation.mp4", pictures, fps)
    if mp4 is not None:
        animations.append(mp4.name)
    files = [p.name for p in write_latents(folder, latent_tensors(info["records"]), kind=kind, video=key)]
    groups = {g: ps for g, ps in groups.items() if ps}
    rel = folder.name
    steps = len(info["records"])
    page = VideoPage(f"video {index}: {key} ({steps} steps)", [f"{rel}/{a}" for a in animations],
                     {g: [f"{rel}/{p}" for p in ps] for g, ps in groups.items()}, [f"{rel}/{f}" for f in files])
    entry = {"index": index, "key": key, "folder": rel, "steps": steps,
             "times": [int(r["time"]) for r in info["records"]], "size": info["size"], "animations": animations,
             "files": files, "groups": groups}
    return page, entry


def render(checkpoint: str | Path, data: Any, out: str | Path, *, config: Any = None,
           videos: Iterable[int] | None = (0,), count: int | None = None, mode: str | None = None, seed: int = 1,
           device: str | torch.device | None = None, scale: float = 1.0, frames: int | None = None,
           panels: bool = True, fps: float = 4.0, progress: bool = True) -> Path:
    """Write the pictures, animations and latents of chosen videos; returns ``out/index.html``.

    Args:
        checkpoint: our run or checkpoint folder, an ``export`` .safetensors file, or ``import-upstream`` output.
        data: loci-video shards (paths, globs, folders); CATER shards for an original-Loci model.
        out: output folder (created).
        config: config path or dict (needed when the weights carry none).
        videos: indices in sorted shard order; ``count`` instead takes the first ``count`` videos.
        mode: Loci-s inference mode (random, regularization, segmentation); default the config's.
        seed: seeds torch before each video's rollout (the eval-mode model still draws noise).
        device: torch device (default cuda if available, else cpu).
        scale: picture size relative to the model's input size (upstream's ``--scale``).
        frames: at most this many frames per video (default: the config's sequence_len for Loci-s,
            all frames for CATER).
        panels: also write every per-step panel as its own PNG.
        fps: frame rate of the animations.
    """
    from tqdm import tqdm

    from loci_fast.data.errors import DataError

    if scale <= 0:
        raise VizError(f"--scale {scale}: must be > 0 (1 = the model's input size)")
    if count is not None:
        if count < 1:
            raise VizError(f"--count {count}: must be >= 1")
        videos = range(count)
    videos = list(videos or ())
    if not videos or min(videos) < 0:
        raise VizError("--videos: name indices >= 0 (e.g. --videos 0,3) or use --count N")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg, kind = load_viz_model(checkpoint, config, mode, device)
    shards = _sorted_shards(data)
    try:
        metas = catalogue(shards)
    except DataError as err:
        raise VizError(str(err)) from None
    videos = check_wanted(videos, len(metas), data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pages, manifest = [], {"kind": kind, "checkpoint": str(checkpoint), "data": [str(s) for s in shards],
                           "seed": seed, "scale": scale, "videos": []}
    if kind == "loci":
        manifest["mode"] = str(cfg["model"]["inference_mode"])
    bar = tqdm(total=sum(_steps(kind, cfg, metas[i], frames) for i in videos), unit="step", desc=f"viz {kind}",
               disable=not progress, dynamic_ncols=True)
    try:
        for index, video in pick_videos(_iter_inputs(kind, cfg, shards), videos):
            page, entry = write_one(kind, model, cfg, index, video, out, seed=seed, scale=scale, frames=frames,
                                    panels=panels, fps=fps, bar=bar)
            pages.append(page)
            manifest["videos"].append(entry)
    except DataError as err:
        hint = (" (an original-Loci model reads CATER shards: `loci-fast data convert-cater` or "
                "`data synth --cater`; for other videos use a Loci-s checkpoint)") if kind == "loci-v1" else ""
        raise VizError(f"{err}{hint}") from None
    finally:
        bar.close()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    title = f"loci-fast viz: {kind}" + (f" ({manifest['mode']} mode)" if kind == "loci" else "")
    notes = [f"checkpoint {checkpoint}; seed {seed}; scale {scale}; files per video in manifest.json"]
    return write_index(out, title, pages, notes, files=["manifest.json"])
