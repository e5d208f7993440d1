"""The RGB decoder (reference §8.3): position, RGB gestalt, mask and depth -> slot colours in [0, 1]."""
from __future__ import annotations

import torch
from torch import nn

from .convnext import ConvNeXtBlock
from .depth_decoder import PATCH, POSITION_CHANNELS, check_decoder_inputs, masked_latent_codes
from .embedding import PositionEmbedding
from .patch_codecs import PatchDownscaleMLP, UpscaleMLP


class MaskDepthToRGBDecoder(nn.Module):
    """(position (N, k), g_rgb (N, G), mask (N, 1, H, W), depth (N, 1, H, W)) -> rgb (N, 3, H, W).

    Like :class:`~loci_fast.model.depth_decoder.MaskToDepthDecoder` with one more code,
    tanh(PatchDownscaleMLP(depth * mask)): G + mask + depth + 16 channels, a 1x1 convolution to
    ``rgb_channels``, ``num_layers`` ConvNeXt blocks, an x16 :class:`UpscaleMLP` to 3 channels and a
    sigmoid. (Upstream also builds a YCbCr-to-RGB module here that it never calls; we do not.)
    """

    def __init__(self, gestalt_size: int = 256, num_layers: int = 5, mask_channels: int = 32,
                 depth_channels: int = 64, rgb_channels: int = 128, expand_ratio: int = 4) -> None:
        super().__init__()
        self.gestalt_size = gestalt_size
        self.mask_encoder = nn.Sequential(
            PatchDownscaleMLP(1, mask_channels, expand_ratio=expand_ratio, scale_factor=PATCH), nn.Tanh())
        self.depth_encoder = nn.Sequential(
            PatchDownscaleMLP(1, depth_channels, expand_ratio=expand_ratio, scale_factor=PATCH), nn.Tanh())
        self.position_embedding = PositionEmbedding(8)
        in_channels = gestalt_size + depth_channels + mask_channels + POSITION_CHANNELS
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, rgb_channels, kernel_size=1),
            *[ConvNeXtBlock(rgb_channels) for _ in range(num_layers)],
        )
        self.rgb_upscale = nn.Sequential(
            UpscaleMLP(rgb_channels, 3, scale_factor=PATCH, expand_ratio=expand_ratio), nn.Sigmoid())

    def forward(self, position: torch.Tensor, gestalt: torch.Tensor, mask: torch.Tensor,
                depth: torch.Tensor) -> torch.Tensor:
        check_decoder_inputs("MaskDepthToRGBDecoder", position, gestalt, self.gestalt_size, mask, depth)
        plane, code, _ = masked_latent_codes(self.position_embedding, position, gestalt, mask)
        latent = torch.cat((plane, self.mask_encoder(mask), self.depth_encoder(depth * mask), code), dim=1)
        return self.rgb_upscale(self.layers(latent))
