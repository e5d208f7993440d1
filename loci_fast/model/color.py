"""ITU-R BT.601 colour transforms between RGB and YCbCr (reference §1.4).

Y = 0.299 R + 0.587 G + 0.114 B; Cb and Cr are the scaled blue and red differences with a 0.5
offset, so RGB in [0, 1] maps into [0, 1]^3. The RGB loss of every stage works in YCbCr.
"""
from __future__ import annotations

import torch
from torch import nn

KR, KG, KB = 0.299, 0.587, 0.114


def _rgb_to_ycbcr_matrix() -> torch.Tensor:
    # rows: Y, Cb, Cr as functions of (R, G, B)
    return torch.tensor([
        [KR, KG, KB],
        [-0.5 * KR / (1 - KB), -0.5 * KG / (1 - KB), 0.5],
        [0.5, -0.5 * KG / (1 - KR), -0.5 * KB / (1 - KR)],
    ])


def _ycbcr_to_rgb_matrix() -> torch.Tensor:
    # rows: R, G, B as functions of (Y, Cb - 0.5, Cr - 0.5)
    return torch.tensor([
        [1.0, 0.0, 2 - 2 * KR],
        [1.0, -KB / KG * (2 - 2 * KB), -KR / KG * (2 - 2 * KR)],
        [1.0, 2 - 2 * KB, 0.0],
    ])


def _check_image(name: str, img: torch.Tensor, channels: int) -> None:
    if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] != channels:
        got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"{name}: expected an image batch of shape (B, {channels}, H, W), received {got}")


def _apply(matrix: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """Per-pixel 3x3 matrix product on an NCHW tensor, in the image's dtype."""
    return torch.einsum("oc,bchw->bohw", matrix.to(img.dtype), img)


class RGB2YCbCr(nn.Module):
    """(B, 3, H, W) RGB -> (B, 3, H, W) YCbCr (BT.601, chroma offset 0.5)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("matrix", _rgb_to_ycbcr_matrix(), persistent=False)
        self.register_buffer("shift", torch.tensor([0.0, 0.5, 0.5]), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        _check_image("RGB2YCbCr input", img, 3)
        return _apply(self.matrix, img) + self.shift.to(img.dtype).view(1, 3, 1, 1)


class RGBD2YCbCr(RGB2YCbCr):
    """(B, 4, H, W) RGB+depth -> YCbCr+depth; the depth channel passes through unchanged."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        _check_image("RGBD2YCbCr input", img, 4)
        return torch.cat((super().forward(img[:, :3]), img[:, 3:]), dim=1)


class YCbCr2RGB(nn.Module):
    """(B, 3, H, W) YCbCr -> RGB, clamped to [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("matrix", _ycbcr_to_rgb_matrix(), persistent=False)
        self.register_buffer("shift", torch.tensor([0.0, 0.5, 0.5]), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        _check_image("YCbCr2RGB input", img, 3)
        rgb = _apply(self.matrix, img - self.shift.to(img.dtype).view(1, 3, 1, 1))
        return rgb.clamp(0, 1)
