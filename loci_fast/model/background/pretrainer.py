"""``BackgroundPretrainer``: one training or validation step of the background stage (reference §17.4).

It holds the background ``net`` and the depth-context GestaltLoss counter (``context_loss``), the
two things upstream's Lightning module checkpoints, under the same names. ``forward(batch,
global_step)`` runs the uncertainty estimator on both frames, the background on the detached maps
(zeroed during warm-up), and the losses of ``loci_fast.model.losses.background``.

Random draws, in upstream's order: the source and the target uncertainty noise, then (training
only) the depth context's Binarize noise. ``draws`` may supply any of them by name
(``uncertainty_source``, ``uncertainty_target``, ``depth_context``).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..compat import cfg_get
from ..losses import GestaltLoss, MaskedYCbCrL2SSIMLoss
from ..losses.background import background_loss_terms, check_batch, loss_factors
from .module import UncertaintyBackground

DRAWS = ("uncertainty_source", "uncertainty_target", "depth_context")


class BackgroundPretrainer(nn.Module):
    """``out = pre(batch, global_step)``; the training loss is ``out["loss"]``."""

    def __init__(self, net: UncertaintyBackground, *, uncertainty_threshold: float = 0.1,
                 supervision_factor: float = 0.1):
        super().__init__()
        self.net = net
        self.context_loss = GestaltLoss()
        self.rgb_loss = MaskedYCbCrL2SSIMLoss()
        self.uncertainty_threshold, self.supervision_factor = uncertainty_threshold, supervision_factor

    @classmethod
    def from_config(cls, model_cfg: Any) -> "BackgroundPretrainer":
        bg = cfg_get(model_cfg, "background", {}) or {}
        return cls(UncertaintyBackground.from_config(model_cfg),
                   uncertainty_threshold=cfg_get(bg, "uncertainty_threshold", 0.1),
                   supervision_factor=cfg_get(bg, "supervision_factor", 0.1))

    def forward(self, batch: Mapping[str, torch.Tensor], global_step: int,
                draws: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Loss terms (upstream names, see ``losses.background.TERMS``) and the pictures' tensors:
        ``rgb``, ``depth``, ``motion_context``, ``depth_context``, ``u_source``, ``u_target``, ``region``."""
        check_batch(batch)
        draws = dict(draws or {})
        unknown = sorted(set(draws) - set(DRAWS))
        if unknown:
            raise ValueError(f"draws: unknown names {unknown}; valid: {', '.join(DRAWS)}")
        f = loss_factors(batch, global_step)
        if self.net.depth_input:
            source = torch.cat((batch["source_rgb"], batch["source_depth"]), 1)
            target = torch.cat((batch["target_rgb"], batch["target_depth"]), 1)
        else:
            source, target = batch["source_rgb"], batch["target_rgb"]
        u_s, _ = self.net.uncertainty_estimation(source, draws.get("uncertainty_source"))
        u_t, u_t_noised = self.net.uncertainty_estimation(target, draws.get("uncertainty_target"))
        keep = 1 - f["warmup"]
        out = self.net(source, target, u_s.detach() * keep, u_t.detach() * keep, batch["dt"].reshape(-1, 1),
                       f["color_input"], binarize_noise=draws.get("depth_context"))
        terms = background_loss_terms(
            rgb=out.rgb, depth=out.depth, depth_context=out.depth_context, u_source=u_s, u_target=u_t,
            u_target_noised=u_t_noised, batch=batch, factors=f, rgb_loss=self.rgb_loss,
            context_loss=self.context_loss, uncertainty_threshold=self.uncertainty_threshold,
            supervision_factor=self.supervision_factor)
        terms.update(rgb=out.rgb, depth=out.depth, motion_context=out.motion_context,
                     depth_context=out.depth_context, u_source=u_s, u_target=u_t)
        return terms
