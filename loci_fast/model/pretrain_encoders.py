"""The per-modality autoencoders of the decoder pretraining stages (reference §15.1).

Each one encodes a single object's mask, depth or RGB into a binary gestalt code with its own
ConvNeXt encoder, and decodes it with the decoder that ``LociDecoder`` later reuses
(``to_mask``/``to_depth``/``to_rgb``). The slot position is the mask's centroid and area-std
(x, y, std), so only the gestalt is learnt.
"""
from __future__ import annotations

import torch
from torch import nn

from loci_fast import kernels as K

from .binarize import Binarize
from .convnext import ConvNeXtBlock, PatchDownscale
from .depth_decoder import PATCH, MaskToDepthDecoder
from .embedding import PositionPooling
from .mask_center import MaskCenter
from .mask_decoder import MaskDecoder
from .patch_codecs import PatchDownscaleMLP
from .rgb_decoder import MaskDepthToRGBDecoder


def patch_embedding(in_channels: int, channels: int, expand_ratio: int) -> nn.Sequential:
    """tanh(PatchDownscaleMLP(x16)): (N, in, H, W) -> (N, channels, H/16, W/16) in (-1, 1)."""
    return nn.Sequential(PatchDownscaleMLP(in_channels, channels, expand_ratio=expand_ratio, scale_factor=PATCH),
                         nn.Tanh())


