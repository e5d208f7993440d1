"""The Loci-s pictures of one rollout step: upstream's ``--save`` grid (reference §18.5) and its panels.

Grid (18-px margins, 6-px gaps, 0.2-grey canvas; ``size`` = scale × input size):
top row GT RGB (t), GT depth (t), the target frame (t+1; frame 0 during teacher forcing) in grey with
the slot masks overlaid; four rows with one column per slot plus the background: slot RGB, slot
depth, mask in the slot's colour, position Gaussian; bottom row output RGB, output depth and the
background's uncertainty. "Output" and masks are the prediction for τ ≥ 0 and the reconstruction
during teacher forcing. Colours are correct (upstream's files swap red and blue).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .panels import Canvas, as_rgb, ceil_div, highlight, resize, slot_gaussians, tint, to_uint8

MARGIN, GAP = 18, 6


def grid_geometry(size: tuple[int, int], columns: int) -> dict[str, int]:
    """Pixel geometry of the grid for panels of ``size`` (H, W) and ``columns`` slot columns (O+1)."""
    h, w = size
    ow = ceil_div(w * 3 + MARGIN - (columns - 1) * GAP, columns)
    oh = ceil_div(ow * h, w)
    padding = ow * columns + (columns - 1) * GAP - w * 3
    return {"object_width": ow, "object_height": oh, "width": w * 3 + MARGIN * 3 + padding,
            "height": h * 2 + MARGIN * 4 + GAP * 3 + oh * 4}


def step_panels(record: dict[str, Any], size: tuple[int, int], latent_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Every panel of a step as (1, 3, h, w) RGB in [0, 1]: the main ones at ``size`` and, per slot k
    (the background last, ``bg``), ``slot{k}_rgb``, ``_depth``, ``_mask`` at the model's resolution and
    ``_position`` at ``size`` (upstream renders the Gaussians at the picture size)."""
    mask = record["mask"]
    columns = mask.shape[1]
    num_slots = columns - 1
    panels = {
        "input_rgb": resize(record["input_rgb"], size),
        "input_depth": resize(as_rgb(record["input_depth"]), size),
        "segmentation": resize(highlight(record["target_rgb"], mask[:, :-1]), size),
        "output_rgb": resize(record["output_rgb"], size),
        "output_depth": resize(as_rgb(record["output_depth"]), size),
        "uncertainty": resize(as_rgb(record["uncertainty"]), size, mode="bilinear"),
        "background_rgb": resize(record["bg_rgb"], size),
        "background_depth": resize(as_rgb(record["bg_depth"]), size),
    }
    gauss = slot_gaussians(record["position"].reshape(1, -1), num_slots, tuple(size), latent_size)
    for k in range(columns):
        name = f"slot{k}" if k < num_slots else "bg"
        panels[f"{name}_rgb"] = record["slot_rgb"][:, k].clamp(0, 1)
        panels[f"{name}_depth"] = as_rgb(record["slot_depth"][:, k:k + 1]).clamp(0, 1)
        panels[f"{name}_mask"] = tint(mask[:, k:k + 1], k, columns)
        panels[f"{name}_position"] = tint(gauss[:, k:k + 1], k, columns)
    return panels


def loci_grid(panels: dict[str, torch.Tensor], size: tuple[int, int], columns: int) -> np.ndarray:
    """Compose ``step_panels`` into upstream's grid: (height, width, 3) uint8."""
    h, w = size
    g = grid_geometry(size, columns)
    canvas = Canvas(g["height"], g["width"])
    bottom = g["height"] - h - MARGIN
    for c, name in enumerate(("input_rgb", "input_depth", "segmentation")):
        canvas.paste(panels[name], MARGIN, MARGIN * (c + 1) + w * c)
    for c, name in enumerate(("output_rgb", "output_depth", "uncertainty")):
        canvas.paste(panels[name], bottom, MARGIN * (c + 1) + w * c)
    obj = (g["object_height"], g["object_width"])
    for k in range(columns):
        name = f"slot{k}" if k < columns - 1 else "bg"
        left = MARGIN + (g["object_width"] + GAP) * k
        for r, kind in enumerate(("rgb", "depth", "mask", "position")):
            top = h + MARGIN * 2 + r * (GAP + g["object_height"])
            canvas.paste(resize(panels[f"{name}_{kind}"], obj), top, left)
    return canvas.uint8()


def panel_images(panels: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The panels as uint8 (h, w, 3) arrays, for the individual files."""
    return {name: to_uint8(p) for name, p in panels.items()}
