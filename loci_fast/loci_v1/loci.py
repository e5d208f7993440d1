"""The original Loci model and its per-frame step (reference loci.md §2.11).

``LociV1.step(frame, background, state, error=None, noise=None)`` runs one frame:
1. at a sequence start (no error map or masks yet) error := RMS over channels of (frame - gated background);
2. dead slots are re-seeded (initial_states);
3. at a sequence start the masks are decoded from that state;
4. the state's own appearance is decoded without priority (A_prev);
5. encoder -> current state; predictor -> next state and snitch position;
6. compositing of the next frame: softmax over [slot mask logits, background logit], colours σ(logit - 2.5)
   per slot and the gated background;
7. the three regularisers (unless ``evaluate`` or ``test``), which decode twice more.
Every frame detaches the recurrent state first (upstream's one-step truncation); the GateL0RD cells
carry credit through their eligibility traces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .background import PrecalculatedBackground
from .compat import resolve_v1_compat
from .decoder import LociV1Decoder
from .encoder import LociV1Encoder
from .initial_states import InitialLatentStates
from .noise import StepNoise
from .predictor import LociV1Predictor
from .regularizers import (modulate, object_permanence_loss, position_loss, slot_max, time_consistency_loss,
                           update_memory)
from .state import LociV1State
from .tracker import CATER_CAMERA


@dataclass
class StepOutput:
    """One frame's outputs (the prediction of the next frame)."""

    output: torch.Tensor  # (B, 3, H, W) composite
    position: torch.Tensor  # (B, O·3) (row, col, s)
    gestalt: torch.Tensor  # (B, O·G)
    priority: torch.Tensor  # (B, O)
    mask: torch.Tensor  # (B, O+1, H, W), background last
    rgb: torch.Tensor  # (B, 3·(O+1), H, W) slot colours and the gated background
    background: torch.Tensor  # (B, 3, H, W) the raw background
    position_loss: torch.Tensor
    object_loss: torch.Tensor
    time_loss: torch.Tensor
    snitch: torch.Tensor | None  # (B, 2) screen (row, col), None without a tracker
    openings: tuple[torch.Tensor, ...]  # fraction of open gates per GateL0RD layer


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    try:
        return cfg[key]
    except (KeyError, IndexError, TypeError):
        return default


