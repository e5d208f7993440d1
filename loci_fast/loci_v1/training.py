"""One iteration of the original Loci's online training loop (reference loci.md §3.2 item 4, §3.3).

Upstream's ``train_eprop`` runs, per batch of videos, ``teacher_forcing`` warm-up iterations on frame 0
and then one iteration per frame t (input frame t, target frame t+1). Each iteration is one forward
(:meth:`LociV1.step`), one loss, one backward and one optimizer step; all recurrent state is detached
between iterations (the GateL0RD traces carry credit further). Here an iteration is a function of the
model, the iteration's frames and a :class:`TrainState` (the slot state, the error map and the previous
iteration's reconstruction target), so the trainer stage and the parity tests drive the same code.

The loss: BCE(clip(prediction), target') + the three regularisers x their weights + supervision_factor x
the screen-space snitch tracking loss, where target' is the foreground-masked target fading to the full
frame with the background gate: clip(target·fg·(1 - i) + target·i), fg = [RMS(target - background) > 0.1],
i = clip(init status, 0, 1). The error map fed to the next iteration is sqrt(RMS(target - prediction))·
RMS(target - background).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .noise import StepNoise
from .state import LociV1State
from .tracker import tracking_loss

#: logged scalars of an iteration (besides the total ``loss``)
TERMS = ("bce", "position_loss", "object_loss", "time_loss", "tracking_loss", "init_status", "openings", "slots")


@dataclass
class TrainSettings:
    """The loss weights and loop settings of upstream's config (loci.md §7)."""

    teacher_forcing: int = 10
    supervision_factor: float = 0.01
    object_regularizer: float = 1.0
    position_regularizer: float = 1.0
    time_regularizer: float = 1.0
    background_pretraining_steps: int = 0
    #: §11.14: warm-up iterations after the first reuse the previous iteration's masked target
    carry_warmup_target: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> "TrainSettings":
        """From an original-Loci training config (its top level and ``model`` block)."""
        from .compat import resolve_v1_compat

        m = cfg["model"]
        return cls(teacher_forcing=int(cfg["teacher_forcing"]), supervision_factor=float(m["supervision_factor"]),
                   object_regularizer=float(m["object_regularizer"]),
                   position_regularizer=float(m["position_regularizer"]),
                   time_regularizer=float(m["time_regularizer"]),
                   background_pretraining_steps=int(cfg["background_pretraining_steps"]),
                   carry_warmup_target=resolve_v1_compat(m)["warmup_target_carry_over"])


