"""The original Loci's ``-save`` rollout and views on CATER (reference loci.md §4.2), in correct colours.

Rollout: batch 1, eval mode, no_grad, ``evaluate=True`` (slot colours re-decoded without priority);
``warmup`` steps on frame 0 (input and target re-read from frame 0), then frames 0…T−2 each predicting
the next. The error map fed to the next step is sqrt(RMS_c(target − Ŷ))·RMS_c(target − background),
against the unmasked target. Frames are BGR as the CATER loader gives them; the views flip them to
RGB, so the files show the scene's colours, the slot colour table as written, and a luminance that
weighs the real red, green and blue (upstream applies the weights to B, G, R).

Views per step, composed at the model's input size × ``scale`` (level-1 maps upsampled nearest):
* ``objects``: input, highlighted input (the previous step's masks over the grey frame), composite
  output and background at 2×, and ceil(O/2) columns × 4 rows of slot RGB (min–max normalised) and
  tinted slot masks at 1× (18-px margins, 6-px gaps, 0.2-grey canvas);
* ``nice``: 2×2 (10-px margins) input, highlighted input, output, and the maximum of the prioritised
  position Gaussians shown as (g, g, 0.6g + 0.4);
* individual panels: input, background, bg_error, position, output, highlighted, error, and per slot
  (the background last) its mask and object colours.
The composite shown is clip(Ŷ) plus the raw background where bg_error ≤ 0.1, times (1 − init status).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from loci_fast.loci_v1.geometry import gaussian_maps, prioritize

from .panels import Canvas, as_rgb, ceil_div, highlight, minmax, resize, tint, to_uint8

OBJ_MARGIN, OBJ_GAP, NICE_MARGIN = 18, 6, 10


def bgr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Flip the channel axis 1 of (B, 3, H, W) (or (B, N, 3, H, W) on axis 2)."""
    return x.flip(1) if x.dim() == 4 else x.flip(2)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((x ** 2).mean(dim=1, keepdim=True))


def rollout_v1(model: torch.nn.Module, frames: torch.Tensor, background: torch.Tensor, *, warmup: int,
               seed: int = 1) -> Iterator[dict[str, Any]]:
    """Run a :class:`~loci_fast.loci_v1.LociV1` over one video.

    Args:
        frames: (T, 3, h, w) BGR in [0, 1] at the model level's resolution; background (1, 3, h, w) BGR.
        warmup: steps on frame 0 first (the run's ``teacher_forcing``).
        seed: seeds torch first (the model's binarising and seeding noise stays on, as upstream).

    Yields per step, one step at a time (a 301-frame video is never held in memory): ``step`` (= t + warmup, the file index), ``time`` t, and on the CPU (RGB order):
    ``input``, ``target``, ``output`` (shown composite), ``mask`` (1, O+1, h, w) predicted for the next
    frame, ``mask_shown`` (the masks over this input: the previous step's prediction, None at first),
    ``objects`` (1, O+1, 3, h, w), ``background``, ``bg_error``, ``error`` (1, 1, h, w),
    ``position`` (1, O, 3), ``gestalt`` (1, O, G), ``priority`` (1, O), ``snitch`` (1, 2) or None.
    """
    if frames.dim() != 4 or frames.shape[0] < 2:
        raise ValueError(f"frames: expected (T >= 2, 3, h, w), got {tuple(frames.shape)}")
    return _rollout_v1(model, frames, background, warmup, seed)


@torch.no_grad()
def _rollout_v1(model, frames, background, warmup: int, seed: int) -> Iterator[dict[str, Any]]:
    model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    frames, background = frames.to(device), background.to(device)
    o = model.num_objects
    init = float(model.init_status())
    state, error, mask_shown = None, None, None
    for t in range(-warmup, frames.shape[0] - 1):
        inp = frames[max(t, 0)][None]
        target = frames[0][None] if t < 0 else frames[t + 1][None]
        out, state = model.step(inp, background, state, error, evaluate=True)
        bg_error = _rms(target - out.background)
        error = torch.sqrt(_rms(target - out.output)) * bg_error
        shown = out.output.clamp(0, 1) + out.background * (bg_error <= 0.1).to(out.output.dtype) * (1 - init)
        h, w = inp.shape[-2:]
        record = {"step": t + warmup, "time": t, "input": bgr_to_rgb(inp), "target": bgr_to_rgb(target),
                  "output": bgr_to_rgb(shown.clamp(0, 1)), "mask": out.mask, "mask_shown": mask_shown,
                  "objects": bgr_to_rgb(out.rgb.reshape(1, o + 1, 3, h, w)),
                  "background": bgr_to_rgb(out.background), "bg_error": bg_error, "error": error,
                  "position": out.position.reshape(1, o, 3), "gestalt": out.gestalt.reshape(1, o, -1),
                  "priority": out.priority.reshape(1, o), "snitch": out.snitch}
        mask_shown = out.mask
        yield {k: v.detach().float().cpu() if isinstance(v, torch.Tensor) else v for k, v in record.items()}


