"""The original Loci's decoder (reference loci.md §2.9): Gaussian × gestalt at the latent grid, a
residual trunk, and mask / RGB heads that upsample 4× per level with nearest skips and gated
transposed-convolution residuals."""
from __future__ import annotations

import torch
from torch import nn

from .geometry import gaussian_maps, prioritize
from .residual import ResidualBlock, channel_skip, upsample_nearest


class AggressiveUpConv(nn.Module):
    """4× up: channel-mean + nearest skip, + α·(ReLU → conv 3×3 → ReLU → ConvTranspose 12×12/4)."""

    def __init__(self, in_channels: int, out_channels: int, alpha: float = 1e-16) -> None:
        super().__init__()
        if in_channels % out_channels:
            raise ValueError(f"AggressiveUpConv {in_channels} -> {out_channels}: the input channels must be a "
                             "multiple of the output channels (decoder channels a multiple of 12 and of "
                             "level1_channels, level1_channels a multiple of 3)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.layers = nn.Sequential(nn.ReLU(), nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(),
                                    nn.ConvTranspose2d(in_channels, out_channels, 12, stride=4, padding=4))
        self.alpha = nn.Parameter(torch.zeros(1) + alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = upsample_nearest(channel_skip(x, self.in_channels, self.out_channels), 4)
        return skip + self.alpha * self.layers(x)


def merge_gestalt_position(position: torch.Tensor, gestalt: torch.Tensor, priority: torch.Tensor | None,
                           latent_size: tuple[int, int], num_objects: int) -> torch.Tensor:
    """(B, O·3), (B, O·G), (B, O) or None -> (B·O, G, h, w): each slot's (prioritised) Gaussian at the
    latent grid times its gestalt vector."""
    b, o = position.shape[0], num_objects
    g = gestalt.shape[1] // o
    maps = gaussian_maps(position.reshape(b * o, 3), latent_size).view(b, o, *latent_size)
    maps = prioritize(maps, priority).reshape(b * o, 1, *latent_size)
    return maps * gestalt.reshape(b * o, g, 1, 1)


class LociV1Decoder(nn.Module):
    """``forward(position, gestalt, priority=None) -> (mask logits (B, O, H, W), RGB logits (B, 3·O, H, W))``
    at level 1 (input/4) or 2 (input)."""

    def __init__(self, latent_size: tuple[int, int], num_objects: int, gestalt_size: int, hidden_channels: int,
                 level1_channels: int, num_layers: int, level: int = 1, img_channels: int = 3) -> None:
        super().__init__()
        if level1_channels % img_channels:
            raise ValueError(f"decoder level1_channels ({level1_channels}) must be a multiple of {img_channels}")
        self.latent_size, self.num_objects, self.level = tuple(latent_size), num_objects, level
        self.img_channels, self.level1_channels = img_channels, level1_channels
        self.level1_factor = level1_channels // img_channels
        c = hidden_channels
        self.layer0 = nn.Sequential(ResidualBlock(gestalt_size, c, input_nonlinearity=False),
                                    *[ResidualBlock(c, c) for _ in range(num_layers - 1)])
        self.to_mask_level0 = ResidualBlock(c, c)
        self.to_mask_level1 = AggressiveUpConv(c, self.level1_factor)
        self.to_mask_level2 = nn.Sequential(ResidualBlock(c, c), ResidualBlock(c, c),
                                            AggressiveUpConv(c, 4, alpha=1), AggressiveUpConv(4, 1, alpha=1))
        self.to_object_level0 = ResidualBlock(c, c)
        self.to_object_level1 = AggressiveUpConv(c, level1_channels)
        self.to_object_level2 = nn.Sequential(ResidualBlock(c, c), ResidualBlock(c, c),
                                              AggressiveUpConv(c, 12, alpha=1), AggressiveUpConv(12, img_channels, alpha=1))
        self.mask_alpha = nn.Parameter(torch.zeros(1) + 1e-16)
        self.object_alpha = nn.Parameter(torch.zeros(1) + 1e-16)

    def forward(self, position, gestalt, priority=None):
        if self.level not in (1, 2):
            raise ValueError(f"LociV1Decoder level {self.level}: only levels 1 and 2 exist (upstream has no level 0)")
        maps = self.layer0(merge_gestalt_position(position, gestalt, priority, self.latent_size, self.num_objects))
        mask0, object0 = self.to_mask_level0(maps), self.to_object_level0(maps)
        mask, rgb = self.to_mask_level1(mask0), self.to_object_level1(object0)
        if self.level > 1:
            mask = upsample_nearest(mask, 4) + self.to_mask_level2(mask0) * self.mask_alpha
            rgb = upsample_nearest(rgb, 4) + self.to_object_level2(object0) * self.object_alpha
            mask_in, rgb_in = 1, self.img_channels
        else:
            mask_in, rgb_in = self.level1_factor, self.level1_channels
        mask = channel_skip(mask, mask_in, 1)
        rgb = channel_skip(rgb, rgb_in, self.img_channels)
        b = position.shape[0]
        return mask.reshape(b, -1, *mask.shape[2:]), rgb.reshape(b, -1, *rgb.shape[2:])