class GestaltEncoder(nn.Module):
    """Patch embedding -> ConvNeXt (x16 then x32 grid) -> Gaussian pooling at a position -> Binarize.

    Layout with E = ``encoder_channels``: ConvNeXtBlock(emb -> E), ``blocks[0]`` x ConvNeXtBlock(E),
    PatchDownscale(E -> 2E, k2), ``blocks[1]`` x ConvNeXtBlock(2E), ConvNeXtBlock(2E -> max(G, 2E)),
    PositionPooling on the H/32 x W/32 grid (max(G, 2E) -> G), Binarize. Returns (N, G).
    """

    def __init__(self, size, in_channels: int, embedding_channels: int, expand_ratio: int, gestalt_size: int,
                 blocks, encoder_channels: int) -> None:
        super().__init__()
        e, top = encoder_channels, max(gestalt_size, 2 * encoder_channels)
        self.embedding = patch_embedding(in_channels, embedding_channels, expand_ratio)
        self.encoder = nn.Sequential(
            ConvNeXtBlock(embedding_channels, e),
            *[ConvNeXtBlock(e) for _ in range(blocks[0])],
            PatchDownscale(e, 2 * e, kernel_size=2),
            *[ConvNeXtBlock(2 * e) for _ in range(blocks[1])],
            ConvNeXtBlock(2 * e, top),
        )
        self.pool = PositionPooling((size[0] // (2 * PATCH), size[1] // (2 * PATCH)), top, gestalt_size)
        self.binarize = Binarize()

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.binarize(self.pool(self.encoder(self.embedding(x)), position))


def _check_size(size) -> tuple[int, int]:
    h, w = (int(s) for s in size)
    # x16 patches, then a x2 downscale, and a pooling grid of at least 2x2 (a 1-pixel Gaus2D grid is 0/0).
    if h % (2 * PATCH) or w % (2 * PATCH) or min(h, w) < 4 * PATCH:
        raise ValueError(f"input_size: expected H and W multiples of {2 * PATCH} and at least {4 * PATCH}, "
                         f"received {h}x{w}")
    return h, w


def _check_mask(name: str, mask: torch.Tensor, size: tuple[int, int], channels: int = 1) -> None:
    if mask.dim() != 4 or mask.shape[1] != channels or tuple(mask.shape[2:]) != size:
        raise ValueError(f"{name}: expected shape (N, {channels}, {size[0]}, {size[1]}), "
                         f"received {tuple(mask.shape)}")


class MaskPretrainer(nn.Module):
    """Mask autoencoder: binary mask (N, 1, H, W) -> (mask logits (N, 1, H, W), gestalt (N, G), position (N, 3)).

    Decoding: :class:`MaskDecoder` of the gestalt times a Gaussian at the mask centroid on the
    latent grid (one ``slot_gaussian_merge`` call).
    """

    def __init__(self, size, gestalt_size: int = 256, mask_channels: int = 32, encoder_blocks=(2, 4),
                 encoder_channels: int = 256, expand_ratio: int = 4) -> None:
        super().__init__()
        self.size = _check_size(size)
        self.latent_size = (self.size[0] // PATCH, self.size[1] // PATCH)
        self.mask_center = MaskCenter(self.size, combine=True)
        self.encoder = GestaltEncoder(self.size, 1, mask_channels, expand_ratio, gestalt_size, encoder_blocks,
                                      encoder_channels)
        self.decoder = MaskDecoder(gestalt_size, mask_channels, expand_ratio)

    def decode(self, gestalt: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        latent = K.slot_gaussian_merge(position, gestalt, None, size=self.latent_size, num_slots=1)
        return self.decoder(latent)

    def forward(self, mask: torch.Tensor):
        _check_mask("MaskPretrainer mask", mask, self.size)
        position = self.mask_center(mask)
        gestalt = self.encoder(mask, position)
        return self.decode(gestalt, position), gestalt, position


class DepthPretrainer(nn.Module):
    """Depth autoencoder: (mask, normalised depth) (N, 1, H, W) each -> (depth_raw, gestalt, position).

    Encodes depth * mask; decodes with :class:`MaskToDepthDecoder` conditioned on the given mask.
    """

    def __init__(self, size, gestalt_size: int = 256, num_layers: int = 3, mask_channels: int = 32,
                 depth_channels: int = 64, encoder_blocks=(2, 4), encoder_channels: int = 256,
                 expand_ratio: int = 4) -> None:
        super().__init__()
        self.size = _check_size(size)
        self.mask_center = MaskCenter(self.size, combine=True)
        self.encoder = GestaltEncoder(self.size, 1, depth_channels, expand_ratio, gestalt_size, encoder_blocks,
                                      encoder_channels)
        self.decoder = MaskToDepthDecoder(gestalt_size, num_layers, mask_channels, depth_channels, expand_ratio)

    def forward(self, mask: torch.Tensor, depth: torch.Tensor):
        _check_mask("DepthPretrainer mask", mask, self.size)
        _check_mask("DepthPretrainer depth", depth, self.size)
        position = self.mask_center(mask)
        gestalt = self.encoder(depth * mask, position)
        return self.decoder(position, gestalt, mask), gestalt, position


class RGBPretrainer(nn.Module):
    """RGB autoencoder: (mask, normalised depth, rgb * mask) -> (rgb (N, 3, H, W), gestalt, position).

    Encodes rgb * mask; decodes with :class:`MaskDepthToRGBDecoder` conditioned on mask and depth.
    """

    def __init__(self, size, gestalt_size: int = 256, num_layers: int = 5, mask_channels: int = 32,
                 depth_channels: int = 64, rgb_channels: int = 128, encoder_blocks=(4, 8),
                 encoder_channels: int = 256, expand_ratio: int = 4) -> None:
        super().__init__()
        self.size = _check_size(size)
        self.mask_center = MaskCenter(self.size, combine=True)
        self.encoder = GestaltEncoder(self.size, 3, rgb_channels, expand_ratio, gestalt_size, encoder_blocks,
                                      encoder_channels)
        self.decoder = MaskDepthToRGBDecoder(gestalt_size, num_layers, mask_channels, depth_channels, rgb_channels,
                                             expand_ratio)

    def forward(self, mask: torch.Tensor, depth: torch.Tensor, rgb: torch.Tensor):
        _check_mask("RGBPretrainer mask", mask, self.size)
        _check_mask("RGBPretrainer depth", depth, self.size)
        _check_mask("RGBPretrainer rgb", rgb, self.size, 3)
        position = self.mask_center(mask)
        gestalt = self.encoder(rgb * mask, position)
        return self.decoder(position, gestalt, mask, depth), gestalt, position
