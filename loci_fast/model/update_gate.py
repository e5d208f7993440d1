"""``UpdateGate`` (reference §10.1): how much of this step's encoding replaces the last slot state.

An MLP over [current ; last] slot latents gives two ReTanh gates per slot, γ_p for the position and
γ_g for the gestalt and the priority; the blended latents are γ·current + (1 - γ)·last. The +3 before
the gate makes both start open (tanh(3) ≈ 0.995).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from loci_fast.blocks.retanh import ReTanh

from .compat import cfg_get

GATE_OFFSET = 3.0  # upstream adds 3 to the gate logits, so the gates start open


class GateOutput(NamedTuple):
    position: torch.Tensor  # (B, O*4) blended
    gestalt: torch.Tensor  # (B, O*(3G+1)) blended
    priority: torch.Tensor  # (B, O) blended with the gestalt gate
    position_gate: torch.Tensor  # (B, O) γ_p in [0, 1)
    gestalt_gate: torch.Tensor  # (B, O) γ_g in [0, 1)
    openings: torch.Tensor  # 0-dim: share of open gates


class UpdateGate(nn.Module):
    """``forward(p_cur, g_cur, π_cur, occ_cur, p_last, g_last, π_last, occ_last, noise=None) -> GateOutput``.

    All inputs in shared layout: positions (B, O*4), gestalts (B, O*(3G+1)), priorities and
    occlusions (B, O). ``gestalt_size`` is G (the code size of one of the three gestalt parts).
    In training mode the gate logits get ``noise_level``·ε, ε (B*O, 2) = ``randn_like`` unless
    ``noise`` is given (§14.1 step 8). State-dict keys are upstream's (``layers.0``, ``layers.1.1``,
    ..., for layers = 3: ``layers.0``, ``layers.1.1``, ``layers.3``).
    """

    def __init__(self, gestalt_size: int, num_hidden: int, num_layers: int, num_slots: int,
                 noise_level: float = 0.1, reg_lambda: float = 1e-5) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"UpdateGate num_layers: expected at least 2 (input and output layer), "
                             f"received {num_layers}")
        self.gestalt_size, self.num_slots = gestalt_size, num_slots
        num_inputs = 2 * (3 * gestalt_size + 7)  # per state: position 4, gestalt 3G+1, priority 1, occlusion 1
        self.layers = nn.Sequential(
            nn.Linear(num_inputs, num_hidden),
            *[nn.Sequential(nn.SiLU(), nn.Linear(num_hidden, num_hidden)) for _ in range(num_layers - 2)],
            nn.SiLU(),
            nn.Linear(num_hidden, 2),
        )
        self.gate = ReTanh(reg_lambda, noise_level)

    @classmethod
    def from_config(cls, model_cfg: Any) -> "UpdateGate":
        """From the ``model`` section: G, O and ``predictor.gate.{num_hidden,num_layers,noise_level,reg_lambda}``."""
        gate = model_cfg["predictor"]["gate"]
        return cls(int(model_cfg["gestalt_size"]), int(gate["num_hidden"]), int(gate["num_layers"]),
                   int(model_cfg["num_slots"]), float(cfg_get(gate, "noise_level", 0.1)),
                   float(cfg_get(gate, "reg_lambda", 1e-5)))

    def forward(self, position_cur: torch.Tensor, gestalt_cur: torch.Tensor, priority_cur: torch.Tensor,
                occlusion_cur: torch.Tensor, position_last: torch.Tensor, gestalt_last: torch.Tensor,
                priority_last: torch.Tensor, occlusion_last: torch.Tensor,
                noise: torch.Tensor | None = None) -> GateOutput:
        o, c = self.num_slots, 3 * self.gestalt_size + 1
        b = position_cur.shape[0]
        widths = {"position": 4, "gestalt": c, "priority": 1, "occlusion": 1}
        parts = []
        for when, tensors in (("cur", (position_cur, gestalt_cur, priority_cur, occlusion_cur)),
                              ("last", (position_last, gestalt_last, priority_last, occlusion_last))):
            for (name, width), t in zip(widths.items(), tensors):
                if t.shape != (b, o * width):
                    raise ValueError(f"UpdateGate {name}_{when}: expected ({b}, {o * width}) = (B, num_slots * "
                                     f"{width}), received {tuple(t.shape)}")
                parts.append(t.reshape(b * o, width))
        logits = self.layers(torch.cat(parts, dim=1)) + GATE_OFFSET
        gates, openings = self.gate(logits, noise)
        gp, gg = gates[:, 0:1], gates[:, 1:2]
        p_cur, g_cur, pi_cur, _, p_last, g_last, pi_last, _ = parts
        position = p_cur * gp + p_last * (1 - gp)
        gestalt = g_cur * gg + g_last * (1 - gg)
        priority = pi_cur * gg + pi_last * (1 - gg)
        return GateOutput(position.reshape(b, o * 4), gestalt.reshape(b, o * c), priority.reshape(b, o),
                          gp.reshape(b, o), gg.reshape(b, o), openings)
