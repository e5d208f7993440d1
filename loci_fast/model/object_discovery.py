"""``ObjectDiscovery`` (reference §11): keeps visible slots, re-initialises the others.

A slot stays while its running visibility (the max of its mask, remembered with the object
permanence strength κ) exceeds 0.8. A re-initialised slot gets gestalt 0, priority -5 and a position
sampled from the error map (where no slot explains the frame yet), at the learnable depth and std.

κ ramps up with a persistent counter that advances by 1e-4 (a float32 add) on every call until
tanh(counter) reaches 1 or the configured strength (§24.17); it travels in checkpoints as
``init.init``, upstream's key. The running visibility is per-sequence state and is passed in and
returned. No host synchronisation: κ and its branches stay tensors.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from .compat import cfg_get

THRESHOLD = 0.8  # visibility above which a slot is kept
ERROR_FLOOR = 0.1  # a sample whose error map peaks below this samples new positions uniformly
NEW_PRIORITY = -5.0
STEP = 1e-4  # counter increment per call


class PermanenceCounter(nn.Module):
    """The float32 counter behind κ (upstream ``TanhAlpha``; buffer ``init``, persistent)."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.register_buffer("init", torch.zeros(1) + start)


class DiscoveryOutput(NamedTuple):
    position: torch.Tensor  # (B, O*4)
    gestalt: torch.Tensor  # (B, O*(3G+1))
    priority: torch.Tensor  # (B, O)
    slot_reset: torch.Tensor  # (B, O): 1 = slot kept, 0 = re-initialised
    visibility: torch.Tensor  # (B, O): the running visibility, the next call's ``visibility``