@dataclass
class TrainState:
    """What one iteration hands the next within a video batch (all detached between iterations)."""

    model: LociV1State | None = None  # None: the model's sequence start (upstream's reset)
    error: torch.Tensor | None = None  # (B, 1, h, w) the error map, None at a sequence start
    target: torch.Tensor | None = None  # (B, 3, h, w) the last reconstruction target (warm-up quirk)

    def detach(self) -> "TrainState":
        return TrainState(None if self.model is None else self.model.detach(),
                          None if self.error is None else self.error.detach(),
                          None if self.target is None else self.target.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for a checkpoint: ``model.*`` (:meth:`LociV1State.state_dict`), ``error``, ``target``;
        copies, since some of the state's fields share memory (safetensors refuses aliases)."""
        out = {} if self.model is None else {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for name in ("error", "target"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return {k: v.detach().clone() for k, v in out.items()}

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "TrainState":
        model = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        unknown = sorted(k for k in sd if not k.startswith("model.") and k not in ("error", "target"))
        if unknown:
            raise ValueError(f"TrainState: unknown keys {unknown}")
        return cls(LociV1State.from_state_dict(model) if model else None, sd.get("error"), sd.get("target"))


@dataclass
class Iteration:
    """One iteration's loss, its logged terms and the state for the next iteration."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    state: TrainState = field(default_factory=TrainState)
    output: Any = None  # the model's StepOutput (None for a background-only iteration)


def rms(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel root mean square over the channels: (B, C, H, W) -> (B, 1, H, W)."""
    return torch.sqrt((x ** 2).mean(dim=1, keepdim=True))


def iteration_target(target: torch.Tensor, state: TrainState, first: bool, warmup: bool,
                     settings: TrainSettings) -> torch.Tensor:
    """The target an iteration is scored against: the given one, except in the warm-up iterations after the
    first, where upstream keeps the previous iteration's masked target (§11.14; ``carry_warmup_target``)."""
    if warmup and not first and settings.carry_warmup_target and state.target is not None:
        return state.target
    return target


def reconstruction_target(target: torch.Tensor, bg_error: torch.Tensor, init: float) -> torch.Tensor:
    """clip(target·fg·(1 - i) + target·i, 0, 1) with fg = [bg_error > 0.1]."""
    fg = torch.gt(bg_error, 0.1).to(target.dtype).detach()
    return torch.clip(target * fg * (1 - init) + target * init, 0, 1)


def background_iteration(model, frame: torch.Tensor, background: torch.Tensor, target: torch.Tensor) -> Iteration:
    """Upstream's very first iteration of a run (§3.2 item 3): L1 of the gated background against the target,
    with the model's state reset (the next iteration starts a sequence again)."""
    gated = model.background(frame, background)[1]
    loss = F.l1_loss(gated, target)
    zero = torch.zeros((), device=frame.device)
    terms = {k: zero for k in TERMS}
    terms["init_status"] = torch.tensor(model.init_status())
    return Iteration(loss, terms, TrainState(target=None))


def train_iteration(model, frame: torch.Tensor, target: torch.Tensor, target_xyz: torch.Tensor | None,
                    background: torch.Tensor, state: TrainState, settings: TrainSettings, *,
                    noise: StepNoise | None = None) -> Iteration:
    """One ordinary iteration: forward, loss, error map and the next state.

    Args:
        model: a :class:`~loci_fast.loci_v1.LociV1` (not a DeepSpeed engine).
        frame: (B, 3, h, w) the input frame; ``target`` (B, 3, h, w) what it is scored against (already
            chosen by :func:`iteration_target`), in [0, 1].
        target_xyz: (B, 3) the snitch's world position at the target frame (None: no tracking loss).
        background: (B or 1, 3, H', W') the static background image.
        state: the previous iteration's (a fresh ``TrainState()`` at a sequence start).
    """
    out, model_state = model.step(frame, background, state.model, state.error, noise)
    position_loss = out.position_loss * settings.position_regularizer
    object_loss = out.object_loss * settings.object_regularizer
    time_loss = out.time_loss * settings.time_regularizer
    tracking = torch.zeros((), device=frame.device)
    if out.snitch is not None and target_xyz is not None:
        tracking = tracking_loss(out.snitch, target_xyz.to(out.snitch.dtype), model.camera) * settings.supervision_factor
    bg_error = rms(target - out.background).detach()
    error = (torch.sqrt(rms(target - out.output).detach()) * bg_error).detach()
    init = max(0.0, min(1.0, model.init_status()))
    masked = reconstruction_target(target, bg_error, init)
    bce = F.binary_cross_entropy(torch.clip(out.output, 0, 1), masked)
    loss = (bce + position_loss + object_loss + time_loss + tracking).reshape(())
    slots = (out.mask[:, :-1].detach().amax(dim=(2, 3)) > 0.5).to(frame.dtype).sum(dim=1).mean()
    openings = torch.stack([o.detach().float().reshape(()) for o in out.openings]).mean() if out.openings \
        else torch.zeros(())
    terms = {"bce": bce.detach(), "position_loss": position_loss.detach().reshape(-1)[0],
             "object_loss": object_loss.detach().reshape(-1)[0], "time_loss": time_loss.detach().reshape(-1)[0],
             "tracking_loss": tracking.detach(), "init_status": torch.tensor(model.init_status()),
             "openings": openings, "slots": slots}
    return Iteration(loss, terms, TrainState(model_state, error, masked.detach()), out)
