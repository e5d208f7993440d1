"""The original Loci's encoder (reference loci.md §2.5): 12 per-slot input channels, an alpha-gated
down-convolution stem per level, then position (soft-argmax), size, priority and gestalt heads."""
from __future__ import annotations

import torch
from torch import nn

from .geometry import axis_grid, gaussian_maps, others_sum, prioritize
from .residual import ForcedAlpha, ResidualBlock, channel_skip, mean_pool

#: 3 frame + error + own mask + others' masks + background mask + 3 own appearance + own and others' Gaussians
INPUT_CHANNELS = 12


def encoder_input(frame: torch.Tensor, error: torch.Tensor, mask: torch.Tensor, appearance: torch.Tensor,
                  position: torch.Tensor, priority: torch.Tensor, num_objects: int) -> torch.Tensor:
    """(B·O, 12, H, W) per-slot input. Masks, positions and priorities are detached; the own-appearance
    channels (raw RGB logits of the slot decoded without priority) are not (upstream's gradient path into
    the decoder and the slot seeder, §11.15)."""
    b, _, h, w = frame.shape
    o = num_objects
    mask, position, priority = mask.detach(), position.detach(), priority.detach()
    own_mask = mask[:, :-1]
    gauss = gaussian_maps(position.reshape(b * o, 3), (h, w)).view(b, o, h, w)
    parts = (frame[:, None].expand(b, o, 3, h, w),
             error[:, None].expand(b, o, 1, h, w),
             own_mask[:, :, None],
             others_sum(own_mask)[:, :, None],
             mask[:, -1:, None].expand(b, o, 1, h, w),
             appearance.view(b, o, 3, h, w),
             gauss[:, :, None],
             others_sum(prioritize(gauss, priority))[:, :, None])
    return torch.cat(parts, dim=2).reshape(b * o, INPUT_CHANNELS, h, w)


class AggressiveDownConv(nn.Module):
    """4× down: exact 4×4 mean pool with channels repeated, + α·(conv 11×11/4 → ReLU → conv 3×3), α = 1e-12."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % in_channels:
            raise ValueError(f"AggressiveDownConv {in_channels} -> {out_channels}: the output channels must be a "
                             "multiple of the input channels (encoder level1_channels a multiple of 12, channels "
                             "a multiple of level1_channels)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.layers = nn.Sequential(nn.Conv2d(in_channels, out_channels, 11, stride=4, padding=5), nn.ReLU(),
                                    nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.alpha = nn.Parameter(torch.zeros(1) + 1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = channel_skip(mean_pool(x, 4), self.in_channels, self.out_channels)
        return skip + self.alpha * self.layers(x)


class AggressiveConvTo1x1(nn.Module):
    """(h, w) -> 1×1: global mean with channels repeated, + α·(conv 5×5/3 → ReLU → conv to 1×1), α = 1e-12."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.in_channels, self.factor = in_channels, out_channels // in_channels
        kernel = ((size[0] + 1) // 3 + 1, (size[1] + 1) // 3 + 1)
        self.layers = nn.Sequential(nn.Conv2d(in_channels, in_channels, 5, stride=3, padding=3), nn.ReLU(),
                                    nn.Conv2d(in_channels, out_channels, kernel))
        self.alpha = nn.Parameter(torch.zeros(1) + 1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x.mean(dim=(2, 3), keepdim=True).repeat_interleave(self.factor, dim=1)
        return skip + self.alpha * self.layers(x)


class PixelToSTD(nn.Module):
    """Size head: mean over pixels of σ(c - 10), times a ForcedAlpha ramp (0 at init)."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = ForcedAlpha()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha(torch.sigmoid(x - 10).mean(dim=(2, 3)))


def pixel_to_position(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) -> (N, 2) soft-argmax: expected (row, col) under a softmax over all cells."""
    n, _, h, w = x.shape
    p = torch.softmax(x.reshape(n, 1, h * w), dim=2).view(n, 1, h, w)
    row = (p * axis_grid(h, x).view(1, 1, h, 1)).sum(dim=(2, 3))
    col = (p * axis_grid(w, x).view(1, 1, 1, w)).sum(dim=(2, 3))
    return torch.cat((row, col), dim=1)


class LociV1Encoder(nn.Module):
    """Per-slot encoder: ``forward(frame, error, mask, appearance, position, priority) -> (P, G, Q)`` in
    shared layout (B, O·3), (B, O·G), (B, O). ``level`` 0/1/2 picks the input resolution input/16,
    input/4, input; the same modules exist at every level so checkpoints move between stages."""

    def __init__(self, input_size: tuple[int, int], latent_size: tuple[int, int], num_objects: int,
                 hidden_channels: int, level1_channels: int, num_layers: int, gestalt_size: int,
                 level: int = 1) -> None:
        super().__init__()
        self.num_objects, self.level = num_objects, level
        self.input_size, self.latent_size = tuple(input_size), tuple(latent_size)
        self.hidden_channels, self.level1_channels = hidden_channels, level1_channels
        c, c1, n = hidden_channels, level1_channels, num_layers
        self.layers2 = nn.Sequential(AggressiveDownConv(INPUT_CHANNELS, c1),
                                     *[ResidualBlock(c1, c1, alpha_residual=True) for _ in range(n)])
        self.layers1 = nn.Sequential(AggressiveDownConv(c1, c))
        self.layers0 = nn.Sequential(*[ResidualBlock(c, c) for _ in range(n)])
        self.position_encoder = nn.Sequential(*[ResidualBlock(c, c) for _ in range(n)], ResidualBlock(c, 3))
        self.std_encoder = PixelToSTD()
        gc = max(c, gestalt_size)
        self.gestalt_encoder = nn.Sequential(AggressiveConvTo1x1(c, gc, latent_size),
                                             *[ResidualBlock(gc, gc, kernel_size=1) for _ in range(n)],
                                             ResidualBlock(gc, gestalt_size, kernel_size=1), nn.Flatten(1))

    def forward(self, frame, error, mask, appearance, position, priority):
        x = encoder_input(frame, error, mask, appearance, position, priority, self.num_objects)
        width = (self.hidden_channels, self.level1_channels, INPUT_CHANNELS)[self.level]
        x = channel_skip(x, INPUT_CHANNELS, width)
        if self.level >= 2:
            x = self.layers2(x)
        if self.level >= 1:
            x = self.layers1(x)
        x = self.layers0(x)
        gestalt = self.gestalt_encoder(x)
        heads = self.position_encoder(x)
        std = self.std_encoder(heads[:, 0:1])
        xy = pixel_to_position(heads[:, 1:2])
        prio = torch.tanh(heads[:, 2:3]).mean(dim=(2, 3))
        b = frame.shape[0]
        return torch.cat((xy, std), 1).reshape(b, -1), gestalt.reshape(b, -1), prio.reshape(b, -1)
