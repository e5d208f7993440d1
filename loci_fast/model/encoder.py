"""``LociEncoder``: per-slot position, gestalt and priority from the frame and the last slot renders.

Reference §7. The encoder runs slot-wise in batch layout (B·O items). A ConvNeXt stem and four
heads (position; mask/depth/RGB gestalt) use hypernetwork depthwise convolutions whose per-slot
weights are ``base + alpha·MLP(g_last)``. Submodule names follow upstream ``nn/encoder.py``, so an
upstream state dict maps one to one (see ``upstream_encoder_keys.py``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .binarize import Binarize
from .convnext import PatchDownscale
from .embedding import PositionPooling
from .heads import PixelToDepth, PixelToPosition, PixelToPriority, PixelToSTD
from .hypernets import HyperConvNextBlock, HyperSequential, NonHyperWrapper
from .input_preprocessing import CHANNELS, InputPreprocessing


def _compat_flag(model_cfg: Any, name: str, default: bool) -> bool:
    """``model_cfg["compat"][name]`` for mappings and config nodes alike; ``default`` when unset."""
    try:
        compat = model_cfg["compat"]
    except (KeyError, TypeError, AttributeError):
        return default
    if compat is None:
        return default
    try:
        value = compat[name]
    except (KeyError, TypeError, AttributeError):
        return default
    if not isinstance(value, bool):
        raise ValueError(f"model.compat.{name}: expected true or false, received {value!r}")
    return value


class PoolingHead(nn.Sequential):
    """[PositionPooling, activation]: pools a feature map at a position, then squashes the code.

    A Sequential only so the parameter names (``0.residual.0.weight``) match upstream's.
    """

    def forward(self, features: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self[1](self[0](features, position))


def _gestalt_encoder(c: int, blocks: int, slices_from_start: bool) -> HyperSequential:
    return HyperSequential(NonHyperWrapper(PatchDownscale(c, 2 * c, kernel_size=2)),
                           *[HyperConvNextBlock(2 * c) for _ in range(blocks)], slices_from_start=slices_from_start)


class LociEncoder(nn.Module):
    """The Loci-s object encoder.

    Args:
        num_slots: O, slots per sample.
        gestalt_size: G, code size per modality (the gestalt is 3G + 1 values: mask, depth, rgb, z_scale).
        input_size: (H, W) of the frames, divisible by 32.
        channels: base width C (stem C -> 2C -> 4C, gestalt encoders 8C); a multiple of 16.
        blocks: four block counts [stem stage 0, 1, 2, heads] (upstream default [1, 1, 3, 2]).
        hyper_channels: width of the hypernetwork MLP.
        hyper_slices_from_start: upstream quirk (compat flag of the same name, default True): every
            hyper layer of a sub-network reads its weights from the start of that sub-network's slice
            (see ``HyperSequential``); False gives each layer its own consecutive slice.
    """

    def __init__(self, *, num_slots: int, gestalt_size: int, input_size: Sequence[int] | int, channels: int,
                 blocks: Sequence[int], hyper_channels: int, hyper_slices_from_start: bool = True):
        super().__init__()
        size = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
        if len(size) != 2 or size[0] % 32 or size[1] % 32:
            raise ValueError(f"input_size: expected (H, W) divisible by 32, received {input_size!r}")
        if channels % CHANNELS:
            raise ValueError(f"channels: expected a multiple of {CHANNELS} (the patch stem repeats input channels), "
                             f"received {channels}")
        blocks = [int(b) for b in blocks]
        if len(blocks) != 4:
            raise ValueError(f"blocks: expected 4 block counts, received {blocks!r}")
        self.num_slots, self.gestalt_size, self.input_size = num_slots, gestalt_size, size
        self.latent_size = (size[0] // 16, size[1] // 16)
        pool_size = (size[0] // 32, size[1] // 32)
        c = channels
        quirk = dict(slices_from_start=hyper_slices_from_start)

        self.preprocess = InputPreprocessing(num_slots, size)
        self.stem = HyperSequential(
            NonHyperWrapper(PatchDownscale(CHANNELS, c, kernel_size=4)),
            *[HyperConvNextBlock(c) for _ in range(blocks[0])],
            NonHyperWrapper(PatchDownscale(c, 2 * c, kernel_size=2)),
            *[HyperConvNextBlock(2 * c) for _ in range(blocks[1])],
            NonHyperWrapper(PatchDownscale(2 * c, 4 * c, kernel_size=2)),
            *[HyperConvNextBlock(4 * c) for _ in range(blocks[2])], **quirk,
        )
        self.position_encoder = HyperSequential(*[HyperConvNextBlock(4 * c) for _ in range(blocks[3])],
                                                HyperConvNextBlock(4 * c, 4), **quirk)
        self.xy_encoder = PixelToPosition()
        self.std_encoder = PixelToSTD()
        self.depth_encoder = PixelToDepth()
        self.priority_encoder = PixelToPriority(num_slots)

        self.gestalt_base_encoder = HyperSequential(*[HyperConvNextBlock(4 * c) for _ in range(blocks[3])], **quirk)
        self.mask_gestalt_encoder = _gestalt_encoder(4 * c, 2 * blocks[3], **quirk)
        self.depth_gestalt_encoder = _gestalt_encoder(4 * c, 2 * blocks[3], **quirk)
        self.rgb_gestalt_encoder = _gestalt_encoder(4 * c, 2 * blocks[3], **quirk)

        self.mask_gestalt_pooling = PoolingHead(PositionPooling(pool_size, 8 * c, gestalt_size), Binarize())
        self.depth_gestalt_pooling = PoolingHead(PositionPooling(pool_size, 8 * c, gestalt_size), Binarize())
        self.depth_scale_pooling = PoolingHead(PositionPooling(pool_size, 8 * c, 1), nn.Sigmoid())
        self.rgb_gestalt_pooling = PoolingHead(PositionPooling(pool_size, 8 * c, gestalt_size), Binarize())

        self.hyper_weights = nn.Sequential(
            nn.Linear(3 * gestalt_size, hyper_channels), nn.SiLU(),
            *[nn.Sequential(nn.Linear(hyper_channels, hyper_channels), nn.SiLU()) for _ in range(blocks[2] - 2)],
            nn.Linear(hyper_channels, self.num_hyper_weights()),
        )

    @classmethod
    def from_config(cls, model_cfg: Any, *, num_slots: int | None = None) -> "LociEncoder":
        """Build from the ``model`` section of an upstream-style config (mapping or config node).

        Reads num_slots, gestalt_size, input_size, encoder.{channels, blocks, hyper_channels} and the
        compat flag ``compat.hyper_slices_from_start`` (default True). ``num_slots`` overrides the
        config's (the pretrainer's encoder has one slot).
        """
        enc = model_cfg["encoder"]
        return cls(num_slots=int(model_cfg["num_slots"] if num_slots is None else num_slots),
                   gestalt_size=int(model_cfg["gestalt_size"]), input_size=list(model_cfg["input_size"]),
                   channels=int(enc["channels"]), blocks=list(enc["blocks"]),
                   hyper_channels=int(enc["hyper_channels"]),
                   hyper_slices_from_start=bool(_compat_flag(model_cfg, "hyper_slices_from_start", True)))

    def hyper_parts(self) -> list[HyperSequential]:
        """The hyper sub-networks in the order the hypernetwork output is sliced."""
        return [self.stem, self.position_encoder, self.gestalt_base_encoder,
                self.mask_gestalt_encoder, self.depth_gestalt_encoder, self.rgb_gestalt_encoder]

    def num_hyper_weights(self) -> int:
        return sum(part.num_weights() for part in self.hyper_parts())

    def forward(self, input_rgb: torch.Tensor, input_depth: torch.Tensor, error_last: torch.Tensor,
                mask: torch.Tensor, mask_raw: torch.Tensor, slot_rgb: torch.Tensor, slot_depth: torch.Tensor,
                position: torch.Tensor, gestalt: torch.Tensor, slot_reset: torch.Tensor | None = None,
                use_hyper_weights: bool = True, slot_flow: torch.Tensor | None = None):
        """Encode every slot. Shared layout in and out (see ``InputPreprocessing.forward`` for inputs).

        position (B, O·4) last positions, gestalt (B, O·(3G+1)) last gestalts. ``slot_reset`` None
        means ones when ``use_hyper_weights`` and zeros otherwise (upstream's default, which also
        zeroes the slot's mask/render input channels). Returns position (B, O·4) = (x, y, z, std) per
        slot, gestalt (B, O·(3G+1)) = [mask, depth, rgb codes, z_scale], priority (B, O).
        """
        o, g = self.num_slots, self.gestalt_size
        b = input_rgb.shape[0]
        if gestalt.dim() != 2 or gestalt.shape != (b, o * (3 * g + 1)):
            raise ValueError(f"gestalt: expected shape ({b}, {o * (3 * g + 1)}) = (B, O·(3G+1)), "
                             f"received {tuple(gestalt.shape)}")
        if slot_reset is None:
            fill = 1.0 if use_hyper_weights else 0.0
            slot_reset = torch.full((b, o), fill, device=input_rgb.device, dtype=input_rgb.dtype)

        x = self.preprocess(input_rgb, input_depth, error_last, mask, mask_raw, slot_rgb, slot_depth,
                            position, slot_reset, slot_flow)

        dynamic = [None] * 6
        if use_hyper_weights:
            codes = gestalt.reshape(b * o, 3 * g + 1)[:, :-1]  # drop z_scale
            weights = self.hyper_weights(codes) * slot_reset.reshape(b * o, 1)  # new slots: base weights only
            dynamic = list(torch.split(weights, [p.num_weights() for p in self.hyper_parts()], dim=1))
        stem_w, position_w, base_w, mask_w, depth_w, rgb_w = dynamic

        latent = self.stem(x, stem_w)
        latent_gestalt = self.gestalt_base_encoder(latent, base_w)
        mask_features = self.mask_gestalt_encoder(latent_gestalt, mask_w)
        depth_features = self.depth_gestalt_encoder(latent_gestalt, depth_w)
        rgb_features = self.rgb_gestalt_encoder(latent_gestalt, rgb_w)

        latent = self.position_encoder(latent, position_w)
        xy = self.xy_encoder(latent[:, 0:1])
        z = self.depth_encoder(latent[:, 1:2])
        std = self.std_encoder(latent[:, 2:3])
        priority = self.priority_encoder(latent[:, 3:4], z)
        new_position = torch.cat((xy, z, std), dim=1)

        # Upstream's order, so that Binarize's noise draws line up under equal seeds.
        mask_code = self.mask_gestalt_pooling(mask_features, new_position)
        depth_scale = self.depth_scale_pooling(depth_features, new_position)
        depth_code = self.depth_gestalt_pooling(depth_features, new_position)
        rgb_code = self.rgb_gestalt_pooling(rgb_features, new_position)

        new_gestalt = torch.cat((mask_code, depth_code, rgb_code, depth_scale), dim=1)
        return new_position.reshape(b, o * 4), new_gestalt.reshape(b, -1), priority.reshape(b, o)
