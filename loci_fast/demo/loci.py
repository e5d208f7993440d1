"""The demo's ``loci`` stage on held-out multi-object videos: per-frame reconstructions and slot masks.

:func:`evaluate_loci` runs the trained Loci-s model in evaluation mode over whole held-out videos with
the training schedule of chunks (teacher forcing on frame 0, then K frames at a time, the slot state
carried between chunks), keeps each frame's reconstruction, and writes one PNG grid per video: the
frame, the composited reconstruction, the slot masks painted over the frame, and each slot's mask.
Then :func:`evaluation_table` runs ``loci-fast eval``'s video evaluation (the MOVi-style table) and
:func:`animation` ``loci-fast viz`` on one held-out video (its GIF goes into the report).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from .stages import DemoStage

GRID_VIDEOS = 2  # videos drawn as PNG grids in the report
MAX_FRAMES = 8  # columns per grid


class VideoFrames(NamedTuple):
    """Per-frame outputs of whole videos, frame order: (B, T, ...) each."""

    rgb: torch.Tensor  # (B, T, 3, H, W) the input frames
    reconstruction: torch.Tensor  # (B, T, 3, H, W) the composited reconstruction
    masks: torch.Tensor  # (B, T, O+1, H, W) slot masks, background last
    segmentation: torch.Tensor  # (B, T, H, W) ground-truth instance ids, 0 = background


@torch.no_grad()
def run_videos(model: torch.nn.Module, chunks: Any, num_videos: int) -> VideoFrames:
    """Feed ``chunks`` (``video_chunks(..., backprop_steps=K)`` batches, in order) to ``model`` until
    ``num_videos`` whole videos are done. A chunk's steps have the time stamps of its inputs but the
    last, preceded by the previous chunk's last; the step at time stamp t >= 0 reconstructs frame t."""
    done: list[VideoFrames] = []
    inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    state, last_time = None, None
    for batch in chunks:
        if batch["reset"]:
            if outputs:
                done.append(_stack(inputs, outputs))
                if sum(d.rgb.shape[0] for d in done) >= num_videos:
                    break
            inputs, outputs, last_time = {}, {}, None
            state = model.initial_state(batch["rgb"].shape[0], device=batch["rgb"].device, dtype=batch["rgb"].dtype)
        ts = [int(t) for t in batch["time_steps"].tolist()]
        inputs.update({t: (batch["rgb"][:, j], batch["segmentation"][:, j]) for j, t in enumerate(ts)})
        out = model(batch["rgb"], batch["depth"], batch["time_steps"], batch["use_depth"], state, evaluate=True)
        state = out.state
        step_times = ([] if last_time is None else [last_time]) + ts[:-1]
        for tau, step in zip(step_times, out.steps):
            if tau >= 0:
                outputs[tau] = (step.reconstruction["output_rgb"], step.reconstruction["mask"])
        last_time = ts[-1]
    else:
        if outputs:
            done.append(_stack(inputs, outputs))
    if not done:
        raise ValueError("demo loci evaluation: the held-out shards gave no whole video")
    return VideoFrames(*(torch.cat(tensors)[:num_videos] for tensors in zip(*done)))


