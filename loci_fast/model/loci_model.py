"""``LociModel``: the whole Loci-s model and one truncated-BPTT training chunk (reference §14, §17.5).

It is the per-frame step :class:`~loci_fast.model.loci.Loci` with the modules it owns built from a Loci-s
config: encoder, decoder, predictor, update gate, object discovery, the dynamic background (frozen:
its parameters never train, but it runs in whatever mode the model is in, as upstream, so its
Binarize noise stays on in training) and, in segmentation mode, the position proposal (frozen too).
State-dict keys are upstream's ``Loci`` keys (upstream's LociModule keys without ``net.``).

``forward(rgb, depth, time_steps, use_depth, state)`` runs one chunk of upstream's TBPTT schedule:
a chunk that does not start a sequence is preceded by the last frame of the previous chunk (kept in
the state), so K+1 time stamps give K steps, each step's frame is frame i (frame 0 on teacher-forcing
steps), and the loss terms are summed over the steps and divided by K+1, as upstream.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from .compat import cfg_get, resolve_compat
from .decoder import LociDecoder
from .encoder import LociEncoder
from .loci import Loci, StepOutput
from .losses import MaskedL1SSIMLoss
from .losses import loci as L
from .object_discovery import ObjectDiscovery
from .predictor import LatentPredictor
from .state import SlotState
from .update_gate import UpdateGate

#: prefixes of the parameters that never train in the ``loci`` stage
FROZEN = ("background.", "proposal.")
#: state.extra keys holding the previous chunk's last frame
LAST_FRAME = ("last.rgb", "last.depth", "last.time")


class ChunkOutput(NamedTuple):
    loss: torch.Tensor  # the weighted total (§17.5)
    terms: dict[str, torch.Tensor]  # the logged terms of losses.loci.TERMS and the gestalt statistics
    steps: list[StepOutput]  # every step's outputs
    state: SlotState  # what the next chunk of this sequence continues from


class LociModel(Loci):
    """The Loci-s network with its loss weights (``encoder_regularizer`` 0.1, ``position_regularizer`` 1,
    ``object_regularizer`` 0, ``time_regularizer`` 1 by default) and regulariser warm-up ``teacher_forcing``
    (the run's ``teacher_forcing``, 10 in loci-s.json)."""

    modes = ("random", "regularization", "segmentation")

    def __init__(self, *args, proposal: nn.Module | None = None, teacher_forcing: int = 10,
                 sequence_len: int = 24, weights: dict[str, float] | None = None, rgb_loss: str = "YCbCrL2SSIMLoss",
                 batch_scaled_rgb: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.inference_mode == "segmentation" and proposal is None:
            raise ValueError("inference_mode 'segmentation' needs the position proposal (model.position_proposal)")
        if proposal is not None:
            self.proposal = proposal
        self.teacher_forcing, self.sequence_len = int(teacher_forcing), int(sequence_len)
        self.weights = {"encoder_regularizer": 0.1, "position_regularizer": 1.0, "object_regularizer": 0.0,
                        "time_regularizer": 1.0, **(weights or {})}
        if self.weights["object_regularizer"]:
            raise ValueError("model.object_regularizer > 0 (upstream's MaskModulatedObjectLoss) is not "
                             "implemented; every shipped config sets it to 0")
        self.rgb_loss, self.depth_loss = L.rgb_loss_function(rgb_loss), MaskedL1SSIMLoss()
        self.batch_scaled_rgb = bool(batch_scaled_rgb)  # compat flag rgb_loss_batch_scaled (§24.7)
        self.freeze()

    @classmethod
    def from_config(cls, cfg: Any, background: nn.Module | None = None) -> "LociModel":
        """Build from a whole Loci-s config (``model`` plus the run's ``teacher_forcing`` and
        ``sequence_len``); the background from ``model.background`` unless given."""
        from .background import UncertaintyBackground

        m = cfg["model"]
        mode = str(cfg_get(m, "inference_mode", "random"))
        proposal = None
        if mode == "segmentation":
            from .proposal import LociProposal

            proposal = LociProposal.from_config(m)
        weights = {k: float(cfg_get(m, k, d)) for k, d in (("encoder_regularizer", 0.1), ("position_regularizer", 1.0),
                                                            ("object_regularizer", 0.0), ("time_regularizer", 1.0))}
        return cls(LociEncoder.from_config(m), LociDecoder.from_config(m), LatentPredictor.from_config(m),
                   UpdateGate.from_config(m), ObjectDiscovery.from_config(m),
                   background if background is not None else UncertaintyBackground.from_config(m),
                   input_depth=bool(cfg_get(m, "input_depth", False)), inference_mode=mode, proposal=proposal,
                   teacher_forcing=int(cfg_get(cfg, "teacher_forcing", 10)),
                   sequence_len=int(cfg_get(cfg, "sequence_len", 24)), weights=weights,
                   rgb_loss=str(cfg_get(m, "rgb_loss", "YCbCrL2SSIMLoss")),
                   batch_scaled_rgb=resolve_compat(m)["rgb_loss_batch_scaled"])

    def freeze(self) -> None:
        """requires_grad off for the background (and the proposal), as upstream."""
        for name, param in self.named_parameters():
            if name.startswith(FROZEN):
                param.requires_grad_(False)

    def step(self, *args, **kwargs) -> StepOutput:
        """One frame: :meth:`Loci.forward`."""
        return Loci.forward(self, *args, **kwargs)

    def segmentation_start(self, state: SlotState, rgb0: torch.Tensor, depth0: torch.Tensor) -> SlotState:
        """Segmentation mode at a sequence start (§13.4): positions and masks from the proposal on frame 0
        (the dataset depth ``depth0``); works in train and eval mode alike."""
        from .proposal.slots import proposal_slots, segmentation_uncertainty

        u0 = segmentation_uncertainty(self.background.uncertainty_estimation, rgb0, depth0, self.input_depth)
        init = proposal_slots(self.proposal, rgb0, depth0, self.num_slots, u0)
        return state.replace(position=init.position.to(rgb0.dtype), mask=init.mask.to(rgb0.dtype))

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, time_steps: torch.Tensor, use_depth: torch.Tensor,
                state: SlotState, *, evaluate: bool = False) -> ChunkOutput:
        """One chunk: ``rgb`` (B, k, 3, H, W), ``depth`` (B, k, 1, H, W) (-1 without depth), ``time_steps`` (k,)
        (or (B, k): sample 0's are read, as upstream), ``use_depth`` (B,), ``state`` the sequence's state
        (fresh at a sequence start: then the first time stamp must be the sequence's first)."""
        ts = [int(t) for t in (time_steps[0] if time_steps.dim() == 2 else time_steps).tolist()]
        state = state.clone()  # cut here (§17.5 step 3); the traces updated in place stay this chunk's own
        extra = dict(state.extra)
        start = state.at_sequence_start and "last.rgb" not in extra
        if start:
            extra = {}
            if self.inference_mode == "segmentation":
                state = self.segmentation_start(state, rgb[:, 0], depth[:, 0])
        else:
            if "last.rgb" not in extra:
                raise ValueError("LociModel: a chunk in mid-sequence needs the previous chunk's last frame in the "
                                 "state (state.extra['last.rgb']); pass the state the previous chunk returned")
            rgb = torch.cat([extra["last.rgb"].to(rgb.dtype), rgb], 1)
            depth = torch.cat([extra["last.depth"].to(depth.dtype), depth], 1)
            ts = [int(extra["last.time"])] + ts
        for k in LAST_FRAME:
            extra.pop(k, None)
        depth_mask = use_depth.reshape(-1, 1, 1, 1, 1).to(depth.dtype) * (depth > 0).to(depth.dtype)
        n = len(ts)
        terms = {k: rgb.new_zeros(()) for k in L.TERMS}
        steps: list[StepOutput] = []
        for i in range(n - 1):
            tau = ts[i]
            t = i if tau >= 0 and self.sequence_len > 1 else 0
            tf = tau < 0
            out = self.step(rgb[:, t], depth[:, t], state.replace(extra=extra), teacher_forcing=tf,
                            redecode_last=i == 0, evaluate=evaluate)
            steps.append(out)
            state, extra = out.state, dict(out.state.extra)
            if not tf and not evaluate:
                o = self.num_slots
                terms["position_loss"] = terms["position_loss"] + L.position_loss(
                    out.prediction["position"], out.last["position"], out.last["mask"][:, :-1], extra, o,
                    self.teacher_forcing) / n
                terms["time_loss"] = terms["time_loss"] + L.time_loss(
                    out.prediction["mask"][:, :-1], out.last["rgb"][:, :-3], out.last["position"],
                    out.prediction["rgb"][:, :-3], out.prediction["position"], extra, o, self.teacher_forcing) / n
            rec = L.image_terms(self.rgb_loss, self.depth_loss, out.reconstruction["output_rgb"],
                                out.reconstruction["output_depth"], rgb[:, t], depth[:, t], depth_mask[:, t],
                                batch_scaled_rgb=self.batch_scaled_rgb)
            for k, v in rec.items():
                terms[f"reconstruction_{k}"] = terms[f"reconstruction_{k}"] + v / n
            if tau >= 0:
                pred = L.image_terms(self.rgb_loss, self.depth_loss, out.prediction["output_rgb"],
                                     out.prediction["output_depth"], rgb[:, t + 1], depth[:, t + 1],
                                     depth_mask[:, t + 1], batch_scaled_rgb=self.batch_scaled_rgb)
                for k, v in pred.items():
                    terms[f"prediction_{k}"] = terms[f"prediction_{k}"] + v / n
        loss = L.total_loss(terms, **self.weights)
        last = steps[-1]
        stats = dict(zip(("gestalt_bin_mean", "gestalt_bin_std", "gestalt_mean", "num_slots"),
                         L.binarization(last.reconstruction["gestalt"], last.reconstruction["mask"][:, :-1],
                                        self.num_slots)))
        terms.update({f"reconstruction_{k}": v for k, v in stats.items()})
        if "gestalt" in last.prediction:
            stats = dict(zip(("binarization_mean", "binarization_std", "gestalt_mean", "num_slots"),
                             L.binarization(last.prediction["gestalt"], last.prediction["mask"][:, :-1],
                                            self.num_slots)))
            terms.update({f"prediction_{k}": v for k, v in stats.items()})
            for gate in ("position_gate", "gestalt_gate"):
                g = last.prediction[gate].detach()
                terms[f"prediction_{gate}"] = g.mean()
                terms[f"prediction_{gate}_openings"] = (g > 0).to(g.dtype).mean()
        extra.update({"last.rgb": rgb[:, -1:].detach(), "last.depth": depth[:, -1:].detach(),
                      "last.time": torch.tensor(ts[-1], dtype=torch.int64, device=rgb.device)})
        return ChunkOutput(loss, terms, steps, state.replace(extra=extra))
