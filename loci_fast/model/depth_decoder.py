"""The depth decoder (reference §8.2): slot position, depth gestalt and mask -> relative depth."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .convnext import ConvNeXtBlock
from .embedding import PositionEmbedding
from .patch_codecs import PatchDownscaleMLP, UpscaleMLP

PATCH = 16  # the patch codecs' scale: full resolution = 16 x latent grid
POSITION_CHANNELS = 16  # PositionEmbedding(8): cos of x and y at 8 frequencies


def check_decoder_inputs(name: str, position: torch.Tensor, gestalt: torch.Tensor, gestalt_size: int,
                         mask: torch.Tensor, depth: torch.Tensor | None = None) -> None:
    """Shape checks shared by the depth and RGB decoders."""
    n = position.shape[0] if position.dim() == 2 else -1
    if position.dim() != 2 or not 2 <= position.shape[1] <= 4:
        raise ValueError(f"{name}: position must be (N, k) with k in 2..4, received {tuple(position.shape)}")
    if gestalt.shape != (n, gestalt_size):
        raise ValueError(f"{name}: gestalt must be ({n}, {gestalt_size}), received {tuple(gestalt.shape)}")
    for label, t in (("mask", mask), ("depth", depth)):
        if t is None:
            continue
        if t.dim() != 4 or t.shape[:2] != (n, 1) or t.shape[2] % PATCH or t.shape[3] % PATCH:
            raise ValueError(f"{name}: {label} must be ({n}, 1, H, W) with H and W multiples of {PATCH}, "
                             f"received {tuple(t.shape)}")
    if depth is not None and depth.shape != mask.shape:
        raise ValueError(f"{name}: depth {tuple(depth.shape)} and mask {tuple(mask.shape)} must match")


def masked_latent_codes(embedding: PositionEmbedding, position: torch.Tensor, gestalt: torch.Tensor,
                        mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mask-gated gestalt plane and position code on the latent grid, and the gate itself.

    gate = 16x16 max-pool of the mask (N, 1, h, w); gestalt plane = g * gate (N, G, h, w);
    position code = PositionEmbedding(position) * gate (N, 16, h, w).
    """
    gate = F.max_pool2d(mask, PATCH)
    plane = gestalt[:, :, None, None] * gate
    code = embedding(position, gate.shape[2:]) * gate
    return plane, code, gate


class MaskToDepthDecoder(nn.Module):
    """(position (N, k), g_depth (N, G), mask (N, 1, H, W) in [0, 1]) -> depth_raw (N, 1, H, W), unbounded.

    Concatenates [g * gate, tanh(PatchDownscaleMLP(mask)), position code * gate] on the latent
    grid (G + mask_channels + 16 channels), a 1x1 convolution to ``depth_channels``,
    ``num_layers`` ConvNeXt blocks, and an x16 :class:`UpscaleMLP`.
    """

    def __init__(self, gestalt_size: int = 256, num_layers: int = 3, mask_channels: int = 32,
                 depth_channels: int = 64, expand_ratio: int = 4) -> None:
        super().__init__()
        self.gestalt_size = gestalt_size
        self.mask_encoder = nn.Sequential(
            PatchDownscaleMLP(1, mask_channels, expand_ratio=expand_ratio, scale_factor=PATCH), nn.Tanh())
        self.position_embedding = PositionEmbedding(8)
        self.layers = nn.Sequential(
            nn.Conv2d(gestalt_size + mask_channels + POSITION_CHANNELS, depth_channels, kernel_size=1),
            *[ConvNeXtBlock(depth_channels) for _ in range(num_layers)],
        )
        self.depth_upscale = UpscaleMLP(depth_channels, 1, scale_factor=PATCH, expand_ratio=expand_ratio)

    def forward(self, position: torch.Tensor, gestalt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_decoder_inputs("MaskToDepthDecoder", position, gestalt, self.gestalt_size, mask)
        plane, code, _ = masked_latent_codes(self.position_embedding, position, gestalt, mask)
        latent = torch.cat((plane, self.mask_encoder(mask), code), dim=1)
        return self.depth_upscale(self.layers(latent))
