"""Losses of the background stage (reference §17.4), as functions of the batch and the module's outputs.

The batch is a dict of the frame-pairs view (``loci_fast.data.views.frame_pairs``), batched:
``{source,target}_{rgb,depth,fg}`` (B, 3|1|1, H, W), ``dt`` (B,), ``use_depth``, ``use_fg`` (B,)
bools, and the per-file loss settings ``uncertainty_regularizer``, ``depth_weighting``,
``rgb_loss_factor``, ``rgb_warmup``, ``depth_warmup``, ``color_input`` (B,). Term names are
upstream's logged names (without the ``train_``/``val_`` prefix).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

#: batch keys the background losses read, beyond the frames
PER_FILE_KEYS = ("uncertainty_regularizer", "depth_weighting", "rgb_loss_factor", "rgb_warmup", "depth_warmup",
                 "color_input")
FRAME_KEYS = tuple(f"{s}_{k}" for s in ("source", "target") for k in ("rgb", "depth", "fg"))
BATCH_KEYS = FRAME_KEYS + ("dt", "use_depth", "use_fg") + PER_FILE_KEYS
#: the logged terms, upstream's names
TERMS = ("rgb_l2", "rgb_ssim", "rgb_loss", "depth_loss", "loss", "uncertainty", "prediction_mask",
         "supervised_uncertainty_loss", "unsupervised_uncertainty_loss", "depth_context_bin_mean",
         "depth_context_bin_std", "depth_context_mean")


def check_batch(batch: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError naming every batch key the background losses need and do not find."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"background batch: missing keys {', '.join(missing)} (the frame-pairs view with "
                         "per-file loss settings provides them; see loci_fast.data.views.frame_pairs)")


def loss_factors(batch: Mapping[str, torch.Tensor], global_step: int) -> dict[str, torch.Tensor]:
    """Per-sample (B, 1, 1, 1) factors of §17.4: use_depth, use_fg, lambda_u, f_rgb, the warm-ups,
    colour input, the depth weight w_d and the depth mask [D_t >= 0]."""
    dtype = batch["target_rgb"].dtype
    col = lambda k: batch[k].reshape(-1, 1, 1, 1).to(dtype)  # noqa: E731
    use_depth, depth_weighting = col("use_depth"), col("depth_weighting")
    rgb_wu = (batch["rgb_warmup"].reshape(-1, 1, 1, 1) > global_step).to(dtype)
    depth_wu = (batch["depth_warmup"].reshape(-1, 1, 1, 1) > global_step).to(dtype)
    target_depth = batch["target_depth"]
    return {
        "use_depth": use_depth,
        "use_fg": col("use_fg"),
        "uncertainty_regularizer": col("uncertainty_regularizer"),
        "rgb_loss_factor": col("rgb_loss_factor") * use_depth + (1 - use_depth),
        "rgb_warmup": rgb_wu,
        "depth_warmup": depth_wu,
        "warmup": torch.maximum(rgb_wu, depth_wu),
        "color_input": col("color_input"),
        "depth_weight": torch.clip(target_depth, 0.1, 1) * use_depth * depth_weighting
        + use_depth * (1 - depth_weighting),
        "depth_mask": (target_depth >= 0).to(dtype),
    }


def supervised_uncertainty_loss(u_source: torch.Tensor, u_target: torch.Tensor, fg_source: torch.Tensor,
                                fg_target: torch.Tensor, supervision_factor: float) -> torch.Tensor:
    """factor·(MSE(u_s, [fg_s > 0.5]) + MSE(u_t, [fg_t > 0.5])), whole-batch means (a scalar)."""
    return (F.mse_loss(u_source, (fg_source > 0.5).to(u_source.dtype))
            + F.mse_loss(u_target, (fg_target > 0.5).to(u_target.dtype))) * supervision_factor


def unsupervised_uncertainty_loss(u_noised: torch.Tensor, rgb: torch.Tensor, depth: torch.Tensor,
                                  batch: Mapping[str, torch.Tensor], f: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per sample (B, 1, 1, 1): λ_u·mean|ũ_t| + mean(w_d·|D^ - D_t|·(1 - ũ_t)) + f_rgb·mean(|RGB^ - RGB_t|·(1 - ũ_t));
    the reconstruction errors are detached, so only ũ_t gets these gradients."""
    dims = (1, 2, 3)
    depth_err = torch.abs(depth - batch["target_depth"]).detach()
    rgb_err = torch.abs(rgb - batch["target_rgb"]).detach()
    return (f["uncertainty_regularizer"] * torch.mean(torch.abs(u_noised), dim=dims, keepdim=True)
            + torch.mean(f["depth_weight"] * depth_err * (1 - u_noised), dim=dims, keepdim=True)
            + f["rgb_loss_factor"] * torch.mean(rgb_err * (1 - u_noised), dim=dims, keepdim=True))


