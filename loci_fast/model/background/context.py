"""``ContextEncoding``: tokens (B, N, C) -> one context vector (B, ctx), optionally binarised (§12.1)."""
from __future__ import annotations

import torch
from torch import nn

from loci_fast.blocks.vit import UPSTREAM_HEADS, AttentionSum, TokenMLP

from ..binarize import Binarize


class ContextEncoding(nn.Module):
    """x <- repeat_channels(x, ctx/C) + TokenMLP(C -> ctx); AttentionSum; x + MLP(ctx -> 4ctx -> ctx);
    then Binarize (noisy in training, rounded in evaluation) when ``binarize``.

    ``repeat_channels`` repeats each channel ctx/C times consecutively; ctx must be a multiple of C.
    """

    def __init__(self, in_channels: int, out_channels: int, binarize: bool = True, heads: int = UPSTREAM_HEADS):
        super().__init__()
        if out_channels % in_channels:
            raise ValueError(f"ContextEncoding: the context size ({out_channels}) must be a multiple of the "
                             f"token channels ({in_channels})")
        self.repeat = out_channels // in_channels
        self.expand = TokenMLP(in_channels, out_channels)
        self.aggregate = AttentionSum(out_channels, heads)
        self.process = nn.Sequential(nn.Linear(out_channels, 4 * out_channels), nn.SiLU(),
                                     nn.Linear(4 * out_channels, out_channels))
        self.binarize = Binarize() if binarize else None

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noise`` (B, ctx) replaces the Binarize draw in training (ignored without binarisation)."""
        x = x.repeat_interleave(self.repeat, dim=-1) + self.expand(x)
        x = self.aggregate(x)
        x = x + self.process(x)
        return self.binarize(x, noise) if self.binarize is not None else x
