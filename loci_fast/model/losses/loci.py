"""The losses of one Loci-s training chunk (reference §16.3, §17.5), as functions of tensors.

Upstream keeps the regularisers' call counters and max-mask memories in the loss modules and clears
them with ``reset_state`` at a sequence start; here they are tensors in the slot state's ``extra``
(``position_loss.t``, ``position_loss.memory``, ``time_loss.t``, ``time_loss.memory``), so they travel
with the state through truncated-BPTT chunks and checkpoints. Each regulariser counts its calls (one per
prediction step) and returns 0 while the count is <= ``warmup`` (upstream's ``teacher_forcing``, 10).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .reconstruction import MaskedL1SSIMLoss, MaskedYCbCrL2SSIMLoss

POSITION_FACTOR = 0.01  # inside PositionLoss
TIME_FACTOR = 0.1  # Loci scales the translation-invariant object loss so
OBJECT_SHIFT = 2.5  # slot RGB compared as sigmoid(rgb - 2.5)

#: logged terms, named as upstream (without its "train_" prefix), ``loss`` being the total
RECONSTRUCTION_TERMS = ("rgb_loss", "depth_loss", "rgb_l1_loss", "depth_l1_loss", "rgb_ssim_loss",
                        "depth_ssim_loss")
TERMS = (tuple(f"reconstruction_{k}" for k in RECONSTRUCTION_TERMS)
         + tuple(f"prediction_{k}" for k in RECONSTRUCTION_TERMS)
         + ("position_loss", "object_loss", "time_loss"))


def rgb_loss_function(name: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Upstream's ``rgb_loss`` choice: "l1ssim" -> MaskedL1SSIM, anything else -> MaskedYCbCrL2SSIM."""
    return MaskedL1SSIMLoss() if name == "l1ssim" else MaskedYCbCrL2SSIMLoss()


def image_terms(rgb_loss, depth_loss, output_rgb: torch.Tensor, output_depth: torch.Tensor, rgb: torch.Tensor,
                depth: torch.Tensor, depth_mask: torch.Tensor, *, batch_scaled_rgb: bool = True
                ) -> dict[str, torch.Tensor]:
    """RGB and depth terms of one decode against frame (rgb, depth): (loss, l1, ssim) of each.

    ``batch_scaled_rgb`` reproduces quirk §24.7: upstream's all-ones RGB mask is shaped (B, 1, 1, H, W)
    and broadcasts against the (B, 1, H, W) maps, so the RGB terms are B times the image mean.
    """
    ones = torch.ones_like(rgb[:, :1])
    scale = rgb.shape[0] if batch_scaled_rgb else 1
    r_loss, r_l1, r_ssim = rgb_loss(output_rgb, rgb, ones)
    d_loss, d_l1, d_ssim = depth_loss(output_depth, depth, depth_mask)
    return {"rgb_loss": r_loss * scale, "rgb_l1_loss": r_l1 * scale, "rgb_ssim_loss": r_ssim * scale,
            "depth_loss": d_loss, "depth_l1_loss": d_l1, "depth_ssim_loss": d_ssim}


def _count(extra: dict[str, torch.Tensor], name: str, mask: torch.Tensor, warmup: int) -> torch.Tensor | None:
    """Advance regulariser ``name``'s counter and max-mask memory in ``extra``; the memory to weight the
    loss with, or None while the regulariser is still warming up."""
    t = extra.get(f"{name}.t")
    t = torch.ones((), dtype=torch.int64, device=mask.device) if t is None else t + 1
    memory = extra.get(f"{name}.memory")
    extra[f"{name}.t"] = t
    if memory is None or int(t) <= warmup:
        extra[f"{name}.memory"] = mask.detach()
        return None
    memory = torch.maximum(memory, mask).detach()
    extra[f"{name}.memory"] = memory
    return memory


