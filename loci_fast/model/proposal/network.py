"""``PositionProposal``: the proposal U-Net with its per-pixel position head and hypernetwork mask head.

Reference §13.1. A patch-embedding ConvNeXt encoder (1/4, 1/8, 1/16, 1/32 of the input, base·(1, 2,
4, 8) channels) feeds a decoder with skip merges back to full resolution and 2N channels. A 1×1
convolution regresses five numbers per pixel (x, y, z, std, std_z); a small MLP on the mean of the
deepest features generates an (N, 2N) matrix per sample that mixes the 2N decoder channels into N
mask logits. Quirk §24.5 is reproduced (it fixes upstream's parameter layout): decoder stage 0 has
``decoder_blocks[3]`` blocks and stages 1-3 all have ``decoder_blocks[1]``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..convnext import ConvNeXtBlock, _check_4d
from ..patch_codecs import PatchDownscaleMLP, UpscaleMLP


def _check_blocks(name: str, blocks: Sequence[int], positive: tuple[int, ...]) -> list[int]:
    blocks = [int(b) for b in blocks]
    if len(blocks) != 4 or any(b < 0 for b in blocks):
        raise ValueError(f"PositionProposal: {name} needs 4 counts >= 0, received {blocks}")
    zero = [i for i in positive if blocks[i] < 1]
    if zero:
        raise ValueError(f"PositionProposal: {name}[{zero[0]}] must be >= 1 (a level without blocks would skip "
                         f"its channel change and the U-Net could not be built), received {blocks}")
    return blocks


class PatchEmbeddingEncoder(nn.Module):
    """(B, in, H, W) -> four feature maps, deepest first: (8b, H/32), (4b, H/16), (2b, H/8), (b, H/4).

    Level 0 embeds 4×4 patches with a patch MLP, levels 1-3 embed 2×2 patches of the previous level;
    each is followed by its ConvNeXt blocks.
    """

    def __init__(self, in_channels: int, base_channels: int, blocks: Sequence[int]):
        super().__init__()
        b = base_channels
        self.layer0 = nn.Sequential(PatchDownscaleMLP(in_channels, b, scale_factor=4),
                                    *[ConvNeXtBlock(b) for _ in range(blocks[0])])
        for i in (1, 2, 3):
            c = b * 2 ** i
            setattr(self, f"layer{i}", nn.Sequential(PatchDownscaleMLP(c // 2, c, scale_factor=2),
                                                     *[ConvNeXtBlock(c) for _ in range(blocks[i])]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.layer0(x)]
        for layer in (self.layer1, self.layer2, self.layer3):
            features.append(layer(features[-1]))
        return features[::-1]


class PositionProposal(nn.Module):
    """(B, in, H, W) -> (position map (B, 5, H, W), mask logits (B, N, H, W)); H, W multiples of 32.

    ``in`` is 5 (rgb, grid x, grid y) or 3 with ``depth_input`` (depth, grid x, grid y).
    """

    def __init__(self, num_slots: int, encoder_blocks: Sequence[int], decoder_blocks: Sequence[int],
                 base_channels: int, depth_input: bool = False):
        super().__init__()
        encoder_blocks = _check_blocks("encoder_blocks", encoder_blocks, (1, 2, 3))
        decoder_blocks = _check_blocks("decoder_blocks", decoder_blocks, (3,))
        b, n = base_channels, num_slots
        self.num_slots, self.in_channels = n, 3 if depth_input else 5
        self.encoder = PatchEmbeddingEncoder(self.in_channels, b, encoder_blocks)
        self.layer0 = nn.Sequential(*[ConvNeXtBlock(8 * b) for _ in range(decoder_blocks[3])],
                                    UpscaleMLP(8 * b, 4 * b, scale_factor=2))
        blocks = decoder_blocks[1]  # §24.5: stages 1-3 all read decoder_blocks[1]
        for i, (c, c_out, k) in enumerate(((4 * b, 2 * b, 2), (2 * b, b, 2), (b, 2 * n, 4)), start=1):
            setattr(self, f"merge{i}", nn.Conv2d(2 * c, c, kernel_size=3, padding=1))
            setattr(self, f"layer{i}", nn.Sequential(*[ConvNeXtBlock(c) for _ in range(blocks)],
                                                     UpscaleMLP(c, c_out, scale_factor=k)))
        self.to_position = nn.Conv2d(2 * n, 5, kernel_size=1)
        # Indices 1, 3, 5 carry the weights, as upstream's (mean-pool, Linear, SiLU, Linear, SiLU, Linear).
        self.hyper_network = nn.Sequential(nn.Identity(), nn.Linear(8 * b, 8 * b), nn.SiLU(),
                                           nn.Linear(8 * b, 8 * b), nn.SiLU(), nn.Linear(8 * b, 2 * n * n))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_4d("PositionProposal input", x, self.in_channels)
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"PositionProposal input: height and width must be multiples of 32, received "
                             f"{tuple(x.shape[-2:])}")
        features = self.encoder(x)
        y = self.layer0(features[0])
        for i in (1, 2, 3):
            merge, layer = getattr(self, f"merge{i}"), getattr(self, f"layer{i}")
            y = layer(merge(torch.cat((y, features[i]), dim=1)))
        position = self.to_position(y)
        b, c, h, w = y.shape
        mixing = self.hyper_network(features[0].mean((2, 3))).view(b, self.num_slots, c)
        logits = torch.bmm(mixing, y.reshape(b, c, h * w)).view(b, self.num_slots, h, w)
        return position, logits
