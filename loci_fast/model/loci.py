"""``Loci``: one frame of Loci-Segmented (reference §14), with the slot state explicit.

``step(rgb, depth, state, teacher_forcing=...)`` runs the background, object discovery, the
encoder, the current decode and, on prediction steps, the update gate, the predictor and the next
frame's decode, each composited over a background through ``K.composite_slots`` (§8.5). It returns
upstream's two output dicts and the next :class:`~loci_fast.model.state.SlotState`.

The background module is a constructor argument (``background.uncertainty_estimation(x)[0]`` is the
clean uncertainty map; ``background(src, tgt, u_src, u_tgt, delta_t, color)[:2]`` the RGB and depth),
so this file does not depend on how it is built.

Random draws happen where upstream makes them (§14.1), inside the modules, in this order: the
background's, ObjectDiscovery's, the encoder's Binarize (training), the current decode's priority
noise, then on prediction steps the update gate's, the predictor's and the next decode's.

Inference modes "random", "regularization" (on teacher-forcing steps the decodes drop slots that
look like a near duplicate of another, :func:`similarity_mask_drop`) and "segmentation" (on
teacher-forcing steps the reconstruction keeps the mask it was given, the proposal's at a sequence
start; the proposal itself runs in :class:`~loci_fast.model.loci_model.LociModel`). The auxiliary
losses (position and time regularisers, §16.3) are computed by ``loci_fast.model.losses.loci`` from
the returned ``last`` values and the prediction.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from loci_fast import kernels as K

from .compat import cfg_get
from .decoder import LociDecoder, competitor_sigmoid
from .encoder import LociEncoder
from .object_discovery import ObjectDiscovery
from .predictor import LatentPredictor
from .state import SlotState, initial_slot_state
from .update_gate import UpdateGate

VISIBLE = 0.8  # mask value above which a pixel counts as visible in the occlusion ratio
MODES = ("random", "regularization")  # the per-frame step alone; LociModel adds "segmentation"
DROP_VISIBLE = 0.75  # a slot whose composited mask never exceeds this is "invisible" to the mask drop
DROP_SIGMA_SCALE = 25.0
DROP_LOGIT = -10.0  # mask logit of a dropped slot


def similarity_mask_drop(position: torch.Tensor, gestalt: torch.Tensor, mask_logits: torch.Tensor,
                         noise: torch.Tensor | None = None) -> torch.Tensor:
    """Upstream's "regularization" mask drop (reference §1.4): mask logits with near-duplicate slots set to -10.

    Similarity of slots i < j = Pearson correlation of their gestalts (over the 3G+1 values) times a
    closeness weight exp(-|q_i - q_j| / (2·25·s_i·s_j + 1e-5)), q = (x, y, z, z), s = std. Invisible
    slots (composited mask max <= 0.75) count with position 0 and gestalt 0.5 + 0.01·ε, ε (B, 3G+1, O)
    = ``randn_like`` unless ``noise`` is given; it is drawn on every call. After relu, subtracting the
    batch mean m and dividing by 1 - m, slot i is dropped if any later slot j has similarity >= 1e-5.
    No gradient flows through the decision.
    """
    b, o = mask_logits.shape[:2]
    competitor = torch.ones_like(mask_logits[:, :1])
    visible = (torch.softmax(torch.cat([mask_logits, competitor], 1), 1)[:, :-1].amax(dim=(2, 3)) > DROP_VISIBLE)
    visible = visible.to(mask_logits.dtype).detach().view(b, 1, o)
    codes = gestalt.detach().view(b, o, -1).transpose(1, 2)  # (B, 3G+1, O)
    if noise is None:
        noise = torch.randn_like(codes)
    codes = codes * visible + (1 - visible) * (0.5 + noise * 0.01)
    where = position.detach().view(b, o, 4) * visible.view(b, o, 1)  # (B, O, 4)
    q = torch.cat([where[..., :3], where[..., 2:3]], dim=2)
    std = where[..., 3]
    distance = torch.sqrt(((q[:, :, None] - q[:, None]) ** 2).sum(-1))
    closeness = torch.exp(-distance / (2 * (std[:, :, None] * std[:, None] * DROP_SIGMA_SCALE) + 1e-5))
    centred = codes - codes.mean(dim=1, keepdim=True)
    cov = centred.transpose(1, 2).bmm(centred) / (codes.shape[1] - 1)
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    similarity = torch.relu(cov / torch.sqrt(var[:, :, None] * var[:, None]) * closeness)
    mean = similarity.mean()
    similarity = torch.relu(similarity - mean) / (1 - mean)
    similarity = torch.triu(similarity) * (1 - torch.eye(o, dtype=similarity.dtype, device=similarity.device))
    keep = (similarity.amax(dim=2) < 1e-5).to(mask_logits.dtype).view(b, o, 1, 1)
    return mask_logits * keep + DROP_LOGIT * (1 - keep)


class StepOutput(NamedTuple):
    reconstruction: dict[str, torch.Tensor]  # this frame, from the encoder (gated on prediction steps)
    prediction: dict[str, torch.Tensor]  # this frame's background; on prediction steps the next frame
    last: dict[str, torch.Tensor]  # what this step started from, after ObjectDiscovery (for the regularisers)
    state: SlotState  # hand this to the next step


class Loci(nn.Module):
    """Loci-s's per-frame step; submodule names (and so state-dict prefixes) are upstream's."""

    modes: tuple[str, ...] = MODES

    def __init__(self, encoder: LociEncoder, decoder: LociDecoder, predictor: LatentPredictor,
                 update_gate: UpdateGate, object_discovery: ObjectDiscovery, background: nn.Module, *,
                 input_depth: bool = False, inference_mode: str = "random") -> None:
        super().__init__()
        if inference_mode not in self.modes:
            hint = ("; segmentation starts from the position proposal: build the whole model, "
                    "loci_fast.model.loci_model.LociModel") if inference_mode == "segmentation" else ""
            raise ValueError(f"inference_mode: {inference_mode!r} is not supported by {type(self).__name__}; "
                             f"supported: {', '.join(self.modes)}{hint}")
        self.encoder, self.decoder, self.predictor = encoder, decoder, predictor
        self.update_gate, self.object_discovery, self.background = update_gate, object_discovery, background
        self.num_slots = decoder.num_slots
        self.input_depth = input_depth
        self.inference_mode = inference_mode

    @classmethod
    def from_config(cls, model_cfg: Any, background: nn.Module) -> "Loci":
        """Build every module but the background from the ``model`` section of a Loci-s config."""
        return cls(LociEncoder.from_config(model_cfg), LociDecoder.from_config(model_cfg),
                   LatentPredictor.from_config(model_cfg), UpdateGate.from_config(model_cfg),
                   ObjectDiscovery.from_config(model_cfg), background,
                   input_depth=bool(cfg_get(model_cfg, "input_depth", False)),
                   inference_mode=str(cfg_get(model_cfg, "inference_mode", "random")))

    def initial_state(self, batch_size: int, *, device=None, dtype: torch.dtype = torch.float32) -> SlotState:
        """The state at a sequence start."""
        return initial_slot_state(batch_size, self.num_slots, self.predictor.width, self.predictor.num_cells,
                                  device=device, dtype=dtype)

    def run_decoder(self, position, gestalt, priority, bg_rgb, bg_depth, compute_raw: bool,
                    teacher_forcing: bool = False) -> dict[str, torch.Tensor]:
        """Decode the slots and composite them over the background (§8.5); the "regularization" mode's
        mask drop acts on teacher-forcing steps."""
        mask, rgb, depth, mask_raw, depth_raw = self.decoder(position, gestalt, priority, compute_raw=compute_raw)
        if teacher_forcing and self.inference_mode == "regularization":
            mask = similarity_mask_drop(position, gestalt, mask)
        full_mask, output_rgb, output_depth = K.composite_slots(mask, rgb, depth, bg_rgb, bg_depth)
        mask_raw = competitor_sigmoid(mask_raw)
        visible = (full_mask[:, :-1] > VISIBLE).sum(dim=(2, 3)).to(mask.dtype)
        unoccluded = (mask_raw > VISIBLE).sum(dim=(2, 3)).to(mask.dtype)
        occlusion = torch.clamp(1 - visible / (unoccluded + 1e-8), 0, 1)
        return {"output_rgb": output_rgb, "output_depth": output_depth, "mask": full_mask,
                "rgb": torch.cat([rgb, bg_rgb], 1), "depth": torch.cat([depth, bg_depth], 1), "mask_raw": mask_raw,
                "depth_raw": depth_raw, "occlusion": occlusion}

    def forward(self, input_rgb: torch.Tensor, input_depth: torch.Tensor | None, state: SlotState, *,
                teacher_forcing: bool, redecode_last: bool = False, evaluate: bool = False) -> StepOutput:
        """One frame. ``input_depth`` (B, 1, H, W) is read only when the config's ``input_depth`` is on
        (otherwise the state's composited depth of the last step stands in, as upstream).

        ``redecode_last``: decode the last latents again instead of using the state's slot RGB and
        depth; upstream's training loop does this at the first step of every truncated-BPTT chunk
        (§14 step 4). ``evaluate``: the prediction decode skips the raw masks (upstream's
        evaluate/test), and its ``mask_raw`` is then σ(occluded logits - 1).
        """
        o = self.num_slots
        s = state
        b = input_rgb.shape[0]
        rgb_last = None if redecode_last else s.rgb
        depth_raw_last = None if redecode_last else s.depth_raw
        depth_in = input_depth if self.input_depth else s.output_depth
        if self.input_depth and input_depth is None:
            raise ValueError("input_depth: this model takes depth as an input (model.input_depth), received None")

        bg_in = torch.cat([input_rgb, input_depth], 1) if self.input_depth else input_rgb
        uncertainty = self.background.uncertainty_estimation(bg_in)[0]
        bg = self.background(bg_in, bg_in, uncertainty, uncertainty, torch.zeros_like(uncertainty[:, :1, :1, :1]),
                             torch.ones_like(input_rgb[:, :1, :1, :1]))
        bg_rgb, bg_depth = bg[0], bg[1]
        bg_rgb_last = s.bg_rgb if s.bg_rgb is not None else bg_rgb
        bg_depth_last = s.bg_depth if s.bg_depth is not None else bg_depth

        mask_last = s.mask
        error = uncertainty if mask_last is None else torch.relu(uncertainty - mask_last[:, :-1].sum(1, keepdim=True))
        found = self.object_discovery(error, mask_last, s.position, s.gestalt, s.priority, s.visibility)
        position_last, gestalt_last, priority_last = found.position, found.gestalt, found.priority

        mask_raw_last, occlusion_last = s.mask_raw, s.occlusion
        if rgb_last is None or depth_raw_last is None or depth_in is None or mask_raw_last is None \
                or occlusion_last is None:
            redo = self.run_decoder(position_last, gestalt_last, None, bg_rgb_last, bg_depth_last, True,
                                    teacher_forcing)
            rgb_last = redo["rgb"] if rgb_last is None else rgb_last
            depth_raw_last = redo["depth_raw"] if depth_raw_last is None else depth_raw_last
            depth_in = redo["output_depth"] if depth_in is None else depth_in
            mask_raw_last = redo["mask_raw"] if mask_raw_last is None else mask_raw_last
            occlusion_last = redo["occlusion"] if occlusion_last is None else occlusion_last
        if mask_last is None:
            mask_last = input_rgb.new_zeros(b, o + 1, *input_rgb.shape[2:])
        error_last = torch.relu(uncertainty - mask_last[:, :-1].sum(1, keepdim=True))

        position, gestalt, priority = self.encoder(input_rgb, depth_in, error_last, mask_last, mask_raw_last,
                                                   rgb_last, depth_raw_last, position_last, gestalt_last,
                                                   slot_reset=found.slot_reset, use_hyper_weights=True)
        current = self.run_decoder(position, gestalt, priority, bg_rgb_last, bg_depth_last, True, teacher_forcing)
        if teacher_forcing and self.inference_mode == "segmentation" and s.mask is not None:
            current["mask"] = s.mask.clone()  # upstream: output_cur['mask'] = init_mask
        prediction: dict[str, torch.Tensor] = {"bg_rgb": bg_rgb, "bg_depth": bg_depth}
        hidden = s.predictor_hidden
        if not teacher_forcing:
            gated = self.update_gate(position, gestalt, priority, current["occlusion"], position_last, gestalt_last,
                                     priority_last, occlusion_last)
            position, gestalt, priority = gated.position, gated.gestalt, gated.priority
            nxt = self.predictor(position, gestalt, priority, hidden, s.traces)
            hidden = nxt.hidden
            prediction.update(self.run_decoder(nxt.position, nxt.gestalt, nxt.priority, bg_rgb, bg_depth,
                                               not evaluate))
            prediction.update(position=nxt.position, gestalt=nxt.gestalt, priority=nxt.priority,
                              position_gate=gated.position_gate, gestalt_gate=gated.gestalt_gate,
                              gate_openings=gated.openings, predictor_openings=nxt.openings)
        reconstruction = {**current, "position": position, "gestalt": gestalt, "priority": priority,
                          "uncertainty": uncertainty}

        # upstream's next step reads the prediction after a prediction step, the reconstruction otherwise
        carry = reconstruction if teacher_forcing else prediction
        new_state = SlotState(
            predictor_hidden=hidden, traces=s.traces, extra=dict(s.extra), visibility=found.visibility,
            bg_rgb=bg_rgb, bg_depth=bg_depth,
            **{k: carry[k] for k in ("position", "gestalt", "priority", "mask", "mask_raw", "occlusion", "rgb",
                                     "depth_raw", "output_depth")})
        last = {"position": position_last, "gestalt": gestalt_last, "priority": priority_last, "mask": mask_last,
                "rgb": rgb_last, "slot_reset": found.slot_reset}
        return StepOutput(reconstruction, prediction, last, new_state)