class ObjectDiscovery(nn.Module):
    """``forward(error, mask_last, position, gestalt, priority, visibility, *, uniform_noise=None,
    sampled_indices=None) -> DiscoveryOutput``.

    ``error`` (B, 1, H, W); ``mask_last`` (B, O+1, H, W) with the background last, or None at a
    sequence start; latents in shared layout or None (all slots new); ``visibility`` (B, O) from the
    previous call or None (zeros). ``gestalt_size`` is G; the gestalt has 3G+1 values per slot.

    Draws, on every call for all slots (§14.1 step 3): ``rand_like(error)`` (used where a sample's
    error map peaks at or below 0.1), then ``multinomial`` of O pixel indices per sample (with
    replacement) from the normalised error map; ``uniform_noise`` (B, 1, H, W) and ``sampled_indices``
    (B, O) replace them (giving the indices skips both draws). A pixel index k gives
    x = (k mod W)/(W/2) - 1, y = (k div W)/(H/2) - 1 (§24.14a).
    """

    def __init__(self, num_slots: int, gestalt_size: int, object_permanence_strength: float = 1.0,
                 entity_pretraining_steps: float = 1e4) -> None:
        super().__init__()
        if not 0 <= object_permanence_strength <= 1:
            raise ValueError(f"object_permanence_strength must be in [0, 1], received {object_permanence_strength}")
        if not 0 <= entity_pretraining_steps <= 1e4:
            raise ValueError(f"entity_pretraining_steps must be in [0, 1e4], received {entity_pretraining_steps}")
        self.num_slots, self.gestalt_size = num_slots, gestalt_size
        self.object_permanence_strength = float(object_permanence_strength)
        self.std = nn.Parameter(torch.zeros(1) - 5)
        self.depth = nn.Parameter(torch.zeros(1) + 5)
        self.init = PermanenceCounter(-STEP * entity_pretraining_steps)
        self.register_buffer("threshold", torch.ones(1) * THRESHOLD)

    @classmethod
    def from_config(cls, model_cfg: Any) -> "ObjectDiscovery":
        """From the ``model`` section (upstream keys ``object_permanence_strength``, ``entity_pretraining_steps``)."""
        return cls(int(model_cfg["num_slots"]), int(model_cfg["gestalt_size"]),
                   float(cfg_get(model_cfg, "object_permanence_strength", 1)),
                   float(cfg_get(model_cfg, "entity_pretraining_steps", 1e4)))

    def permanence(self) -> torch.Tensor:
        """Advance the counter (while tanh(counter) < min(1, strength)) and return κ as a (1,) tensor."""
        counter = self.init.init
        t = torch.tanh(counter)
        advance = (t < 1) & (t < self.object_permanence_strength)
        counter = torch.where(advance, counter + STEP, counter)  # float32 accumulation, as upstream
        self.init.init = counter
        return torch.where(advance, torch.tanh(counter), torch.full_like(t, self.object_permanence_strength))

    def _check(self, error, mask_last, position, gestalt, priority, visibility):
        o, c = self.num_slots, 3 * self.gestalt_size + 1
        if error.dim() != 4 or error.shape[1] != 1:
            raise ValueError(f"ObjectDiscovery error: expected (B, 1, H, W), received {tuple(error.shape)}")
        b, _, h, w = error.shape
        wants = {"mask_last": (mask_last, (b, o + 1, h, w)), "position": (position, (b, o * 4)),
                 "gestalt": (gestalt, (b, o * c)), "priority": (priority, (b, o)), "visibility": (visibility, (b, o))}
        for name, (t, want) in wants.items():
            if t is not None and tuple(t.shape) != want:
                raise ValueError(f"ObjectDiscovery {name}: expected {want}, received {tuple(t.shape)}")

    def forward(self, error: torch.Tensor, mask_last: torch.Tensor | None = None,
                position: torch.Tensor | None = None, gestalt: torch.Tensor | None = None,
                priority: torch.Tensor | None = None, visibility: torch.Tensor | None = None, *,
                uniform_noise: torch.Tensor | None = None,
                sampled_indices: torch.Tensor | None = None) -> DiscoveryOutput:
        self._check(error, mask_last, position, gestalt, priority, visibility)
        b, _, h, w = error.shape
        o, c = self.num_slots, 3 * self.gestalt_size + 1
        kappa = self.permanence()
        if visibility is None:
            visibility = error.new_zeros(b, o)
        if mask_last is not None:
            seen = mask_last[:, :-1].detach().amax(dim=(2, 3))
            longest = torch.maximum(visibility, seen)
            fading = longest - torch.relu(-1 * (seen - self.threshold) * (1 - kappa))
            visibility = torch.where(kappa <= 0, seen, torch.where(kappa < 1, fading, longest))
        keep = (visibility > self.threshold).to(error.dtype).detach()  # (B, O)
        keep_b = keep.reshape(b * o, 1)

        gestalt = error.new_zeros(b * o, c) if gestalt is None else gestalt.reshape(b * o, c) * keep_b
        new_priority = torch.full_like(keep_b, NEW_PRIORITY)
        priority = (new_priority if priority is None
                    else priority.reshape(b * o, 1) * keep_b + new_priority * (1 - keep_b))

        x, y = self._sample_positions(error, uniform_noise, sampled_indices)
        new_position = torch.cat([x, y, self.depth.expand(b * o, 1), self.std.expand(b * o, 1)], dim=1)
        if position is not None:
            new_position = position.reshape(b * o, 4) * keep_b + new_position * (1 - keep_b)
        return DiscoveryOutput(new_position.reshape(b, o * 4), gestalt.reshape(b, o * c), priority.reshape(b, o),
                               keep, visibility)

    def _sample_positions(self, error, uniform_noise, sampled_indices):
        """(x, y) of O sampled pixels per sample, each (B*O, 1)."""
        b, _, h, w = error.shape
        if sampled_indices is None:
            peaked = (error.amax(dim=(2, 3), keepdim=True) > ERROR_FLOOR).to(error.dtype)
            if uniform_noise is None:
                uniform_noise = torch.rand_like(error)
            elif uniform_noise.shape != error.shape:
                raise ValueError(f"ObjectDiscovery uniform_noise: expected {tuple(error.shape)} (that of error), "
                                 f"received {tuple(uniform_noise.shape)}")
            error = error * peaked + uniform_noise * (1 - peaked)
            probs = (error / error.sum(dim=(1, 2, 3), keepdim=True)).view(b, -1)
            sampled_indices = torch.multinomial(probs, num_samples=self.num_slots, replacement=True)
        elif sampled_indices.shape != (b, self.num_slots):
            raise ValueError(f"ObjectDiscovery sampled_indices: expected ({b}, {self.num_slots}), received "
                             f"{tuple(sampled_indices.shape)}")
        rows, cols = sampled_indices // w, sampled_indices % w
        x = cols.to(error.dtype) / (w / 2.0) - 1
        y = rows.to(error.dtype) / (h / 2.0) - 1
        return x.reshape(-1, 1), y.reshape(-1, 1)
