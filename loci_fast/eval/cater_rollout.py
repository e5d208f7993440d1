"""Upstream's CATER evaluation rollout of the original Loci (reference loci.md §4.1), batched.

Per batch of videos: ``teacher_forcing`` warm-up steps on frame 0, then frames 0 … T-2 predicting
1 … T-1, under no_grad with the regularisers off (``test=True``). After every step the error map of
the next step is recomputed from the prediction: bg_error = RMS_c(target - raw background),
error = sqrt(RMS_c(target - output)) · bg_error. Upstream then fades the target with the foreground
mask (bg_error > 0.1) by the background's init status; during the warm-up the same, already faded
target is reused (quirk §11.14, ``warmup_carryover=True``, the default: upstream's eval numbers);
``warmup_carryover=False`` re-reads frame 0 at every warm-up step (the corrected protocol of ``-save``).

Noise is drawn per video (``VideoNoise``), so a video's numbers do not depend on which videos share
its batch or its rank; the gate noise, one vector shared by the batch, comes from a per-step stream.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import torch

from loci_fast.loci_v1 import LociV1, StepNoise


class VideoNoise:
    """The random draws of one step for a batch, each video from its own seeded stream.

    ``VideoNoise(model, keys, seed)``; ``step(index)`` returns the :class:`StepNoise` of step ``index``
    (0 = the first warm-up step). Streams are seeded with ``seed`` and the CRC-32 of the video key.
    """

    def __init__(self, model: LociV1, keys: Sequence[str], seed: int) -> None:
        self.o, self.g = model.num_objects, model.gestalt_size
        self.cells = list(model.cells)
        self.seed = int(seed)
        self.streams = [torch.Generator().manual_seed((self.seed * 2**32 + zlib.crc32(k.encode())) % 2**63) for k in keys]

    def step(self, index: int, device: torch.device | str = "cpu") -> StepNoise:
        o, g = self.o, self.g
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in ("gestalt", "cand", "tracker", "bottleneck", "prio")}
        for gen in self.streams:
            parts["gestalt"].append(torch.randn(o, g, generator=gen))
            parts["cand"].append(torch.rand(o * 10, 2, generator=gen))
            parts["tracker"].append(torch.randn(1, o, 1, generator=gen))
            parts["bottleneck"].append(torch.randn(o, g, 1, 1, generator=gen))
            parts["prio"].append(torch.randn(o, 1, generator=gen))
        shared = torch.Generator().manual_seed((self.seed * 2**20 + index) % 2**63)
        gate = [torch.normal(0.0, float(c.gate_noise_level), (c.num_hidden,), generator=shared).to(device)
                for c in self.cells]

        def cat(name: str) -> torch.Tensor:
            return torch.cat(parts[name], 0).to(device)

        return StepNoise(init_gestalt=cat("gestalt"), init_candidates=cat("cand"), gate=gate, tracker=cat("tracker"),
                         bottleneck=cat("bottleneck"), priority=cat("prio"))


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(((a - b) ** 2).mean(dim=1, keepdim=True))


@torch.no_grad()
def rollout_snitch(model: LociV1, frames: torch.Tensor, background: torch.Tensor, noise: VideoNoise | None, *,
                   steps: int, warmup_carryover: bool = True) -> torch.Tensor:
    """The tracker's snitch predictions of a batch: (B, steps + 1, 2) screen (row, col).

    Args:
        frames: (B, >= steps + 1, 3, h, w) BGR in [0, 1] at the model level's resolution.
        background: (B or 1, 3, h, w) the static background.
        noise: the batch's per-video draws; None draws from the global RNG in upstream's order (then a
            video's numbers depend on its batch, as upstream's do).
        steps: predicted frames; entry t + 1 is the prediction for frame t + 1 (entry 0 is NaN).
        warmup_carryover: reuse the faded target during the warm-up (upstream, see the module docstring).
    """
    if model.predictor.tracker is None:
        raise ValueError("the model has no snitch tracker (model.tracker is false): CATER tracking needs it")
    b, device = frames.shape[0], frames.device
    out_snitch = torch.full((b, steps + 1, 2), float("nan"), device=device)
    state = model.initial_state(b, device=device, dtype=frames.dtype)
    error = None
    frame = frames[:, 0]
    target = frame.clamp(0, 1)
    warm = model.teacher_forcing

    def draws(index: int):
        return None if noise is None else noise.step(index, device)

    for t in range(-warm, steps):
        if t >= 0:
            frame, target = frames[:, t], frames[:, t + 1].clamp(0, 1)
        elif not warmup_carryover:
            target = frames[:, 0].clamp(0, 1)
        out, state = model.step(frame, background, state, error, draws(t + warm), test=True)
        init = min(1.0, max(0.0, model.init_status()))
        bg_error = _rms(target, out.background)
        error = torch.sqrt(_rms(target, out.output)) * bg_error
        if t >= 0:
            out_snitch[:, t + 1] = out.snitch
        fg = (bg_error > 0.1).to(target.dtype)
        target = (target * fg * (1 - init) + target * init).clamp(0, 1)
    return out_snitch
