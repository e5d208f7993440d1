"""``ConvNeXtUnet``: a four-level ConvNeXt encoder/decoder with skip merges (reference §2.4, §24.5).

Used by the background's uncertainty estimator (and upstream's position proposal). Levels run at
1/4, 1/8, 1/16, 1/32 of the input with base·(1, 2, 4, 8) channels. Quirk §24.5, reproduced because
it fixes the parameter layout of upstream checkpoints: decoder stage 0 has ``decoder_blocks[3]``
blocks and stages 1-3 all have ``decoder_blocks[1]``. Module names follow upstream's.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .convnext import ConvNeXtBlock, ConvNeXtStem, PatchDownscale, PatchUpscale, _check_4d


class ConvNeXtEncoder(nn.Module):
    """Stem (PatchDownscale ×4, or ConvNeXtStem when base % in != 0) and three PatchDownscale ×2
    levels (Identity when a level has no blocks); returns the four feature maps, deepest first."""

    def __init__(self, in_channels: int, base_channels: int, blocks: Sequence[int]):
        super().__init__()
        b = base_channels
        stem = PatchDownscale(in_channels, b, 4) if b % in_channels == 0 else ConvNeXtStem(in_channels, b)
        self.layer0 = nn.Sequential(stem, *[ConvNeXtBlock(b) for _ in range(blocks[0])])
        for i in (1, 2, 3):
            c_in, c = b * 2 ** (i - 1), b * 2 ** i
            down = PatchDownscale(c_in, c, 2) if blocks[i] > 0 else nn.Identity()
            setattr(self, f"layer{i}", nn.Sequential(down, *[ConvNeXtBlock(c) for _ in range(blocks[i])]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.layer0(x)]
        for layer in (self.layer1, self.layer2, self.layer3):
            features.append(layer(features[-1]))
        return features[::-1]


class ConvNeXtUnet(nn.Module):
    """(B, in, H, W) -> (B, out, H, W); H and W multiples of 32."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int,
                 encoder_blocks: Sequence[int] = (3, 3, 9, 3), decoder_blocks: Sequence[int] = (3, 3, 9, 3)):
        super().__init__()
        if len(encoder_blocks) != 4 or len(decoder_blocks) != 4:
            raise ValueError(f"ConvNeXtUnet: encoder_blocks and decoder_blocks need 4 entries, received "
                             f"{list(encoder_blocks)} and {list(decoder_blocks)}")
        if decoder_blocks[3] < 1:
            raise ValueError("ConvNeXtUnet: decoder_blocks[3] must be >= 1 (stage 0 upscales the deepest level)")
        b = base_channels
        self.in_channels = in_channels
        self.encoder = ConvNeXtEncoder(in_channels, b, encoder_blocks)
        self.layer0 = nn.Sequential(*[ConvNeXtBlock(8 * b) for _ in range(decoder_blocks[3])],
                                    PatchUpscale(8 * b, 4 * b, 2))
        n = decoder_blocks[1]  # §24.5: stages 1-3 all read decoder_blocks[1]
        for i, (c, c_out, k) in enumerate(((4 * b, 2 * b, 2), (2 * b, b, 2), (b, out_channels, 4)), start=1):
            setattr(self, f"merge{i}", nn.Conv2d(2 * c, c, kernel_size=3, padding=1))
            setattr(self, f"layer{i}", nn.Sequential(*[ConvNeXtBlock(c) for _ in range(n)], PatchUpscale(c, c_out, k)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d("ConvNeXtUnet input", x, self.in_channels)
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"ConvNeXtUnet input: height and width must be multiples of 32, received "
                             f"{tuple(x.shape[-2:])}")
        features = self.encoder(x)
        y = self.layer0(features[0])
        for i in (1, 2, 3):
            merge, layer = getattr(self, f"merge{i}"), getattr(self, f"layer{i}")
            y = layer(merge(torch.cat((y, features[i]), dim=1)))
        return y
