"""The background's uncertainty estimator: a ConvNeXt U-Net on YCbCr(+D) giving a per-pixel
foreground probability u and a noised copy ũ = u + u(1 - u)·ε (reference §12.1).

Upstream draws ε on every call, in evaluation too, even where only u is used (§24.2c). That is the
default here (compat flag ``uncertainty_noise_in_eval``); with the flag off, evaluation returns u
twice and draws nothing. ``noise`` replaces the fresh draw, so a parity test can inject upstream's.
"""
from __future__ import annotations

import torch
from torch import nn

from ..color import RGB2YCbCr, RGBD2YCbCr
from ..unet import ConvNeXtUnet


def unet_blocks(num_layers: int) -> tuple[list[int], list[int]]:
    """Encoder and decoder block counts of the uncertainty U-Net for L transformer layers."""
    L = num_layers
    enc = [max(1, L // 4), max(1, L // 2), max(1, L), max(1, L // 2)]
    dec = [max(1, L // 8), max(1, L // 4), max(1, L), max(1, L // 4)]
    return enc, dec


class UncertaintyEstimator(nn.Module):
    """(B, 3|4, H, W) raw RGB(+depth) -> (u, ũ), each (B, 1, H, W); U-Net base = latent_channels / 4."""

    def __init__(self, latent_channels: int, num_layers: int, depth_input: bool = False, *,
                 noise_in_eval: bool = True):
        super().__init__()
        self.in_channels = 4 if depth_input else 3
        self.noise_in_eval = noise_in_eval
        self.to_ycbcr = RGBD2YCbCr() if depth_input else RGB2YCbCr()
        enc, dec = unet_blocks(num_layers)
        self.unet = ConvNeXtUnet(self.in_channels, 1, latent_channels // 4, enc, dec)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.sigmoid(self.unet(self.to_ycbcr(x)))
        if not self.training and not self.noise_in_eval:
            return u, u
        if noise is None:
            noise = torch.randn_like(u)
        elif noise.shape != u.shape:
            raise ValueError(f"noise: expected shape {tuple(u.shape)} (that of the uncertainty map), "
                             f"received {tuple(noise.shape)}")
        return u, u + u * (1 - u) * noise
