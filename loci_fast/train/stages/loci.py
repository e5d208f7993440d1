"""The ``loci`` stage (reference §17.5, §19.2): the whole Loci-s model on videos, truncated BPTT.

Batches are upstream's TBPTT chunks (``video_chunks(..., backprop_steps=K, teacher_forcing=T)``):
per group of B windows, floor(T_f/K) teacher-forcing chunks on frame 0, then S/K chunks of K frames;
``reset`` marks a group's first chunk, where the slot state starts afresh. The state between chunks is
a :class:`~loci_fast.model.state.SlotState` (slots, predictor hidden state and traces, the "last"
outputs, the regularisers' counters and memories, the previous chunk's last frame), which the engine
detaches and checkpoints, so a resume in mid-sequence continues exactly. The background (and, in
segmentation mode, the proposal) is frozen; it runs in the model's mode, as upstream.

Training data mixes the config's ``data.train`` entries by their ``weight`` (upstream's
ChainedHDF5_Dataset); shards given by ``--data`` outside every entry form one set of weight 1.
"""
from __future__ import annotations

import glob
import os
from typing import Any

import torch

from .base import Stage, StepOutput

#: logged scalars: upstream's names (``train_`` prefix dropped), ``loss`` being the total
LOGGED = ("reconstruction_rgb_loss", "reconstruction_depth_loss", "reconstruction_rgb_l1_loss",
          "reconstruction_depth_l1_loss", "reconstruction_rgb_ssim_loss", "reconstruction_depth_ssim_loss",
          "reconstruction_gestalt_bin_mean", "reconstruction_gestalt_bin_std", "reconstruction_gestalt_mean",
          "reconstruction_num_slots",
          "prediction_rgb_loss", "prediction_depth_loss", "prediction_rgb_l1_loss", "prediction_depth_l1_loss",
          "prediction_rgb_ssim_loss", "prediction_depth_ssim_loss", "prediction_binarization_mean",
          "prediction_binarization_std", "prediction_gestalt_mean", "prediction_num_slots",
          "prediction_position_gate", "prediction_gestalt_gate", "prediction_position_gate_openings",
          "prediction_gestalt_gate_openings", "position_loss", "object_loss", "time_loss")
ROWS = 4  # samples shown in the PNG grid


def mixture(cfg, shards: list[str]) -> Any:
    """``shards`` grouped by the ``data.train`` entry whose pattern they match, ``{tuple(shards): weight}``;
    a plain list when there is one group (no mixing)."""
    chosen = {os.path.abspath(s) for s in shards}
    groups: dict[tuple[str, ...], float] = {}
    placed: set[str] = set()
    for entry in cfg["data"]["train"]:
        pattern = entry.get("shards") if hasattr(entry, "get") else entry["shards"]
        if not pattern:
            continue
        mine = tuple(sorted(p for p in (os.path.abspath(f) for f in glob.glob(str(pattern))) if p in chosen
                            and p not in placed))
        if mine:
            groups[mine] = float(entry.get("weight", 1.0) if hasattr(entry, "get") else entry["weight"])
            placed.update(mine)
    rest = tuple(sorted(chosen - placed))
    if rest:
        groups[rest] = 1.0
    if len(groups) == 1:
        return list(next(iter(groups)))
    return groups


