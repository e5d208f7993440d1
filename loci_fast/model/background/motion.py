"""``MotionContextEncoder``: camera motion between two frames as an affine residual (B, 6), and its
learnt embedding on the token grid (reference §12.1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loci_fast.blocks.vit import UPSTREAM_HEADS, AttentionLayer, position_mlp, token_grid

from ..patch_codecs import PatchDownscaleMLP
from .context import ContextEncoding
from .patch_embedding import PATCH


def affine_grid_points(motion: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 6) residual -> (B·h·w, 2): the (x, y) sample points of identity + residual (row-major
    2×3), at pixel centres (``affine_grid`` with align_corners=False)."""
    b = motion.shape[0]
    theta = torch.eye(2, 3, device=motion.device, dtype=motion.dtype).expand(b, 2, 3) + motion.view(b, 2, 3)
    return F.affine_grid(theta, [b, 1, h, w], align_corners=False).reshape(b * h * w, 2)


class MotionContextEncoder(nn.Module):
    """(source', target', u_src, u_tgt, Δt) -> (motion_embedding (B, ctx, h, w), motion_context (B, 6)).

    If every |Δt| in the batch is < 0.5 the context is zero (the embedding is then the learnt map of
    the identity transform). Otherwise both frames, each masked per pixel by [u < threshold], share
    one patch MLP, add their own position codes, and (source tokens first) pass through the
    attention layers, a ContextEncoding without binarisation and a Linear(ctx -> 6); samples with
    |Δt| <= 0.5 get a zero context.
    """

    def __init__(self, context_size: int, in_channels: int, latent_channels: int, num_layers: int,
                 uncertainty_threshold: float, heads: int = UPSTREAM_HEADS):
        super().__init__()
        self.threshold, self.context_size = uncertainty_threshold, context_size
        hidden = 2 * latent_channels
        self.to_patches = PatchDownscaleMLP(in_channels, latent_channels, 4, PATCH)
        self.source_embedding = position_mlp(latent_channels, hidden)
        self.target_embedding = position_mlp(latent_channels, hidden)
        self.layers = nn.Sequential(*[AttentionLayer(latent_channels, heads) for _ in range(num_layers)],
                                    ContextEncoding(latent_channels, context_size, binarize=False, heads=heads),
                                    nn.Linear(context_size, 6))
        self.motion_embedding = position_mlp(context_size, hidden)

    def _tokens(self, x: torch.Tensor, u: torch.Tensor, embedding: nn.Module, grid: torch.Tensor) -> torch.Tensor:
        x = x * (u < self.threshold).to(x.dtype)
        return self.to_patches(x).flatten(2).transpose(1, 2) + embedding(grid)

    def forward(self, source: torch.Tensor, target: torch.Tensor, source_uncertainty: torch.Tensor,
                target_uncertainty: torch.Tensor, delta_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, H, W = source.shape
        h, w = H // PATCH, W // PATCH
        if delta_t.numel() != b:
            raise ValueError(f"delta_t: expected one value per sample ({b}), received shape {tuple(delta_t.shape)}")
        dt = delta_t.reshape(b, 1)
        if bool(dt.abs().max() < 0.5):  # a static batch: no motion tokens at all
            motion = source.new_zeros(b, 6)
        else:
            grid = token_grid(h, w, device=source.device, dtype=source.dtype)
            tokens = torch.cat((self._tokens(source, source_uncertainty, self.source_embedding, grid),
                                self._tokens(target, target_uncertainty, self.target_embedding, grid)), dim=1)
            motion = self.layers(tokens) * (dt.abs() > 0.5).to(source.dtype)
        emb = self.motion_embedding(affine_grid_points(motion, h, w))
        return emb.reshape(b, h, w, self.context_size).permute(0, 3, 1, 2), motion
