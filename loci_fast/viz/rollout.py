"""The Loci-s rollout behind ``loci-fast viz`` (upstream's ``--save``, reference §18.5).

One video at batch 1, the model in eval mode under no_grad, ``evaluate=True`` (the prediction decode
skips the raw masks), one sequence: T_f teacher-forcing steps on frame 0, then frames 0…S−2 each
predicting the next; the last latents are re-decoded only at the sequence start. Each step records
what the pictures and the latent export need, on the CPU, for sample 0.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

#: the per-step record's image keys (each (1, C, H, W) or (1, O+1, ...) float32 on the CPU)
IMAGE_KEYS = ("input_rgb", "input_depth", "target_rgb", "target_depth", "output_rgb", "output_depth", "mask",
              "slot_rgb", "slot_depth", "uncertainty", "bg_rgb", "bg_depth")


def time_stamps(teacher_forcing_steps: int, frames: int) -> torch.Tensor:
    """−T_f … S−1: T_f teacher-forcing stamps, then one per frame (the last one is only a target)."""
    return torch.arange(-teacher_forcing_steps, frames, dtype=torch.int64)


def rollout_loci_s(model: torch.nn.Module, rgb: torch.Tensor, depth: torch.Tensor, use_depth: bool, *,
                   teacher_forcing_steps: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    """Run ``model`` (a :class:`~loci_fast.model.loci_model.LociModel`) over one video.

    Args:
        rgb: (S, 3, H, W) RGB in [0, 1]; depth: (S, 1, H, W) in [0, 1] (−1 without depth).
        use_depth: whether the video has depth (else the GT depth panel is black, as upstream).
        teacher_forcing_steps: T_f (``teacher_forcing_length`` of the run's teacher_forcing and backprop_steps).
        seed: seeds torch before the rollout; the eval-mode model still draws its priority jitter,
            uncertainty noise and ObjectDiscovery samples.

    Yields one record per step (T_f + S − 1 of them), made when asked for: ``step`` (file index), ``time`` (τ),
    ``teacher_forcing``, the images of :data:`IMAGE_KEYS` and the latents ``position`` (1, O, 4),
    ``gestalt`` (1, O, G), ``priority`` (1, O) of the shown output (the prediction for τ ≥ 0, the
    reconstruction during teacher forcing).
    """
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb: expected (S, 3, H, W), got {tuple(rgb.shape)}")
    frames = rgb.shape[0]
    if frames < 2:
        raise ValueError(f"the video has {frames} frame(s); the rollout needs at least 2 (one to predict)")
    model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    ts = time_stamps(teacher_forcing_steps, frames)
    # the chunk's frame i is frame 0 on teacher-forcing steps and frame τ afterwards (LociModel.forward)
    index = ts.clamp_min(0)
    seq_rgb = rgb[index][None].to(device)
    seq_depth = depth[index][None].to(device)
    state = model.initial_state(1, device=device, dtype=seq_rgb.dtype)
    with torch.no_grad():
        out = model(seq_rgb, seq_depth, ts.to(device), torch.tensor([bool(use_depth)], device=device), state,
                    evaluate=True)
    return _records(out.steps, ts, seq_rgb, seq_depth, use_depth, model.num_slots)


def _records(steps, ts, seq_rgb, seq_depth, use_depth: bool, o: int) -> Iterator[dict[str, Any]]:
    for i, step in enumerate(steps):
        tau = int(ts[i])
        tf = tau < 0
        shown = step.reconstruction if tf else step.prediction
        target = seq_rgb[:, i + 1] if not tf else seq_rgb[:, 0]
        target_depth = seq_depth[:, i + 1] if not tf else seq_depth[:, 0]
        b, _, h, w = shown["output_rgb"].shape
        zeros = torch.zeros_like(seq_depth[:, 0])
        record = {
            "step": i, "time": tau, "teacher_forcing": tf,
            "input_rgb": seq_rgb[:, i], "input_depth": seq_depth[:, i] if use_depth else zeros,
            "target_rgb": target, "target_depth": target_depth if use_depth else zeros,
            "output_rgb": shown["output_rgb"], "output_depth": shown["output_depth"], "mask": shown["mask"],
            "slot_rgb": shown["rgb"].reshape(b, o + 1, 3, h, w), "slot_depth": shown["depth"],
            "uncertainty": step.reconstruction["uncertainty"],
            "bg_rgb": step.prediction["bg_rgb"], "bg_depth": step.prediction["bg_depth"],
            "position": shown["position"].reshape(b, o, -1), "gestalt": shown["gestalt"].reshape(b, o, -1),
            "priority": shown["priority"].reshape(b, o),
        }
        yield {k: v.detach().float().cpu() if isinstance(v, torch.Tensor) else v for k, v in record.items()}
