"""The three regularisers of the original Loci and the object modulator (reference loci.md §3.3).

Each keeps an "ever visible" memory L per slot (the running max of the slot's mask maximum since the
last of the first ``teacher_forcing`` calls, during which it is overwritten and the loss is 0). Here the
memories are fields of :class:`~loci_fast.loci_v1.state.LociV1State`; functions take and return them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def slot_max(mask: torch.Tensor) -> torch.Tensor:
    """(B, O, H, W) slot masks -> (B·O, 1, 1, 1) detached per-slot maxima."""
    b, o = mask.shape[:2]
    return mask.detach().amax(dim=(2, 3)).reshape(b * o, 1, 1, 1)


def update_memory(memory: torch.Tensor | None, m: torch.Tensor, warm: bool) -> torch.Tensor:
    """The visibility memory after one call: m during warm-up (or when empty), else max(memory, m)."""
    return m if (memory is None or warm) else torch.maximum(memory, m)


def position_loss(position, position_last, memory) -> torch.Tensor:
    """0.01·mean(L·(P' - P_prev)²) over (row, col, s); P_prev detached. ``memory`` (B·O, 1)."""
    rows = memory.shape[0]
    return 0.01 * torch.mean(memory * (position.reshape(rows, -1) - position_last.detach().reshape(rows, -1)) ** 2)


def object_permanence_loss(appearance, appearance_target, m, memory) -> torch.Tensor:
    """mean((1 - m)·L·(σ(A_cur - 2.5) - σ(A_mod - 2.5))²) with slot rows (B·O, 3, H, W); target detached."""
    rows = m.shape[0]
    cur = torch.sigmoid(appearance.reshape(rows, -1, *appearance.shape[2:]) - 2.5)
    tgt = torch.sigmoid(appearance_target.detach().reshape(rows, -1, *appearance.shape[2:]) - 2.5)
    return torch.mean((1 - m) * memory * (cur - tgt) ** 2)


def move_to_center(images: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Translate each slot image (B·O, C, H, W) so its (row, col) position moves to the image centre:
    bilinear, zero padding, align_corners=False (positions detached)."""
    n = images.shape[0]
    pos = position.detach().reshape(n, -1)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = pos[:, 1]
    theta[:, 1, 2] = pos[:, 0]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def time_consistency_loss(appearance_last, position_last, appearance, position, memory) -> torch.Tensor:
    """mean(L·(centre(σ(A_prev - 2.5)) - centre(σ(A_cur - 2.5)))²); only A_cur carries gradient."""
    rows = memory.shape[0]
    shape = (rows, -1, *appearance.shape[2:])
    a1 = move_to_center(torch.sigmoid(appearance_last.detach().reshape(shape) - 2.5), position_last)
    a2 = move_to_center(torch.sigmoid(appearance.reshape(shape) - 2.5), position)
    return torch.mean(memory * (a1 - a2) ** 2)


def modulate(position, gestalt, mask, last_position, last_gestalt):
    """The object modulator: per slot, the last visible state. Returns ``(P_mod, G_mod)`` in shared layout
    and the new detached memory ``(position rows, gestalt rows)``. At the first call (memory None) the
    state itself. Otherwise G_mod = m·G' + (1-m)·G_last, s likewise, (row, col) current."""
    b, o = mask.shape[:2]
    pos, gest = position.reshape(b * o, -1), gestalt.reshape(b * o, -1)
    if last_position is None or last_gestalt is None:
        return position, gestalt, (pos.detach(), gest.detach())
    m = mask.detach().amax(dim=(2, 3)).reshape(b * o, 1)
    mixed = m * pos + (1 - m) * last_position
    pos = torch.cat((pos[:, :-1], mixed[:, -1:]), dim=1)
    gest = m * gest + (1 - m) * last_gestalt
    return pos.reshape(b, -1), gest.reshape(b, -1), (pos.detach(), gest.detach())
