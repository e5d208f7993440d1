"""The background's decoders: depth from the depth context, RGB by cross-attention on the RGB
tokens (reference §12.1)."""
from __future__ import annotations

import torch
from torch import nn

from loci_fast.blocks.gradient import scale_grad
from loci_fast.blocks.vit import UPSTREAM_HEADS, CrossAttentionLayer

from ..convnext import ConvNeXtBlock
from ..patch_codecs import PatchDownscaleMLP, UpscaleMLP
from .patch_embedding import PATCH

#: the RGB decoder passes this fraction of its gradient back into the predicted depth
DEPTH_GRADIENT_SCALE = 0.1


class DepthContextDecoder(nn.Module):
    """depth_context (B, ctx_d) + motion_embedding (B, ctx_m, h, w) -> depth (B, 1, H, W), no activation."""

    def __init__(self, depth_context_size: int, channels: int, num_layers: int):
        super().__init__()
        self.layers = nn.Sequential(ConvNeXtBlock(depth_context_size, channels),
                                    *[ConvNeXtBlock(channels) for _ in range(num_layers - 1)])
        self.to_patches = UpscaleMLP(channels, 1, PATCH)

    def forward(self, depth_context: torch.Tensor, motion_embedding: torch.Tensor) -> torch.Tensor:
        return self.to_patches(self.layers(depth_context[:, :, None, None] + motion_embedding))


class RGBContextDecoder(nn.Module):
    """(rgb tokens, depth, motion embedding) -> rgb (B, 3, H, W) in (0, 1).

    x = ConvNeXtBlock(PatchMLP(depth with 0.1× gradient) + motion_embedding) as tokens; cross-attention
    layers on the RGB tokens; ConvNeXt blocks; x16 upscaler; sigmoid.
    """

    def __init__(self, context_size: int, channels: int, cross_attention_layers: int, convnext_layers: int,
                 heads: int = UPSTREAM_HEADS):
        super().__init__()
        self.cross_attention_layers = nn.ModuleList(
            [CrossAttentionLayer(channels, heads) for _ in range(cross_attention_layers)])
        self.convnext_layers = nn.Sequential(*[ConvNeXtBlock(channels) for _ in range(convnext_layers)])
        self.to_patches = UpscaleMLP(channels, 3, PATCH)
        self.depth_embedding = PatchDownscaleMLP(1, context_size, 4, PATCH)
        self.preprocess = ConvNeXtBlock(context_size, channels)

    def forward(self, rgb_patches: torch.Tensor, depth: torch.Tensor, motion_embedding: torch.Tensor) -> torch.Tensor:
        h, w = motion_embedding.shape[-2:]
        x = self.preprocess(self.depth_embedding(scale_grad(depth, DEPTH_GRADIENT_SCALE)) + motion_embedding)
        x = x.flatten(2).transpose(1, 2)
        for layer in self.cross_attention_layers:
            x = layer(x, rgb_patches)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return torch.sigmoid(self.to_patches(self.convnext_layers(x)))
