"""The background stage (reference §17.4; upstream's ``--pretrain-bg``): ``BackgroundPretrainer``
on frame pairs of the shards, every parameter trained (upstream hands them all to Ranger).

Warm-ups compare the per-file ``rgb_warmup``/``depth_warmup`` with upstream's ``global_step``, the
number of optimiser steps so far: DeepSpeed's ``global_steps``, which its checkpoints restore.
Per-file loss settings come from the config's ``data.train`` entries, matched by shard path.
"""
from __future__ import annotations

from typing import Any

import torch

from .base import Stage, StepOutput

#: logged scalars: upstream's names (``train_`` prefix dropped), ``loss`` being the total
LOGGED = ("rgb_l2", "rgb_ssim", "rgb_loss", "depth_loss", "uncertainty", "prediction_mask",
          "supervised_uncertainty_loss", "unsupervised_uncertainty_loss", "depth_context_bin_mean",
          "depth_context_bin_std", "depth_context_mean")
ROWS = 4  # samples shown in the PNG grid


def file_settings(cfg) -> dict[str, dict[str, Any]]:
    """``{shard: per-file settings}`` from ``data.train``; entries whose shards are not on disk
    (or that name an HDF5 file) are passed over, their shards get the defaults if given by --data."""
    from loci_fast.data.errors import ShardError
    from loci_fast.data.views.frame_pairs import settings_by_shard

    out: dict[str, dict[str, Any]] = {}
    for entry in cfg["data"]["train"]:
        entry = dict(entry)
        if entry.get("shards") is None:
            continue
        try:
            out.update(settings_by_shard([entry]))
        except ShardError:
            continue
    return out


def _depth_image(depth: torch.Tensor) -> torch.Tensor:
    """Depth in [0, 1] (−1 without depth) as grey; missing depth shows black."""
    return depth.detach().float().clamp(0, 1).expand(-1, 3, -1, -1)


class BackgroundStage(Stage):
    name = "background"
    metric_keys = LOGGED

    def build_model(self, cfg) -> torch.nn.Module:
        from loci_fast.model.background import BackgroundPretrainer

        return BackgroundPretrainer.from_config(cfg["model"])

    def batches(self, cfg, shards: list[str], *, rank: int, world_size: int, seed: int, num_workers: int):
        from loci_fast.data.loaders import frame_pairs

        size = tuple(int(s) for s in cfg["model"]["input_size"])
        return frame_pairs(shards, batch_size=int(cfg["model"]["batch_size"]), size=size, seed=seed,
                           rank=rank, world_size=world_size, num_workers=num_workers, augment=True,
                           training=True, file_settings=file_settings(cfg),
                           prefetch_factor=cfg["prefetch_factor"] if num_workers else None)

    def forward(self, model, batch: dict[str, Any], state: Any = None) -> StepOutput:
        step = int(getattr(model, "global_steps", 0))  # a DeepSpeed engine; a bare module counts from 0
        out = model(batch, step)
        metrics = {k: out[k] for k in LOGGED}
        return StepOutput(out["loss"], metrics, self.images(batch, out))

    def example_batch(self, cfg, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, Any]:
        """A synthetic frame-pair batch of the config's size (for ``bench --train-step``): a smooth
        background with a square object that moves between the frames, depth when the config inputs
        depth, fg masks, and a moving camera (Δt != 0) for half the samples so the motion path runs."""
        from loci_fast.data.views.frame_pairs import LOSS_SETTINGS

        gen = torch.Generator().manual_seed(seed)
        b, (h, w) = int(cfg["model"]["batch_size"]), (int(s) for s in cfg["model"]["input_size"])
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        batch: dict[str, Any] = {}
        for name, shift in (("source", 0), ("target", w // 8)):
            fg = torch.zeros(b, 1, h, w)
            fg[:, :, h // 4:h // 2, w // 4 + shift:w // 2 + shift] = 1
            tint = torch.rand(b, 3, 1, 1, generator=gen)
            batch[f"{name}_rgb"] = (0.5 * tint + 0.25 * (xx + yy)[None, None] * (1 - fg) + 0.8 * fg).clamp(0, 1)
            batch[f"{name}_depth"] = (0.3 + 0.5 * yy[None, None] - 0.2 * fg).expand(b, 1, h, w).clone()
            batch[f"{name}_fg"] = fg
        if not cfg["model"]["input_depth"]:
            batch["source_depth"] = batch["target_depth"] = -torch.ones(b, 1, h, w)
        batch.update(dt=(torch.arange(b) % 2).float() * 3, use_depth=torch.full((b,), bool(cfg["model"]["input_depth"])),
                     use_fg=torch.ones(b, dtype=torch.bool))
        batch.update({k: torch.full((b,), float(v)) for k, v in LOSS_SETTINGS.items()})
        return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in batch.items()}

    def images(self, batch: dict[str, Any], out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Rows of the PNG grid: source, target, the target's uncertainty, the loss region, and the
        reconstructed background RGB and depth (beside the target depth)."""
        n = slice(0, ROWS)
        grey = lambda x: x[n].detach().float().expand(-1, 3, -1, -1)  # noqa: E731
        rows = {"source": batch["source_rgb"][n], "target": batch["target_rgb"][n],
                "uncertainty": grey(out["u_target"]), "loss region": grey(out["region"]),
                "background rgb": out["rgb"][n]}
        if bool(batch["use_depth"].any()):
            rows["target depth"] = _depth_image(batch["target_depth"][n])
            rows["background depth"] = _depth_image(out["depth"][n])
        return {k: v.detach().float() for k, v in rows.items()}


BACKGROUND = BackgroundStage()