def loss_region(u_target: torch.Tensor, fg_target: torch.Tensor, f: Mapping[str, torch.Tensor],
                threshold: float) -> torch.Tensor:
    """[u_t < thr] for samples without fg masks, [fg_t < thr] with them; the whole image in warm-up."""
    region = (u_target < threshold).to(u_target.dtype).detach()
    region = region * (1 - f["use_fg"]) + f["use_fg"] * (fg_target < threshold).to(u_target.dtype)
    return region * (1 - f["warmup"]) + f["warmup"]


def binarization_stats(context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, std of min(|c|, |1 - c|), mean of c): how far the depth context is from binary."""
    b = torch.minimum(torch.abs(context), torch.abs(1 - context)).detach()
    return b.mean(), b.std(), context.mean()


def background_loss_terms(*, rgb: torch.Tensor, depth: torch.Tensor, depth_context: torch.Tensor,
                          u_source: torch.Tensor, u_target: torch.Tensor, u_target_noised: torch.Tensor,
                          batch: Mapping[str, torch.Tensor], factors: Mapping[str, torch.Tensor],
                          rgb_loss, context_loss, uncertainty_threshold: float,
                          supervision_factor: float) -> dict[str, torch.Tensor]:
    """All loss terms of one background step (§17.4, items 2-8), upstream-named; ``loss`` is the total.

    ``rgb_loss`` is a MaskedYCbCrL2SSIMLoss, ``context_loss`` a GestaltLoss (its counter advances).
    Also returns ``uncertainty_loss`` and the loss ``region`` (B, 1, H, W) for pictures.
    """
    f = factors
    supervised = supervised_uncertainty_loss(u_source, u_target, batch["source_fg"], batch["target_fg"],
                                             supervision_factor)
    unsupervised = unsupervised_uncertainty_loss(u_target_noised, rgb, depth, batch, f)
    uncertainty_loss = torch.mean(supervised * f["use_fg"] + unsupervised * (1 - f["use_fg"]))
    region = loss_region(u_target, batch["target_fg"], f, uncertainty_threshold)
    depth_loss = torch.mean(torch.abs(depth - batch["target_depth"]) * region * f["depth_mask"])
    rgb_term, l2, ssim = rgb_loss(rgb, batch["target_rgb"], region * (1 - f["depth_warmup"]))
    loss = uncertainty_loss + depth_loss + rgb_term + context_loss(depth_context)
    bin_mean, bin_std, ctx_mean = binarization_stats(depth_context)
    return {
        "loss": loss, "uncertainty_loss": uncertainty_loss, "rgb_loss": rgb_term, "rgb_l2": l2, "rgb_ssim": ssim,
        "depth_loss": depth_loss, "uncertainty": torch.mean(u_target).detach(),
        "prediction_mask": torch.mean(region).detach(),
        "supervised_uncertainty_loss": torch.mean(supervised * f["use_fg"]),
        "unsupervised_uncertainty_loss": torch.mean(unsupervised * (1 - f["use_fg"])),
        "depth_context_bin_mean": bin_mean, "depth_context_bin_std": bin_std, "depth_context_mean": ctx_mean,
        "region": region,
    }
