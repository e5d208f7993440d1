"""The encoder's 16-channel full-resolution input per slot (reference §7.1)."""
from __future__ import annotations

import torch
from torch import nn

from loci_fast import kernels as K

CHANNELS = 16


def _check(name: str, t: torch.Tensor, shape: tuple) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != len(shape) or any(
            s is not None and s != d for s, d in zip(shape, t.shape)):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, received {got}")


class InputPreprocessing(nn.Module):
    """Builds the (B·O, 16, H, W) slot inputs, batch layout (slot o of sample b is row b·O + o).

    Channels: 0-2 frame RGB, 3 depth, 4 error_last, 5 own mask·reset, 6 Σ of the other slots'
    mask·reset, 7 background mask, 8-10 own last RGB·mask_raw·reset, 11 own last depth·mask_raw·reset,
    12-13 own flow·mask_raw·reset (upstream always passes zeros), 14 Gaussian at the slot's last
    position (``loci_fast.kernels.gaussian_maps`` on the H×W grid), 15 mask_raw·reset.
    """

    def __init__(self, num_slots: int, size):
        super().__init__()
        self.num_slots = num_slots
        self.size = tuple(int(s) for s in size)

    def forward(self, input_rgb: torch.Tensor, input_depth: torch.Tensor, error_last: torch.Tensor,
                mask: torch.Tensor, mask_raw: torch.Tensor, slot_rgb: torch.Tensor, slot_depth: torch.Tensor,
                position: torch.Tensor, slot_reset: torch.Tensor,
                slot_flow: torch.Tensor | None = None) -> torch.Tensor:
        """Shapes (shared layout): input_rgb (B, 3, H, W); input_depth, error_last (B, 1, H, W);
        mask (B, O+1, H, W) with the background last; mask_raw, slot_depth (B, O, H, W); slot_rgb
        (B, 3·O, H, W) or (B, 3·(O+1), H, W) (a trailing background block is ignored); position
        (B, O·k), k in 2..4; slot_reset (B, O), 1 = slot kept; slot_flow (B, 2·O, H, W) or None (zeros).
        """
        o, (h, w) = self.num_slots, self.size
        b = input_rgb.shape[0] if isinstance(input_rgb, torch.Tensor) else None
        _check("input_rgb", input_rgb, (b, 3, h, w))
        _check("input_depth", input_depth, (b, 1, h, w))
        _check("error_last", error_last, (b, 1, h, w))
        _check("mask", mask, (b, o + 1, h, w))
        _check("mask_raw", mask_raw, (b, o, h, w))
        _check("slot_depth", slot_depth, (b, o, h, w))
        _check("slot_reset", slot_reset, (b, o))
        _check("position", position, (b, None))
        if position.shape[1] % o or not 2 <= position.shape[1] // o <= 4:
            raise ValueError(f"position: expected shape ({b}, {o}·k) with k in 2..4, received {tuple(position.shape)}")
        if not (isinstance(slot_rgb, torch.Tensor) and slot_rgb.dim() == 4
                and slot_rgb.shape[1] in (3 * o, 3 * (o + 1)) and tuple(slot_rgb.shape[2:]) == (h, w)
                and slot_rgb.shape[0] == b):
            got = tuple(slot_rgb.shape) if isinstance(slot_rgb, torch.Tensor) else type(slot_rgb).__name__
            raise ValueError(f"slot_rgb: expected shape ({b}, {3 * o} or {3 * (o + 1)}, {h}, {w}), received {got}")
        if slot_flow is not None:
            _check("slot_flow", slot_flow, (b, 2 * o, h, w))

        reset = slot_reset.view(b, o, 1, 1)
        own = mask[:, :o] * reset
        # Σ_{j != o} own_j, as upstream's ones-minus-identity 1x1 conv (not total - own, which cancels).
        others = torch.einsum("oj,bjhw->bohw", 1 - torch.eye(o, dtype=own.dtype, device=own.device), own)
        background = mask[:, o:].expand(b, o, h, w)
        gauss = K.gaussian_maps(position.reshape(b * o, -1), (h, w)).view(b, o, h, w)

        rgb = slot_rgb[:, :3 * o].reshape(b, o, 3, h, w)
        reset5 = reset.unsqueeze(2)
        raw5 = mask_raw.unsqueeze(2)
        flow = (torch.zeros(b, o, 2, h, w, dtype=rgb.dtype, device=rgb.device) if slot_flow is None
                else slot_flow.reshape(b, o, 2, h, w) * raw5 * reset5)
        parts = (
            input_rgb.unsqueeze(1).expand(b, o, 3, h, w),
            input_depth.unsqueeze(1).expand(b, o, 1, h, w),
            error_last.unsqueeze(1).expand(b, o, 1, h, w),
            own.unsqueeze(2), others.unsqueeze(2), background.unsqueeze(2),
            rgb * raw5 * reset5,
            slot_depth.unsqueeze(2) * raw5 * reset5,
            flow,
            gauss.unsqueeze(2),
            raw5 * reset5,
        )
        return torch.cat(parts, dim=2).view(b * o, CHANNELS, h, w)