def _grey(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().clamp(0, 1).expand(-1, 3, -1, -1)


class LociStage(Stage):
    name = "loci"
    metric_keys = LOGGED

    def build_model(self, cfg) -> torch.nn.Module:
        from loci_fast.model.loci_model import LociModel

        return LociModel.from_config(cfg)

    def trainable(self, param_name: str) -> bool:
        from loci_fast.model.loci_model import FROZEN

        return not param_name.startswith(FROZEN)

    def batches(self, cfg, shards: list[str], *, rank: int, world_size: int, seed: int, num_workers: int):
        from loci_fast.data.loaders import video_chunks

        m = cfg["model"]
        return video_chunks(mixture(cfg, shards), batch_size=int(m["batch_size"]),
                            sequence_len=int(cfg["sequence_len"]), size=tuple(int(s) for s in m["input_size"]),
                            seed=seed, rank=rank, world_size=world_size, num_workers=num_workers, training=True,
                            backprop_steps=int(cfg["backprop_steps"]), teacher_forcing=int(cfg["teacher_forcing"]),
                            prefetch_factor=cfg["prefetch_factor"] if num_workers else None)

    # recurrent state
    def starts_sequence(self, batch: dict[str, Any]) -> bool:
        reset = batch["reset"]
        return bool(reset.reshape(-1)[0]) if isinstance(reset, torch.Tensor) else bool(reset)

    def initial_state(self, model: torch.nn.Module, batch: dict[str, Any]):
        net = getattr(model, "module", model)
        rgb = batch["rgb"]
        return net.initial_state(rgb.shape[0], device=rgb.device, dtype=rgb.dtype)

    def detach_state(self, state):
        return None if state is None else state.detach()

    def state_tensors(self, state) -> dict[str, torch.Tensor]:
        return {} if state is None else state.state_dict()

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device):
        from loci_fast.model.state import SlotState

        if not tensors:
            return None
        return SlotState.from_state_dict({k: v.to(device) for k, v in tensors.items()})

    def forward(self, model, batch: dict[str, Any], state: Any = None) -> StepOutput:
        if state is None:
            state = self.initial_state(model, batch)
        out = model(batch["rgb"], batch["depth"], batch["time_steps"], batch["use_depth"], state)
        metrics = {k: v.detach() for k, v in out.terms.items() if k in LOGGED}
        return StepOutput(out.loss, metrics, self.images(getattr(model, "module", model), batch, out), out.state)

    @torch.no_grad()
    def images(self, net, batch: dict[str, Any], out) -> dict[str, torch.Tensor]:
        """Rows of the PNG grid for the chunk's last step: the frame, the composited reconstruction, the
        prediction of the next frame (prediction steps), the slot masks over the frame and each slot's mask."""
        from .proposal import palette

        last = out.steps[-1]
        n = slice(0, ROWS)
        rec = last.reconstruction
        frame = batch["rgb"][n, -1].detach().float()
        masks = rec["mask"][n].detach().float()  # (b, O+1, H, W), background last
        colours = palette(masks.shape[1] - 1).to(masks)
        painted = torch.einsum("bnhw,nc->bchw", masks[:, :-1], colours)
        rows = {"frame": frame, "reconstruction": rec["output_rgb"][n].detach().float().clamp(0, 1)}
        if "output_rgb" in last.prediction:
            rows["prediction"] = last.prediction["output_rgb"][n].detach().float().clamp(0, 1)
        rows["slot masks"] = (0.4 * frame + 0.6 * painted).clamp(0, 1)
        for k in range(masks.shape[1] - 1):
            rows[f"mask {k}"] = _grey(masks[:, k:k + 1])
        rows["background mask"] = _grey(masks[:, -1:])
        return rows

    def example_batch(self, cfg, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, Any]:
        """A synthetic prediction chunk of the config's size (for ``bench --train-step``): K+1 frames of
        squares moving over a smooth background, time stamps 0..K, starting a sequence (so every one of
        the K steps predicts; the regularisers are still in their warm-up)."""
        gen = torch.Generator().manual_seed(seed)
        m = cfg["model"]
        b, (h, w), k = int(m["batch_size"]), (int(s) for s in m["input_size"]), int(cfg["backprop_steps"])
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        frames, depths = [], []
        tint = torch.rand(b, 3, 1, 1, generator=gen)
        for t in range(k + 1):
            fg = torch.zeros(b, 1, h, w)
            shift = t * max(w // 16, 1)
            fg[:, :, h // 4:h // 2, w // 4 + shift:w // 2 + shift] = 1
            frames.append((0.5 * tint + 0.25 * (xx + yy)[None, None] * (1 - fg) + 0.8 * fg).clamp(0, 1))
            depths.append((0.3 + 0.5 * yy[None, None] - 0.2 * fg).expand(b, 1, h, w).clone())
        batch = {"rgb": torch.stack(frames, 1), "depth": torch.stack(depths, 1), "time_steps": torch.arange(k + 1),
                 "use_depth": torch.ones(b, dtype=torch.bool), "reset": True}
        return {key: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                if isinstance(v, torch.Tensor) else v for key, v in batch.items()}


LOCI = LociStage()