def position_map(record: dict[str, Any], size: tuple[int, int]) -> torch.Tensor:
    """The maximum over slots of the prioritised Gaussians at ``size``: (1, 1, H, W)."""
    pos = record["position"]
    o = pos.shape[1]
    maps = gaussian_maps(pos.reshape(o, 3), size).view(1, o, *size)
    return prioritize(maps, record["priority"]).amax(1, keepdim=True)


def highlighted(record: dict[str, Any]) -> torch.Tensor:
    """The input in grey under the masks it was decoded against (the raw input at the first step)."""
    if record["mask_shown"] is None:
        return record["input"]
    return highlight(record["input"], record["mask_shown"][:, :-1])


def cater_panels(record: dict[str, Any], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The individual panels of a step at ``size`` (1, 3, H, W), nearest-upsampled."""
    def up(x: torch.Tensor) -> torch.Tensor:
        return resize(x, size, mode="nearest")

    g = position_map(record, size)
    mask = record["mask"]
    columns = mask.shape[1]
    panels = {"input": up(record["input"]), "background": up(record["background"]),
              "bg_error": up(as_rgb(record["bg_error"])), "position": torch.cat([g, g, 0.6 * g + 0.4], 1),
              "output": up(record["output"]), "highlighted": up(highlighted(record)),
              "error": up(as_rgb(record["error"]))}
    for k in range(columns):
        name = f"slot{k}" if k < columns - 1 else "bg"
        panels[f"{name}_mask"] = up(tint(mask[:, k:k + 1], k, columns))
        panels[f"{name}_object"] = up(record["objects"][:, k].clamp(0, 1))
    return panels


def objects_view(record: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """Upstream's ``loci-objects`` picture: (H·4 + 54, W·4 + 36 + C·W + 6(C+1), 3) uint8, C = ceil(O/2)."""
    h, w = size
    big = (2 * h, 2 * w)
    mask = record["mask"]
    o = mask.shape[1] - 1
    cols = ceil_div(o, 2)
    height, width = h * 4 + OBJ_MARGIN * 3, w * 4 + OBJ_MARGIN * 2 + w * cols + OBJ_GAP * (cols + 1)
    canvas = Canvas(height, width)
    m = OBJ_MARGIN
    canvas.paste(resize(record["input"], big, "nearest"), m, m)
    canvas.paste(resize(highlighted(record), big, "nearest"), 2 * h + 2 * m, m)
    canvas.paste(resize(record["output"], big, "nearest"), m, width - 2 * w - m)
    canvas.paste(resize(record["background"], big, "nearest"), 2 * h + 2 * m, width - 2 * w - m)
    for k in range(o):
        c, second = divmod(k, 2)
        left = m + 2 * w + OBJ_GAP + c * (OBJ_GAP + w)
        top = m + 2 * second * (h + OBJ_GAP)
        canvas.paste(resize(minmax(record["objects"][:, k]), size, "nearest"), top, left)
        canvas.paste(resize(tint(mask[:, k:k + 1], k, o + 1), size, "nearest"), top + h + OBJ_GAP, left)
    return canvas.uint8()


def nice_view(panels: dict[str, torch.Tensor], size: tuple[int, int]) -> np.ndarray:
    """Upstream's ``loci-nice`` picture from :func:`cater_panels`: (2H + 30, 2W + 30, 3) uint8."""
    h, w = size
    m = NICE_MARGIN
    canvas = Canvas(2 * h + 3 * m, 2 * w + 3 * m)
    canvas.paste(panels["input"], m, m)
    canvas.paste(panels["highlighted"], m, 2 * m + w)
    canvas.paste(panels["output"], 2 * m + h, m)
    canvas.paste(panels["position"], 2 * m + h, 2 * m + w)
    return canvas.uint8()


def panel_images(panels: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The panels as uint8 (h, w, 3) arrays."""
    return {name: to_uint8(p) for name, p in panels.items()}
