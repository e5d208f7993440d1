"""Slot (re-)initialisation: error-driven seeding of dead slots (reference loci.md §2.4)."""
from __future__ import annotations

import torch
from torch import nn

from .geometry import gaussian_maps
from .noise import given_or_drawn

#: candidate positions drawn per slot and frame
NUM_CANDIDATES = 10
#: default priority step between slot indices
PRIORITY_STEP = 25.0


class InitialLatentStates(nn.Module):
    """Re-seeds every slot whose running mask maximum has not passed ``threshold`` (0.5).

    A dead slot gets gestalt σ(ε·gestalt_std + gestalt_mean), priority 25·index, and the best of 10
    uniform candidate positions scored by Σ Gaussian × error map, with size = the learned ``std``.
    Alive slots keep their state. Parameters and the persistent ``threshold`` buffer carry upstream's
    names.
    """

    def __init__(self, gestalt_size: int, num_objects: int, input_size: tuple[int, int], level: int = 1) -> None:
        super().__init__()
        self.gestalt_size, self.num_objects = gestalt_size, num_objects
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.level = level
        self.gestalt_mean = nn.Parameter(torch.zeros(1, gestalt_size))
        self.gestalt_std = nn.Parameter(torch.ones(1, gestalt_size))
        self.std = nn.Parameter(torch.zeros(1))
        self.register_buffer("threshold", torch.ones(1) * 0.5)

    def frame_size(self) -> tuple[int, int]:
        """The input resolution of the current level: input/16, input/4 or input."""
        f = (16, 4, 1)[self.level]
        return self.input_size[0] // f, self.input_size[1] // f

    def default_priority(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """(B·O, 1) priorities 25·slot index."""
        p = torch.arange(self.num_objects, device=like.device).to(like.dtype) * PRIORITY_STEP
        return p.repeat(batch).view(-1, 1)

    def forward(self, error: torch.Tensor, mask: torch.Tensor | None, seed_mask: torch.Tensor | None,
                position: torch.Tensor | None, gestalt: torch.Tensor | None, priority: torch.Tensor | None, *,
                init_gestalt: torch.Tensor | None = None, init_candidates: torch.Tensor | None = None):
        """Returns ``(position (B, O·3), gestalt (B, O·G), priority (B, O), seed_mask (B·O, 1))``.

        ``error`` (B, 1, h, w) at the level's resolution; ``mask`` (B, O+1, h, w) of the previous step or
        None; ``seed_mask`` the running max so far (None at a sequence start); the slot state in shared
        layout or None. ``init_gestalt``/``init_candidates`` inject the two draws (noise.py).
        """
        b, o, g = error.shape[0], self.num_objects, self.gestalt_size
        rows, dev = b * o, error.device
        if seed_mask is None:
            seed_mask = torch.zeros(rows, 1, device=dev, dtype=error.dtype)
        if mask is not None:
            seed_mask = torch.maximum(seed_mask, mask[:, :-1].detach().amax(dim=(2, 3)).reshape(rows, 1))
        std = self.std.view(1, 1).expand(rows, 1)
        alive = (seed_mask > self.threshold).to(error.dtype).detach()

        eps = given_or_drawn(init_gestalt, "init_gestalt", (rows, g), lambda: torch.randn((rows, g), device=dev))
        gestalt_new = torch.sigmoid(eps * self.gestalt_std + self.gestalt_mean)
        gestalt = gestalt_new if gestalt is None else gestalt.reshape(rows, g) * alive + gestalt_new * (1 - alive)
        default_p = self.default_priority(b, error)
        priority = default_p if priority is None else priority.reshape(rows, 1) * alive + default_p * (1 - alive)

        n = rows * NUM_CANDIDATES
        cand = given_or_drawn(init_candidates, "init_candidates", (n, 2), lambda: torch.rand((n, 2), device=dev))
        cand = cand * 2 - 1
        maps = gaussian_maps(torch.cat((cand, torch.zeros(n, 1, device=dev, dtype=cand.dtype)), 1), self.frame_size())
        score = (maps.view(b, o * NUM_CANDIDATES, *maps.shape[2:]) * error).sum(dim=(2, 3))
        best = torch.argmax(score.view(rows, NUM_CANDIDATES), dim=1)  # first index on ties
        xy = cand.view(rows, NUM_CANDIDATES, 2)[torch.arange(rows, device=dev), best].detach()
        position_new = torch.cat((xy, std), dim=1)
        position = position_new if position is None else position.reshape(rows, 3) * alive + position_new * (1 - alive)
        return position.reshape(b, o * 3), gestalt.reshape(b, o * g), priority.reshape(b, o), seed_mask
