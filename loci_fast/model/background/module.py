"""``UncertaintyBackground``: Loci-s's dynamic background (reference §12).

``net(source, target, u_src, u_tgt, delta_t, color_input)`` takes raw RGB (or RGB + depth) frames
and the uncertainty maps of ``net.uncertainty_estimation`` and returns a :class:`BackgroundOutput`
(rgb, depth, motion_context, depth_context). Module names follow upstream's ``nn/background.py``
so that upstream checkpoints convert with a short key map (``loci_fast.model.upstream``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from loci_fast.blocks.vit import UPSTREAM_HEADS, AttentionLayer

from ..color import RGB2YCbCr, RGBD2YCbCr
from ..compat import cfg_get, resolve_compat
from .context import ContextEncoding
from .decoders import DepthContextDecoder, RGBContextDecoder
from .motion import MotionContextEncoder
from .patch_embedding import PATCH, UncertaintyMaskedPatchEmbedding
from .uncertainty import UncertaintyEstimator


class BackgroundOutput(NamedTuple):
    rgb: torch.Tensor             # (B, 3, H, W) in (0, 1)
    depth: torch.Tensor           # (B, 1, H, W), no activation
    motion_context: torch.Tensor  # (B, 6) affine residual
    depth_context: torch.Tensor   # (B, ctx_d), binarised


class UncertaintyBackground(nn.Module):
    """The background module; C = latent_channels, L = num_layers, contexts of equal size, multiples of C."""

    def __init__(self, uncertainty_threshold: float = 0.1, motion_context_size: int = 256,
                 depth_context_size: int = 256, latent_channels: int = 128, num_layers: int = 4,
                 depth_input: bool = False, *, heads: int = UPSTREAM_HEADS, uncertainty_noise_in_eval: bool = True):
        super().__init__()
        if motion_context_size != depth_context_size:
            raise ValueError(f"background: motion_context_size ({motion_context_size}) and depth_context_size "
                             f"({depth_context_size}) must be equal (the depth decoder adds the two)")
        C, L, cin = latent_channels, num_layers, 4 if depth_input else 3
        self.depth_input = depth_input
        self.base_encoder = nn.ModuleList(
            [UncertaintyMaskedPatchEmbedding(cin, C, uncertainty_threshold=uncertainty_threshold)]
            + [AttentionLayer(C, heads) for _ in range(L)])
        self.rgb_encoder = nn.Sequential(*[AttentionLayer(C, heads) for _ in range(L // 2)])
        self.depth_encoder = nn.ModuleList([AttentionLayer(C, heads) for _ in range(L // 2)]
                                           + [ContextEncoding(C, depth_context_size, heads=heads)])
        self.motion_encoder = MotionContextEncoder(motion_context_size, cin, C, L + L // 2,
                                                   uncertainty_threshold, heads)
        self.depth_decoder = DepthContextDecoder(depth_context_size, C, L)
        self.rgb_decoder = RGBContextDecoder(motion_context_size, C, L, L // 2, heads)
        self.uncertainty_estimation = UncertaintyEstimator(C, L, depth_input,
                                                           noise_in_eval=uncertainty_noise_in_eval)
        self.to_ycbcr = RGBD2YCbCr() if depth_input else RGB2YCbCr()

    @classmethod
    def from_config(cls, model_cfg: Any) -> "UncertaintyBackground":
        """Build from a ``model`` config section (``model.background`` sizes, ``model.input_depth``,
        ``model.compat``)."""
        bg = cfg_get(model_cfg, "background", {}) or {}
        compat = resolve_compat(model_cfg)
        get = lambda k, d: cfg_get(bg, k, d)  # noqa: E731
        return cls(get("uncertainty_threshold", 0.1), get("motion_context_size", 256), get("depth_context_size", 256),
                   get("latent_channels", 128), get("num_layers", 4), bool(cfg_get(model_cfg, "input_depth", False)),
                   heads=get("attention_heads", UPSTREAM_HEADS),
                   uncertainty_noise_in_eval=compat["uncertainty_noise_in_eval"])

    def prepare_inputs(self, source: torch.Tensor, target: torch.Tensor,
                       color_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """source' = [Y_src, CbCr_tgt·color, D_src], target' = [Y_tgt, CbCr_tgt·color, D_tgt] (§12.2)."""
        s, t = self.to_ycbcr(source), self.to_ycbcr(target)
        color = color_input.reshape(-1, 1, 1, 1).to(t.dtype)
        chroma = t[:, 1:3] * color
        return torch.cat((s[:, :1], chroma, s[:, 3:]), 1), torch.cat((t[:, :1], chroma, t[:, 3:]), 1)

    def forward(self, source: torch.Tensor, target: torch.Tensor, source_uncertainty: torch.Tensor,
                target_uncertainty: torch.Tensor, delta_t: torch.Tensor, color_input: torch.Tensor, *,
                binarize_noise: torch.Tensor | None = None) -> BackgroundOutput:
        """``binarize_noise`` (B, ctx_d) replaces the depth context's Binarize draw in training."""
        cin = 4 if self.depth_input else 3
        if source.dim() != 4 or source.shape[1] != cin or target.shape != source.shape:
            raise ValueError(f"source, target: expected two (B, {cin}, H, W) frames "
                             f"({'RGB + depth' if self.depth_input else 'RGB'}), received "
                             f"{tuple(source.shape)} and {tuple(target.shape)}")
        if source.shape[-2] % 32 or source.shape[-1] % 32:
            raise ValueError(f"source: height and width must be multiples of 32 (16×16 tokens, a 32× U-Net), "
                             f"received {tuple(source.shape[-2:])}")
        src, tgt = self.prepare_inputs(source, target, color_input)
        latent = self.base_encoder[0](src, source_uncertainty)
        for layer in self.base_encoder[1:]:
            latent = layer(latent)
        rgb_patches = self.rgb_encoder(latent)
        x = latent
        for layer in self.depth_encoder[:-1]:
            x = layer(x)
        depth_context = self.depth_encoder[-1](x, binarize_noise)
        motion_embedding, motion_context = self.motion_encoder(src, tgt, source_uncertainty, target_uncertainty,
                                                               delta_t)
        depth = self.depth_decoder(depth_context, motion_embedding)
        rgb = self.rgb_decoder(rgb_patches, depth, motion_embedding)
        return BackgroundOutput(rgb, depth, motion_context, depth_context)


__all__ = ["UncertaintyBackground", "BackgroundOutput", "PATCH"]