def position_loss(position_next: torch.Tensor, position_last: torch.Tensor, mask_last: torch.Tensor,
                  extra: dict[str, torch.Tensor], num_slots: int, warmup: int) -> torch.Tensor:
    """Upstream's PositionLoss (§16.3): 0.01·mean(m·(q_next - q_last)²), q = (x, y, 0.25·σ(std)), m the
    running per-slot max of the last masks ``mask_last`` (B, O, H, W); updates ``extra``."""
    mask = mask_last.detach().amax(dim=(2, 3)).reshape(-1, 1)
    memory = _count(extra, "position_loss", mask, warmup)
    if memory is None:
        return position_next.new_zeros(())
    p = position_next.reshape(-1, 4)
    q = position_last.detach().reshape(-1, 4)
    p = torch.cat([p[:, :2], 0.25 * torch.sigmoid(p[:, 3:4])], dim=1)
    q = torch.cat([q[:, :2], 0.25 * torch.sigmoid(q[:, 3:4])], dim=1)
    return POSITION_FACTOR * torch.mean(memory * (p - q) ** 2)


def move_to_center(images: torch.Tensor, position: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Slot images (B, O·C, H, W) -> (B·O, C, H, W) translated so each slot's (x, y) lands at the centre
    (upstream's MoveToCenter: affine grid [[1, 0, x], [0, 1, y]], bilinear, zeros outside)."""
    b, oc, h, w = images.shape
    x = images.reshape(b * num_slots, oc // num_slots, h, w)
    xy = position.detach().reshape(b * num_slots, 4)[:, :2]
    theta = torch.zeros(b * num_slots, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = xy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def time_loss(mask_next: torch.Tensor, rgb_last: torch.Tensor, position_last: torch.Tensor, rgb_next: torch.Tensor,
              position_next: torch.Tensor, extra: dict[str, torch.Tensor], num_slots: int,
              warmup: int) -> torch.Tensor:
    """0.1 × upstream's TranslationInvariantObjectLoss (§16.3): mean(m·(c(σ(rgb_last-2.5)) - c(σ(rgb_next-2.5)))²)
    over the slots' centred images (B, O·3, H, W, background dropped), m the running per-slot max of the
    predicted masks ``mask_next`` (B, O, H, W); gradients reach ``rgb_next`` only. Updates ``extra``."""
    mask = mask_next.detach().reshape(-1, 1, *mask_next.shape[2:]).amax(dim=(2, 3), keepdim=True)
    memory = _count(extra, "time_loss", mask, warmup)
    if memory is None:
        return rgb_next.new_zeros(())
    a = move_to_center(torch.sigmoid(rgb_last.detach() - OBJECT_SHIFT), position_last, num_slots)
    b = move_to_center(torch.sigmoid(rgb_next - OBJECT_SHIFT), position_next, num_slots)
    return TIME_FACTOR * torch.mean(memory * (a - b) ** 2)


def binarization(gestalt: torch.Tensor, mask: torch.Tensor, num_slots: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upstream's gestalt statistics over used slots (mask max > 0.8): (binarisation mean, its std,
    mean of the clipped code, mean number of used slots per sample); ``mask`` (B, O, H, W)."""
    b = gestalt.shape[0]
    used = (mask.detach().amax(dim=(2, 3)) > 0.8).to(gestalt.dtype).reshape(b * num_slots, 1)
    count = used.reshape(b, num_slots).sum(1).mean()
    code = gestalt.detach().reshape(b * num_slots, -1)
    used = used.expand_as(code)
    dist = torch.minimum(code.abs(), (1 - code).abs())
    mean = (dist * used).sum() / (used.sum() + 1e-8)
    squared = (dist ** 2 * used).sum() / (used.sum() + 1e-8)
    return mean, torch.sqrt(torch.clamp(squared - mean ** 2, min=0)), code.clamp(0, 1).mean(), count


def total_loss(terms: dict[str, torch.Tensor], *, encoder_regularizer: float, position_regularizer: float,
               object_regularizer: float, time_regularizer: float) -> torch.Tensor:
    """Upstream's weighted sum (§17.5): prediction RGB + depth, encoder_regularizer × reconstruction RGB +
    depth, and the regularisers with their weights."""
    loss = terms["prediction_rgb_loss"] + terms["prediction_depth_loss"]
    loss = loss + (terms["reconstruction_rgb_loss"] + terms["reconstruction_depth_loss"]) * encoder_regularizer
    loss = loss + position_regularizer * terms["position_loss"]
    loss = loss + object_regularizer * terms["object_loss"]
    return loss + time_regularizer * terms["time_loss"]