def _stack(inputs: dict[int, tuple[torch.Tensor, torch.Tensor]],
           outputs: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> VideoFrames:
    """One batch of videos from its per-time-stamp inputs and outputs, frames in order."""
    kept = sorted(outputs)
    return VideoFrames(torch.stack([inputs[t][0] for t in kept], 1),
                       torch.stack([outputs[t][0] for t in kept], 1).clamp(0, 1),
                       torch.stack([outputs[t][1] for t in kept], 1),
                       torch.stack([inputs[t][1] for t in kept], 1))


def frame_rows(video: VideoFrames, index: int, max_frames: int = MAX_FRAMES) -> dict[str, torch.Tensor]:
    """Grid rows for video ``index``, one column per frame: frame, reconstruction, slot masks over the
    frame (each slot its own colour), each slot's mask, the background's mask."""
    from loci_fast.train.stages.proposal import palette

    rgb = video.rgb[index, :max_frames].float()
    masks = video.masks[index, :max_frames].float()  # (T, O+1, H, W)
    colours = palette(masks.shape[1] - 1).to(masks)
    painted = torch.einsum("tnhw,nc->tchw", masks[:, :-1], colours)
    rows = {"frame": rgb, "reconstruction": video.reconstruction[index, :max_frames].float(),
            "slot masks": (0.4 * rgb + 0.6 * painted).clamp(0, 1)}
    for k in range(masks.shape[1] - 1):
        rows[f"slot {k} mask"] = masks[:, k:k + 1]
    rows["background mask"] = masks[:, -1:]
    return rows


def fg_ari_per_frame(video: VideoFrames) -> float:
    """Mean per-frame FG-ARI of the slots (each pixel to its most likely slot or the background)
    against the ground-truth objects; frames without an object are skipped."""
    from loci_fast.eval.metrics import fg_ari

    owner = video.masks.argmax(2)  # (B, T, H, W), O = background
    slots = video.masks.shape[2] - 1
    pred = torch.nn.functional.one_hot(owner, slots + 1)[..., :slots].permute(0, 1, 4, 2, 3)
    ids = int(video.segmentation.max())
    if ids == 0:
        return float("nan")
    gt = torch.nn.functional.one_hot(video.segmentation, ids + 1)[..., 1:].permute(0, 1, 4, 2, 3)
    scores = fg_ari(pred.float(), gt.float(), per="frame")
    present = gt.flatten(2).any(-1)  # (B, T, M)
    return float(scores[present.any(-1)].mean())


def held_out(model: torch.nn.Module, cfg: Any, val: str, videos: int, batch_size: int = 4) -> VideoFrames:
    """``model`` in evaluation mode on the first ``videos`` videos of ``val``, in the training schedule of
    chunks; the random slot initialisation seeded, so the report is reproducible."""
    from loci_fast.data.loaders import video_chunks

    m = cfg["model"]
    chunks = video_chunks(val, batch_size=batch_size, sequence_len=int(cfg["sequence_len"]),
                          size=tuple(int(s) for s in m["input_size"]), seed=7, rank=0, world_size=1,
                          training=False, with_masks=False, backprop_steps=int(cfg["backprop_steps"]),
                          teacher_forcing=int(cfg["teacher_forcing"]))
    torch.manual_seed(0)
    return run_videos(model.eval(), chunks, videos)


def scores(video: VideoFrames) -> dict[str, float]:
    """The reconstruction's rgb MSE and the slots' per-frame FG-ARI."""
    return {"rgb_mse": float((video.reconstruction - video.rgb).square().mean()), "fg_ari": fg_ari_per_frame(video)}


def evaluate_loci(stage: DemoStage, out: Path, val: str, videos: int = 4) -> None:
    """The loci stage on ``videos`` held-out videos: the reconstruction's rgb MSE and the slots' per-frame
    FG-ARI, of its final weights and, for comparison, of the model as handed over (``stage.init_from``
    loaded, the rest at its seeded initial values, untrained); and a PNG grid of frames, reconstructions
    and slot masks of the final weights for the first :data:`GRID_VIDEOS` videos
    (``<out>/report/loci-video-<i>.png``); then the evaluation table and one animation."""
    from PIL import Image

    from loci_fast.config import load_config
    from loci_fast.eval.weights import load_weights
    from loci_fast.model.loci_model import LociModel
    from loci_fast.train.handover import init_from
    from loci_fast.train.logs import image_grid
    from loci_fast.train.stages import get_stage

    weights = load_weights(out / stage.name)
    cfg = load_config(weights.config)
    torch.manual_seed(int(cfg["seed"]))
    initial = LociModel.from_config(cfg)
    init_from(initial, get_stage("loci"), [str(out / name) for name in stage.init_from])
    before = scores(held_out(initial, cfg, val, videos))
    model = LociModel.from_config(cfg)
    model.load_state_dict(weights.state)
    result = held_out(model, cfg, val, videos)
    stage.eval = {**scores(result), **{f"initial_{k}": v for k, v in before.items()},
                  "videos": int(result.rgb.shape[0]), "frames": int(result.rgb.shape[1])}
    for i in range(min(GRID_VIDEOS, result.rgb.shape[0])):
        rows = frame_rows(result, i)
        stage.rows = list(rows)
        Image.fromarray(image_grid(rows, max_items=MAX_FRAMES)).save(out / "report" / f"loci-video-{i}.png")
    evaluation_table(stage, out, val, videos)
    animation(stage, out, val)


#: the demo's evaluation table: two modes, two seeds of the model's draws (upstream's table uses 1-5)
TABLE_MODES, TABLE_SEEDS = ("random", "regularization"), (1, 2)


def evaluation_table(stage: DemoStage, out: Path, val: str, videos: int) -> Path:
    """``loci-fast eval`` on the first ``videos`` held-out videos (``<out>/eval-<stage>/results.md``)."""
    from loci_fast.eval.video import evaluate_videos

    res = evaluate_videos(out / stage.name, [val], out / f"eval-{stage.name}", modes=TABLE_MODES, seeds=TABLE_SEEDS,
                          batch_size=videos, videos=videos, progress=False, fresh=True)
    stage.eval["table"] = str(Path(res["table"]).relative_to(out))
    return Path(res["table"])


def animation(stage: DemoStage, out: Path, val: str) -> Path:
    """``loci-fast viz`` on held-out video 0; its GIF copied to ``<out>/report/<stage>-animation.gif``."""
    import shutil

    from loci_fast.viz import render

    index = render(out / stage.name, val, out / f"viz-{stage.name}", videos=(0,), mode="random", seed=1,
                   progress=False)
    gif = next(index.parent.glob("video-*/animation.gif"))
    shutil.copyfile(gif, out / "report" / f"{stage.name}-animation.gif")
    stage.eval["viz"] = str(index.relative_to(out))
    return index
