"""``LociPretrainer``: every object-pretraining stage in one module (reference §15).

``pretrainer(rgb, depth, mask, iterations, mode)`` takes one object per sample, rgb (B, 3, H, W),
depth (B, 1, H, W) and its soft instance mask (B, 1, H, W), and returns upstream's dict of loss
terms and outputs. **The training loss is ``out["loss"]``**, the sum that upstream's Lightning
module forms: mask_loss + rgb_loss + depth_loss + position_loss + gestalt_loss + z_loss (terms a
mode does not use are 0). Modes:

* ``mask``, ``depth``, ``rgb``: the per-modality autoencoders (decoder pretraining);
* ``embedding``: the stand-alone patch autoencoders;
* ``all`` with ``iterations == 0`` (stage 1) or 1..3 (stage 2, refinement passes with time weights).

The step counters of the schedules (stage-2 time weights, decaying position loss) are persistent
buffers and advance once per forward call in training *and* evaluation, as upstream's do.

Precision: the module computes in the dtype of its inputs, which must match its parameters' (fp32,
or bf16/fp16 storage as under a DeepSpeed bf16/fp16 engine, whose fp32 buffers are cast at use).
Outputs and loss terms come out in that dtype; the target statistics, IoU and the image losses
reduce in fp32 for half-precision inputs (``precision.upcast``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .compat import cfg_get
from .decoder import LociDecoder, competitor_sigmoid
from .depth_decoder import PATCH
from .encoder import LociEncoder
from .losses import CallCounter, DecayingFactor, DecayingMSELoss, GestaltLoss, MaskedL1SSIMLoss, \
    MaskedYCbCrL2SSIMLoss
from .mask_center import PositionInMask
from .patch_codecs import UpscaleMLP
from .precision import upcast
from .pretrain_encoders import DepthPretrainer, MaskPretrainer, RGBPretrainer, patch_embedding

MODES = ("mask", "depth", "rgb", "embedding", "all")
LOSS_TERMS = ("mask_loss", "rgb_loss", "depth_loss", "position_loss", "gestalt_loss", "z_loss")
MASK_LOSS_WEIGHT = 100.0  # stages 1 and 2 scale the mask MSE by 100


def _targets(rgb: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Common target preparation (§15.2), all without gradient, in the mask's dtype.

    For fp16/bf16 inputs the whole-image statistics run in fp32 (a bf16 ``depth - mean`` keeps about
    two digits, and 1e-8 is 0 in fp16), then every target is cast back.
    """
    dtype = mask.dtype
    rgb, depth, mask = upcast(rgb), upcast(depth), upcast(mask)
    confidence = mask.detach()
    binary = (mask > 0.5).to(mask.dtype).detach()
    depth_weight = (depth >= 0).to(mask.dtype) * confidence
    area = binary.sum((1, 2, 3), keepdim=True)
    mean = (depth * binary).sum((1, 2, 3), keepdim=True) / (area + 1e-6)
    std = torch.sqrt(((depth - mean) ** 2 * binary).sum((1, 2, 3), keepdim=True) / (area + 1e-6))
    targets = {
        "confidence": confidence,
        "binary": binary,
        "depth_weight": depth_weight,
        "gt_depth": ((depth - mean) / (std + 1e-6)) * binary,  # normalised depth inside the mask
        "gt_z": (depth * binary).sum((1, 2, 3)).unsqueeze(1) / (area.view(-1, 1) + 1e-8),
        "gt_z_scale": std.view(-1, 1),
        "z_weight": depth_weight.amax((1, 2, 3)).unsqueeze(1),
        "masked_rgb": rgb * binary,
    }
    return {k: v.to(dtype) for k, v in targets.items()}