class LociV1(nn.Module):
    """The original Loci. Built from a model config (upstream's ``model`` block; loci.md §7):

    ``LociV1.from_config(cfg["model"], teacher_forcing=cfg["teacher_forcing"])``. Submodule names and
    parameter layouts are upstream's, so a converted ``net*.pt`` state dict loads strictly. ``camera``
    (4×4) is kept as a non-persistent buffer for the tracking loss; ``tracker=False`` drops the snitch head.
    """

    def __init__(self, *, num_objects: int, gestalt_size: int, input_size, latent_size, level: int,
                 encoder_channels: int, encoder_level1_channels: int, encoder_layers: int,
                 predictor_heads: int, predictor_layers: int, predictor_reg_lambda: float,
                 decoder_channels: int, decoder_level1_channels: int, decoder_layers: int,
                 teacher_forcing: int = 10, tracker: bool = True, camera=CATER_CAMERA,
                 compat: Mapping[str, bool] | None = None) -> None:
        super().__init__()
        input_size, latent_size = tuple(int(v) for v in input_size), tuple(int(v) for v in latent_size)
        if input_size != (latent_size[0] * 16, latent_size[1] * 16):
            raise ValueError(f"model.input_size {list(input_size)} must be 16x model.latent_size {list(latent_size)}")
        if level not in (1, 2):
            raise ValueError(f"model.level {level}: the original Loci runs at level 1 (input/4) or 2 (input)")
        self.num_objects, self.gestalt_size, self.level = num_objects, gestalt_size, level
        self.input_size, self.latent_size = input_size, latent_size
        self.teacher_forcing = int(teacher_forcing)
        self.compat = resolve_v1_compat({"compat": dict(compat or {})})
        self.encoder = LociV1Encoder(input_size, latent_size, num_objects, encoder_channels,
                                     encoder_level1_channels, encoder_layers, gestalt_size, level)
        self.predictor = LociV1Predictor(num_objects, gestalt_size, predictor_heads, predictor_layers,
                                         predictor_reg_lambda, tracker=tracker)
        self.decoder = LociV1Decoder(latent_size, num_objects, gestalt_size, decoder_channels,
                                     decoder_level1_channels, decoder_layers, level)
        self.background = PrecalculatedBackground(input_size)
        self.initial_states = InitialLatentStates(gestalt_size, num_objects, input_size, level)
        self.register_buffer("camera", torch.tensor(camera, dtype=torch.float32), persistent=False)

    @classmethod
    def from_config(cls, model_cfg: Any, *, teacher_forcing: int = 10) -> "LociV1":
        """From upstream's ``model`` block (a dict or config node); ``model.compat`` selects quirk flags."""
        enc, pred, dec = model_cfg["encoder"], model_cfg["predictor"], model_cfg["decoder"]
        if _get(model_cfg, "img_channels", 3) != 3:
            raise ValueError("model.img_channels: the original Loci supports 3 (BGR) only")
        if _get(_get(model_cfg, "background", {}), "use", False):
            raise ValueError("model.background.use true selects upstream's BackgroundEnhancer, which is broken "
                             "at f5a7023 and not supported; set it to false (the precalculated background)")
        return cls(num_objects=model_cfg["num_objects"], gestalt_size=model_cfg["gestalt_size"],
                   input_size=model_cfg["input_size"], latent_size=model_cfg["latent_size"],
                   level=model_cfg["level"], encoder_channels=enc["channels"],
                   encoder_level1_channels=enc["level1_channels"], encoder_layers=enc["num_layers"],
                   predictor_heads=pred["heads"], predictor_layers=pred["layers"],
                   predictor_reg_lambda=pred["reg_lambda"], decoder_channels=dec["channels"],
                   decoder_level1_channels=dec["level1_channels"], decoder_layers=dec["num_layers"],
                   teacher_forcing=teacher_forcing, tracker=_get(model_cfg, "tracker", True),
                   compat=_get(model_cfg, "compat", None))

    def set_level(self, level: int) -> None:
        """Switch the curriculum level (1: input/4, 2: input); weights are shared by both."""
        if level not in (1, 2):
            raise ValueError(f"level {level}: expected 1 or 2")
        self.level = self.encoder.level = self.decoder.level = self.initial_states.level = level

    @property
    def cells(self):
        """The predictor's GateL0RD cells."""
        return self.predictor.predictor.cells

    def initial_state(self, batch: int, *, device=None, dtype: torch.dtype = torch.float32) -> LociV1State:
        """A sequence start for ``batch`` videos (upstream's ``reset``)."""
        return LociV1State.start(self.cells, batch * self.num_objects, device=device, dtype=dtype)

    def init_status(self) -> float:
        """The background fade-in status tanh(alpha/2) (upstream's ``get_init_status``)."""
        return self.background.init_status()

    def compose(self, position, gestalt, priority, bg_mask, background):
        """Decode and composite: ``(output (B, 3, H, W), mask (B, O+1, H, W), rgb (B, 3(O+1), H, W))``."""
        mask, rgb = self.decoder(position, gestalt, priority)
        mask = torch.softmax(torch.cat((mask, bg_mask), dim=1), dim=1)
        rgb = torch.cat((torch.sigmoid(rgb - 2.5), background), dim=1)
        b, k = mask.shape[:2]
        output = torch.sum(mask.unsqueeze(2) * rgb.view(b, k, 3, *mask.shape[2:]), dim=1)
        return output, mask, rgb

    def step(self, frame: torch.Tensor, background: torch.Tensor, state: LociV1State | None = None,
             error: torch.Tensor | None = None, noise: StepNoise | None = None, *, evaluate: bool = False,
             test: bool = False) -> tuple[StepOutput, LociV1State]:
        """One frame; returns its outputs and the state for the next frame.

        Args:
            frame: (B, 3, h, w) BGR in [0, 1] at the level's resolution (input/4 at level 1).
            background: (B or 1, 3, H', W') the static background image (full size or the frame's).
            state: from the previous step, or None / a fresh :meth:`initial_state` at a sequence start.
            error: (B, 1, h, w) the error map of the previous prediction (None at a sequence start).
            noise: injected draws (noise.py); None draws everything from the global RNG as upstream.
            evaluate: re-decode the slot colours without priority (visualisation) and skip the regularisers.
            test: skip the regularisers.
        """
        b = frame.shape[0]
        o = self.num_objects
        noise = noise or StepNoise()
        if state is None:
            state = self.initial_state(b, device=frame.device, dtype=frame.dtype)
        state = state.detach()
        use_noise = self.training or self.compat["noise_in_eval"]
        mask = state.mask
        if error is None or mask is None:
            _, gated, _ = self.background(frame, background)
            error = torch.sqrt(((frame - gated) ** 2).mean(dim=1, keepdim=True)).detach()
        position, gestalt, priority, seed_mask = self.initial_states(
            error, mask, state.seed_mask, state.position, state.gestalt, state.priority,
            init_gestalt=noise.init_gestalt, init_candidates=noise.init_candidates)
        if mask is None:
            bg_logit, _, _ = self.background(frame, background)
            mask = torch.softmax(torch.cat((self.decoder(position, gestalt, priority)[0], bg_logit), 1), dim=1)
        position_last = position
        appearance_last = self.decoder(position_last, gestalt)[1]
        bg_logit, gated, raw = self.background(frame, background)
        position, gestalt, priority = self.encoder(frame, error, mask, appearance_last, position, priority)
        position, gestalt, priority, snitch, hidden, openings = self.predictor(
            position, gestalt, priority, state.hidden, state.traces, noise, use_noise)
        output, mask, rgb = self.compose(position, gestalt, priority, bg_logit, gated)

        zero = torch.tensor(0, device=frame.device)
        losses = [zero, zero, zero]
        new = LociV1State(hidden=hidden, traces=state.traces, reg_calls=state.reg_calls, position=position,
                          gestalt=gestalt, priority=priority, mask=mask, seed_mask=seed_mask,
                          reg_mask_position=state.reg_mask_position, reg_mask_object=state.reg_mask_object,
                          reg_mask_time=state.reg_mask_time, modulator_position=state.modulator_position,
                          modulator_gestalt=state.modulator_gestalt)
        if not evaluate and not test:
            slots = mask[:, :-1].detach()
            m = slot_max(slots)
            new.reg_calls = state.reg_calls + 1
            warm = new.reg_calls <= self.teacher_forcing
            new.reg_mask_position = update_memory(state.reg_mask_position, m.view(b * o, 1), warm)
            new.reg_mask_object = update_memory(state.reg_mask_object, m, warm)
            new.reg_mask_time = update_memory(state.reg_mask_time, m, warm)
            appearance = self.decoder(position, gestalt)[1]
            p_mod, g_mod, (new.modulator_position, new.modulator_gestalt) = modulate(
                position, gestalt, slots, state.modulator_position, state.modulator_gestalt)
            appearance_mod = self.decoder(p_mod, g_mod)[1]
            if warm or state.reg_mask_position is None:
                losses = [torch.zeros(1, device=frame.device)] * 3
            else:
                losses = [position_loss(position, position_last, new.reg_mask_position),
                          object_permanence_loss(appearance, appearance_mod, m, new.reg_mask_object),
                          0.1 * time_consistency_loss(appearance_last, position_last, appearance, position,
                                                      new.reg_mask_time)]
        if evaluate and not test:
            rgb = self.compose(position, gestalt, None, bg_logit, gated)[2]
        out = StepOutput(output=output, position=position, gestalt=gestalt, priority=priority, mask=mask, rgb=rgb,
                         background=raw, position_loss=losses[0], object_loss=losses[1], time_loss=losses[2],
                         snitch=snitch, openings=openings)
        return out, new
