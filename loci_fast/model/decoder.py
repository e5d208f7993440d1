"""``LociDecoder`` (reference §8.4): slot latents (position, gestalt, priority) -> slot images.

Per slot a Gaussian at the position, optionally occluded by slots of higher priority, is weighted
by the mask gestalt and decoded to mask logits; depth and RGB are decoded from the *unoccluded*
mask. The Gaussian, the occlusion and the gestalt product are one fused op,
``loci_fast.kernels.slot_gaussian_merge``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from loci_fast import kernels as K

from .compat import resolve_compat
from .depth_decoder import PATCH, MaskToDepthDecoder
from .mask_decoder import MaskDecoder
from .rgb_decoder import MaskDepthToRGBDecoder

PRIORITY_SCALE = 250.0  # upstream's scale making the occlusion order nearly hard
PRIORITY_NOISE = 2.5  # std of upstream's priority noise (compat flag prioritize_noise, §24.2a)


def competitor_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """softmax([logits, 1])[0] = sigmoid(logits - 1): a mask against a constant-1 competitor (§24.1)."""
    return torch.sigmoid(logits - 1)


def to_batch(x: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Shared layout (B, O*c, ...) -> batch layout (B*O, c, ...); slot o of sample b is row b*O + o."""
    return x.reshape(x.shape[0] * num_slots, x.shape[1] // num_slots, *x.shape[2:])


def to_shared(x: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Batch layout (B*O, c, ...) -> shared layout (B, O*c, ...)."""
    return x.reshape(x.shape[0] // num_slots, x.shape[1] * num_slots, *x.shape[2:])


class LociDecoder(nn.Module):
    """Decodes O slots per sample into masks, RGB and depth at 16x the latent grid.

    ``forward(position (B, O*4), gestalt (B, O*(3G+1)), priority (B, O) or None, compute_raw,
    gt_depth, gt_mask)`` returns, in shared layout, ``mask`` (B, O, H, W) logits (occluded when a
    priority is given), ``rgb`` (B, 3*O, H, W) in [0, 1], ``depth`` (B, O, H, W) = z + depth_raw *
    z_scale, ``mask_raw`` (B, O, H, W) unoccluded logits (= mask unless priority and
    ``compute_raw``) and ``depth_raw`` (B, O, H, W). ``gt_mask`` (B, O, H, W) replaces the decoded
    mask that conditions depth and RGB, ``gt_depth`` (B, O, H, W) the decoded depth_raw that
    conditions RGB (pretraining stage 1).
    """

    def __init__(self, latent_size, gestalt_size: int, num_slots: int, mask_decoder: nn.Module,
                 depth_decoder: nn.Module, rgb_decoder: nn.Module, *, prioritize_noise: bool = True) -> None:
        super().__init__()
        self.latent_size = tuple(int(s) for s in latent_size)
        self.gestalt_size = gestalt_size
        self.num_slots = num_slots
        self.prioritize_noise = prioritize_noise
        self.to_mask = mask_decoder
        self.to_depth = depth_decoder
        self.to_rgb = rgb_decoder

    @classmethod
    def from_config(cls, model_cfg: Any, num_slots: int | None = None) -> "LociDecoder":
        """Build from the ``model`` section of a config (upstream keys, §21); ``num_slots`` overrides."""
        size = model_cfg["input_size"]
        latent = (int(size[0]) // PATCH, int(size[1]) // PATCH)
        g = int(model_cfg["gestalt_size"])
        emb, dec = model_cfg["embedding"], model_cfg["decoder"]
        mask_ch, depth_ch, rgb_ch = (int(emb[k]["channels"]) for k in ("mask", "depth", "rgb"))
        return cls(
            latent, g, int(num_slots if num_slots is not None else model_cfg["num_slots"]),
            MaskDecoder(g, mask_ch, int(emb["mask"]["expansion"])),
            MaskToDepthDecoder(g, int(dec["depth"]["layers"]), mask_ch, depth_ch, int(emb["depth"]["expansion"])),
            MaskDepthToRGBDecoder(g, int(dec["rgb"]["layers"]), mask_ch, depth_ch, rgb_ch,
                                  int(emb["rgb"]["expansion"])),
            prioritize_noise=resolve_compat(model_cfg)["prioritize_noise"],
        )

    def _check(self, position: torch.Tensor, gestalt: torch.Tensor, priority: torch.Tensor | None) -> int:
        o, g = self.num_slots, self.gestalt_size
        if position.dim() != 2 or position.shape[1] != 4 * o:
            raise ValueError(f"LociDecoder: position must be (B, {4 * o}) = (B, num_slots * 4), "
                             f"received {tuple(position.shape)}")
        b = position.shape[0]
        if gestalt.shape != (b, o * (3 * g + 1)):
            raise ValueError(f"LociDecoder: gestalt must be ({b}, {o * (3 * g + 1)}) = (B, num_slots * "
                             f"(3 * gestalt_size + 1)), received {tuple(gestalt.shape)}")
        if priority is not None and priority.shape != (b, o):
            raise ValueError(f"LociDecoder: priority must be ({b}, {o}), received {tuple(priority.shape)}")
        return b

    def _ground_truth(self, name: str, t: torch.Tensor | None, b: int) -> torch.Tensor | None:
        if t is None:
            return None
        h, w = (s * PATCH for s in self.latent_size)
        if t.shape != (b, self.num_slots, h, w):
            raise ValueError(f"LociDecoder: {name} must be ({b}, {self.num_slots}, {h}, {w}) in shared "
                             f"layout, received {tuple(t.shape)}")
        return to_batch(t, self.num_slots)

    def forward(self, position: torch.Tensor, gestalt: torch.Tensor, priority: torch.Tensor | None = None,
                compute_raw: bool = False, gt_depth: torch.Tensor | None = None,
                gt_mask: torch.Tensor | None = None):
        b = self._check(position, gestalt, priority)
        o, g = self.num_slots, self.gestalt_size
        position = position.reshape(b * o, 4)
        gestalt = gestalt.reshape(b * o, 3 * g + 1)
        mask_code, depth_code, rgb_code = gestalt[:, :g], gestalt[:, g:2 * g], gestalt[:, 2 * g:3 * g]
        z_scale = gestalt[:, -1].view(-1, 1, 1, 1)
        z = position[:, 2].view(-1, 1, 1, 1)

        if priority is not None:
            priority = priority * PRIORITY_SCALE
            if self.prioritize_noise:
                priority = priority + torch.randn_like(priority) * PRIORITY_NOISE
        with_raw = priority is not None and compute_raw
        latent = K.slot_gaussian_merge(position, mask_code, priority, size=self.latent_size, num_slots=o,
                                       with_raw=with_raw)
        mask = self.to_mask(latent)
        mask_raw = mask
        if with_raw:
            mask_raw, mask = mask.chunk(2)

        gt_mask = self._ground_truth("gt_mask", gt_mask, b)
        gt_depth = self._ground_truth("gt_depth", gt_depth, b)
        mask_in = competitor_sigmoid(mask_raw) if gt_mask is None else gt_mask
        depth_raw = self.to_depth(position, depth_code, mask_in)
        depth = z + depth_raw * z_scale
        rgb = self.to_rgb(position, rgb_code, mask_in, depth_raw if gt_depth is None else gt_depth)

        return (to_shared(mask, o), to_shared(rgb, o), to_shared(depth, o), to_shared(mask_raw, o),
                to_shared(depth_raw, o))