def _mse(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """F.mse_loss in the dtype of ``prob``; the mean over every pixel runs in fp32 for fp16/bf16."""
    return F.mse_loss(upcast(prob), upcast(target)).to(prob.dtype)


@torch.no_grad()
def iou_per_sample(prob: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """IoU([prob > 0.5], binary) of every sample, (B,), counted in fp32 for fp16/bf16."""
    binary = upcast(binary)
    pred = (prob > 0.5).to(binary.dtype)
    inter = (pred * binary).sum((1, 2, 3))
    union = torch.maximum(pred, binary).sum((1, 2, 3))
    return inter / (union + 1e-6)


@torch.no_grad()
def mean_iou(prob: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """Batch mean of :func:`iou_per_sample`, in binary's dtype."""
    return torch.mean(iou_per_sample(prob, binary)).to(binary.dtype)


class LociPretrainer(nn.Module):
    """Object pretraining for Loci-Segmented: a one-slot ``LociEncoder`` and ``LociDecoder``, the
    three modality autoencoders whose decoders ``LociDecoder`` reuses, and stand-alone patch codecs.

    ``model_cfg`` is the ``model`` section of a config (upstream keys, §21). Submodules ``encoder``
    and ``decoder`` are the ones the full model loads after pretraining.
    """

    def __init__(self, model_cfg: Any) -> None:
        super().__init__()
        size = tuple(int(s) for s in model_cfg["input_size"])
        g = int(model_cfg["gestalt_size"])
        emb, dec = model_cfg["embedding"], model_cfg["decoder"]
        ch = {k: int(emb[k]["channels"]) for k in ("mask", "depth", "rgb")}
        ex = {k: int(emb[k]["expansion"]) for k in ("mask", "depth", "rgb")}
        gas = int(cfg_get(model_cfg, "gradient_accumulation_steps", 1) or 1)
        self.input_size, self.gestalt_size = size, g
        self.input_depth = bool(cfg_get(model_cfg, "input_depth", False))

        self.encoder = LociEncoder.from_config(model_cfg, num_slots=1)
        self.decoder = LociDecoder.from_config(model_cfg, num_slots=1)

        self.mask_pretrainer = MaskPretrainer(
            size, g, ch["mask"], dec["mask"]["pretrain_encoder_blocks"],
            int(dec["mask"]["pretrain_encoder_channels"]), ex["mask"])
        self.depth_pretrainer = DepthPretrainer(
            size, g, int(dec["depth"]["layers"]), ch["mask"], ch["depth"], dec["depth"]["pretrain_encoder_blocks"],
            int(dec["depth"]["pretrain_encoder_channels"]), ex["depth"])
        self.rgb_pretrainer = RGBPretrainer(
            size, g, int(dec["rgb"]["layers"]), ch["mask"], ch["depth"], ch["rgb"],
            dec["rgb"]["pretrain_encoder_blocks"], int(dec["rgb"]["pretrain_encoder_channels"]), ex["rgb"])

        # mode "embedding": stand-alone patch autoencoders per modality
        self.mask_patch_embedding = patch_embedding(1, ch["mask"], ex["mask"])
        self.depth_patch_embedding = patch_embedding(1, ch["depth"], ex["depth"])
        self.rgb_patch_embedding = patch_embedding(3, ch["rgb"], ex["rgb"])
        self.mask_patch_reconstruction = UpscaleMLP(ch["mask"], 1, scale_factor=PATCH, expand_ratio=ex["mask"])
        self.depth_patch_reconstruction = UpscaleMLP(ch["depth"], 1, scale_factor=PATCH, expand_ratio=ex["depth"])
        self.rgb_patch_reconstruction = nn.Sequential(
            UpscaleMLP(ch["rgb"], 3, scale_factor=PATCH, expand_ratio=ex["rgb"]), nn.Sigmoid())

        # learnt initial slot std and depth of stages 1 and 2 (std -1 renders as min_std)
        self.std = nn.Parameter(torch.full((1,), -1.0))
        self.depth = nn.Parameter(torch.zeros(1))
        self.position_in_mask = PositionInMask(size)

        self.l1ssim = MaskedL1SSIMLoss()
        rgb_loss = str(cfg_get(model_cfg, "rgb_loss", "YCbCrL2SSIMLoss"))
        self.rgb_loss = MaskedL1SSIMLoss() if rgb_loss == "l1ssim" else MaskedYCbCrL2SSIMLoss()
        # Counters persist in checkpoints; periods scale with gradient accumulation as upstream's.
        self.gestalt_loss = GestaltLoss()  # never called by any mode; kept for its checkpointed counter
        self.decaying_mse = DecayingMSELoss(warmup_period=2 * 10000 * gas)
        self.init_weight0 = DecayingFactor(warmup_period=2500 * gas, min_factor=0.0)
        self.init_weight1 = DecayingFactor(warmup_period=5000 * gas, min_factor=0.0)
        self.init_counter = CallCounter(start=-10 * gas)

        # The priority head is discarded with one slot; upstream's trainer freezes it.
        for p in self.encoder.priority_encoder.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ hand-over between stages

    def load_modality(self, modality: str, state_dict: dict[str, torch.Tensor]) -> None:
        """Take the ``modality`` autoencoder (mask, depth or rgb) from the state dict of an earlier
        stage's ``LociPretrainer``, and install its decoder as ``decoder.to_<modality>`` (upstream's
        ``--load-mask/--load-depth/--load-rgb``). Strict: every key of that autoencoder must be there."""
        if modality not in ("mask", "depth", "rgb"):
            raise ValueError(f"modality: expected 'mask', 'depth' or 'rgb', received {modality!r}")
        prefix = f"{modality}_pretrainer."
        part = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not part:
            raise ValueError(f"state_dict: no '{prefix}*' keys; pass the state dict of a LociPretrainer trained in "
                             f"mode {modality!r}")
        autoencoder = getattr(self, f"{modality}_pretrainer")
        autoencoder.load_state_dict(part, strict=True)
        getattr(self.decoder, f"to_{modality}").load_state_dict(autoencoder.decoder.state_dict(), strict=True)

    def copy_embeddings(self) -> None:
        """Copy the stand-alone patch codecs of mode ``embedding`` into the three autoencoders
        (upstream's ``--load-embeddings``): each embedding into the encoders and decoders using it."""
        pairs = [
            (self.mask_patch_embedding, self.mask_pretrainer.encoder.embedding),
            (self.mask_patch_reconstruction, self.mask_pretrainer.decoder.mask_reconstruction),
            (self.mask_patch_embedding, self.depth_pretrainer.decoder.mask_encoder),
            (self.depth_patch_embedding, self.depth_pretrainer.encoder.embedding),
            (self.depth_patch_reconstruction, self.depth_pretrainer.decoder.depth_upscale),
            (self.mask_patch_embedding, self.rgb_pretrainer.decoder.mask_encoder),
            (self.depth_patch_embedding, self.rgb_pretrainer.decoder.depth_encoder),
            (self.rgb_patch_embedding, self.rgb_pretrainer.encoder.embedding),
            (self.rgb_patch_reconstruction, self.rgb_pretrainer.decoder.rgb_upscale),
        ]
        for source, target in pairs:
            target.load_state_dict(source.state_dict(), strict=True)

    # ------------------------------------------------------------------ helpers

    def _check(self, rgb: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor) -> None:
        h, w = self.input_size
        for name, t, c in (("rgb", rgb, 3), ("depth", depth, 1), ("mask", mask, 1)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1:] != (c, h, w):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"LociPretrainer: {name} must be (B, {c}, {h}, {w}) (model input_size), "
                                 f"received {got}")
            if not t.is_floating_point():
                raise ValueError(f"LociPretrainer: {name} must be a floating tensor, received {t.dtype}")
        if not rgb.shape[0] == depth.shape[0] == mask.shape[0]:
            raise ValueError(f"LociPretrainer: rgb, depth and mask must share the batch size, received "
                             f"{rgb.shape[0]}, {depth.shape[0]} and {mask.shape[0]}")
        if not rgb.device == depth.device == mask.device:
            raise ValueError(f"LociPretrainer: rgb, depth and mask must be on one device, received "
                             f"{rgb.device}, {depth.device} and {mask.device}")
        if not rgb.dtype == depth.dtype == mask.dtype == self.std.dtype:
            raise ValueError(f"LociPretrainer: rgb, depth and mask must have the parameters' dtype "
                             f"{self.std.dtype} (the model computes in its input dtype), received {rgb.dtype}, "
                             f"{depth.dtype} and {mask.dtype}; cast the batch to the model's dtype")

    def run_decoder(self, position: torch.Tensor, gestalt: torch.Tensor, gt_depth: torch.Tensor | None = None,
                    gt_mask: torch.Tensor | None = None):
        """Decode one slot: (mask probability sigmoid(logit - 1), rgb, depth_raw)."""
        mask, rgb, _, _, depth_raw = self.decoder(position, gestalt, gt_depth=gt_depth, gt_mask=gt_mask)
        return competitor_sigmoid(mask), rgb, depth_raw

    def _result(self, like: torch.Tensor, **values) -> dict[str, Any]:
        """The output dict; unused terms are zeros on the device and in the dtype of ``like`` (so that
        a bf16 model's loss stays bf16 rather than promoting to fp32 through an fp32 zero)."""
        zero = torch.zeros((), device=like.device, dtype=like.dtype)
        out: dict[str, Any] = {k: zero for k in ("mask_loss", "mean_iou", "rgb_loss", "depth_loss", "position_loss",
                                                 "z_loss", "gestalt_loss", "rgb_l1", "depth_l1", "rgb_ssim",
                                                 "depth_ssim")}
        out.update(mask=None, rgb=None, depth=None, time_weight=torch.zeros(3, device=like.device, dtype=like.dtype))
        out.update(values)
        out["loss"] = sum(out[k] for k in LOSS_TERMS)
        return out

    def _encode(self, rgb, depth, mask, rgb_last, depth_last, position, gestalt, hyper: bool):
        b = rgb.shape[0]
        zeros = torch.zeros_like(depth)
        position, gestalt, _ = self.encoder(
            input_rgb=rgb, input_depth=depth if self.input_depth else zeros, error_last=zeros,
            mask=torch.cat((mask, torch.zeros_like(mask)), dim=1), mask_raw=zeros,
            slot_rgb=rgb_last, slot_depth=depth_last, position=position, gestalt=gestalt,
            slot_reset=torch.full((b, 1), 1.0 if hyper else 0.0, device=rgb.device, dtype=rgb.dtype),
            use_hyper_weights=hyper)
        return position, gestalt

    def _initial_slot(self, mask: torch.Tensor):
        """Initial (position, gestalt) of stages 1 and 2, and the ground-truth centroid and std."""
        b = mask.shape[0]
        xy_init, gt_xy, gt_std = self.position_in_mask(mask)
        scalars = (self.depth.to(xy_init.dtype).expand(b, 1), self.std.to(xy_init.dtype).expand(b, 1))
        position = torch.cat((xy_init, *scalars), dim=1)
        gestalt = torch.zeros((b, 3 * self.gestalt_size + 1), device=mask.device, dtype=mask.dtype)
        return position, gestalt, gt_xy, gt_std

    # ------------------------------------------------------------------ modes

    def _mode_mask(self, mask: torch.Tensor) -> dict[str, Any]:
        t = (mask > 0.5).to(mask.dtype)
        logits, gestalt, position = self.mask_pretrainer(t)
        prob = competitor_sigmoid(logits)
        return self._result(mask, mask_loss=_mse(prob, t), mean_iou=mean_iou(prob, t), mask=prob,
                            position=position, gestalt=gestalt)

    def _mode_depth(self, tg: dict[str, torch.Tensor]) -> dict[str, Any]:
        depth, gestalt, position = self.depth_pretrainer(tg["binary"], tg["gt_depth"])
        loss, l1, ssim = self.l1ssim(depth, tg["gt_depth"], tg["depth_weight"])
        return self._result(depth, depth_loss=loss, depth_l1=l1.detach(), depth_ssim=ssim.detach(),
                            depth=depth, position=position, gestalt=gestalt)

    def _mode_rgb(self, tg: dict[str, torch.Tensor]) -> dict[str, Any]:
        rgb, gestalt, position = self.rgb_pretrainer(tg["binary"], tg["gt_depth"], tg["masked_rgb"])
        loss, l1, ssim = self.rgb_loss(rgb, tg["masked_rgb"], tg["confidence"])
        return self._result(rgb, rgb_loss=loss, rgb_l1=l1.detach(), rgb_ssim=ssim.detach(), rgb=rgb,
                            position=position, gestalt=gestalt)

    def _mode_embedding(self, mask: torch.Tensor, tg: dict[str, torch.Tensor]) -> dict[str, Any]:
        binary = tg["binary"]
        _, gt_xy, gt_std = self.position_in_mask(binary)
        position = torch.cat((gt_xy, torch.zeros_like(gt_std), gt_std), dim=1)
        gestalt = torch.zeros((binary.shape[0], 3 * self.gestalt_size + 1), device=binary.device, dtype=binary.dtype)
        prob = competitor_sigmoid(self.mask_patch_reconstruction(self.mask_patch_embedding(binary)))
        depth = self.depth_patch_reconstruction(self.depth_patch_embedding(tg["gt_depth"]))
        rgb = self.rgb_patch_reconstruction(self.rgb_patch_embedding(tg["masked_rgb"]))
        d_loss, d_l1, d_ssim = self.l1ssim(depth, tg["gt_depth"], tg["depth_weight"])
        r_loss, r_l1, r_ssim = self.rgb_loss(rgb, tg["masked_rgb"], tg["confidence"])
        return self._result(mask, mask_loss=_mse(prob, binary), mean_iou=mean_iou(prob, binary),
                            rgb_loss=r_loss, depth_loss=d_loss, rgb_l1=r_l1.detach(), depth_l1=d_l1.detach(),
                            rgb_ssim=r_ssim.detach(), depth_ssim=d_ssim.detach(), mask=prob, rgb=rgb, depth=depth,
                            position=position, gestalt=gestalt)

    def _stage1(self, rgb, depth, mask, tg) -> dict[str, Any]:
        position, gestalt, gt_xy, gt_std = self._initial_slot(mask)
        zeros = torch.zeros_like(depth)
        position, gestalt = self._encode(rgb, depth, zeros, torch.zeros_like(rgb), zeros, position, gestalt,
                                         hyper=False)
        gt_position = torch.cat((gt_xy, tg["gt_z"], gt_std), dim=1)
        # decoded at the ground-truth position, conditioned on the ground-truth mask and depth
        prob, out_rgb, out_depth = self.run_decoder(gt_position, gestalt, gt_depth=tg["gt_depth"],
                                                    gt_mask=tg["binary"])
        r_loss, r_l1, r_ssim = self.rgb_loss(out_rgb, rgb, tg["confidence"])
        d_loss, d_l1, d_ssim = self.l1ssim(out_depth, tg["gt_depth"], tg["depth_weight"])
        position_loss = torch.mean((position[:, :2] - gt_xy) ** 2) + torch.mean((position[:, -1:] - gt_std) ** 2)
        z_loss = (torch.mean((position[:, 2:3] - tg["gt_z"]) ** 2 * tg["z_weight"])
                  + torch.mean((gestalt[:, -1:] - tg["gt_z_scale"]) ** 2 * tg["z_weight"]))
        return self._result(
            rgb, mask_loss=_mse(prob, tg["binary"]) * MASK_LOSS_WEIGHT,
            mean_iou=mean_iou(prob, tg["binary"]), rgb_loss=r_loss, depth_loss=d_loss, position_loss=position_loss,
            z_loss=z_loss, rgb_l1=r_l1.detach(), depth_l1=d_l1.detach(), rgb_ssim=r_ssim.detach(),
            depth_ssim=d_ssim.detach(), mask=prob, rgb=out_rgb, depth=out_depth, position=position, gestalt=gestalt)

    def time_weights(self) -> list[float]:
        """Advance the stage-2 schedules one step and return the (normalised) pass weights (§15.4)."""
        self.init_counter.advance()
        w0, w1 = self.init_weight0.get(), self.init_weight1.get()
        return [max(w0, 0.01), min(1 - w0, max(0.1, w1)), 1 - w1]

    def _stage2(self, rgb, depth, mask, tg, iterations: int) -> dict[str, Any]:
        # Normalised in float32 on the host, as upstream, so the skip test needs no device sync.
        host = torch.tensor(self.time_weights())
        host = host / host.sum()
        raw = host.tolist()
        if rgb.device.type == "cuda":  # pinned + non_blocking: a plain copy would synchronise the stream
            host = host.pin_memory()
        time_weight = host.to(rgb.device, dtype=rgb.dtype, non_blocking=True)
        warming_up = self.init_counter.count <= 0  # first steps run every pass (fail early on memory)

        position, gestalt, gt_xy, gt_std = self._initial_slot(mask)
        binary, zw = tg["binary"], tg["z_weight"]
        prob, out_rgb, out_depth = torch.zeros_like(binary), torch.zeros_like(rgb), torch.zeros_like(depth)
        terms = dict.fromkeys(("mask_loss", "rgb_loss", "depth_loss", "position_loss", "z_loss", "mean_iou"), 0.0)
        r_l1 = r_ssim = d_l1 = d_ssim = None
        for t in range(iterations):
            if raw[t] == 0 and not warming_up:
                continue
            position, gestalt = self._encode(rgb, depth, prob, out_rgb * prob, out_depth * prob, position, gestalt,
                                             hyper=t > 0)
            prob, out_rgb, out_depth = self.run_decoder(position, gestalt)
            w = time_weight[t]
            r_loss, r_l1, r_ssim = self.rgb_loss(out_rgb, rgb, tg["confidence"])
            d_loss, d_l1, d_ssim = self.l1ssim(out_depth, tg["gt_depth"], tg["depth_weight"])
            terms["mean_iou"] = terms["mean_iou"] + mean_iou(prob, binary) * w
            terms["mask_loss"] = terms["mask_loss"] + _mse(prob, binary) * w
            terms["rgb_loss"] = terms["rgb_loss"] + r_loss * w
            terms["depth_loss"] = terms["depth_loss"] + d_loss * w
            terms["position_loss"] = (terms["position_loss"] + self.decaying_mse(position[:, :2], gt_xy) * w
                                      + self.decaying_mse(position[:, -1:], gt_std) * w)
            terms["z_loss"] = (terms["z_loss"] + torch.mean((position[:, 2:3] - tg["gt_z"]) ** 2 * zw) * w
                               + torch.mean((gestalt[:, -1:] - tg["gt_z_scale"]) ** 2 * zw) * w)
        if r_l1 is None:
            raise RuntimeError("LociPretrainer stage 2: every refinement pass was skipped; "
                               f"iterations={iterations} with time weights {raw}")
        terms["mask_loss"] = terms["mask_loss"] * MASK_LOSS_WEIGHT
        return self._result(rgb, **terms, rgb_l1=r_l1.detach(), depth_l1=d_l1.detach(),
                            rgb_ssim=r_ssim.detach(), depth_ssim=d_ssim.detach(), mask=prob, rgb=out_rgb,
                            depth=out_depth, position=position, gestalt=gestalt, time_weight=time_weight)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, iterations: int = 3,
                mode: str = "all") -> dict[str, Any]:
        """One pretraining step's forward pass; see the module docstring for modes and the loss."""
        if mode not in MODES:
            raise ValueError(f"LociPretrainer: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "all" and not (isinstance(iterations, int) and 0 <= iterations <= 3):
            raise ValueError(f"LociPretrainer: iterations must be 0 (stage 1) or 1..3 (stage 2 passes), "
                             f"received {iterations!r}")
        self._check(rgb, depth, mask)
        if mode == "mask":
            return self._mode_mask(mask)
        tg = _targets(rgb, depth, mask)
        if mode == "depth":
            return self._mode_depth(tg)
        if mode == "rgb":
            return self._mode_rgb(tg)
        if mode == "embedding":
            return self._mode_embedding(mask, tg)
        if iterations == 0:
            return self._stage1(rgb, depth, mask, tg)
        return self._stage2(rgb, depth, mask, tg, iterations)
