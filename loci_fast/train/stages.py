"""The five object stages (reference §15, §17.3), all training ``LociPretrainer``.

| stage  | pretrainer mode | iterations | trains                                          |
|--------|-----------------|------------|-------------------------------------------------|
| mask   | mask            | 0          | mask_pretrainer (encoder + mask decoder)        |
| depth  | depth           | 0          | depth_pretrainer                                |
| rgb    | rgb             | 0          | rgb_pretrainer                                  |
| stage1 | all             | 0          | encoder, decoder, the std/depth scalars         |
| stage2 | all             | 3          | encoder, decoder, the std/depth scalars         |

Upstream hands every parameter to the optimiser and lets the inactive branches get no gradient;
here they are frozen instead (same updates: Ranger skips parameters without gradients), which
keeps DeepSpeed from all-reducing and stepping weights a stage never touches. The priority head
stays frozen as upstream's trainer has it (the model freezes it itself).
"""
from __future__ import annotations

from typing import Any

import torch

from .stage import Stage, StepOutput, register

LOGGED = ("mask_loss", "rgb_loss", "depth_loss", "position_loss", "z_loss", "mean_iou")


class ObjectStage(Stage):
    """One LociPretrainer mode on single-object crops."""

    def __init__(self, name: str, mode: str, iterations: int, prefixes: tuple[str, ...]) -> None:
        self.name, self.mode, self.iterations, self.prefixes = name, mode, iterations, prefixes
        self.metric_keys = LOGGED

    def build_model(self, cfg) -> torch.nn.Module:
        from loci_fast.model.pretrainer import LociPretrainer

        return LociPretrainer(cfg["model"])

    def trainable(self, param_name: str) -> bool:
        # Entries ending in '.' are module prefixes, the others exact parameter names.
        return any(param_name.startswith(p) if p.endswith(".") else param_name == p
                   for p in self.prefixes)

    def batches(self, cfg, shards: list[str], *, rank: int, world_size: int, seed: int,
                num_workers: int):
        from loci_fast.data.loaders import object_crops

        size = tuple(int(s) for s in cfg["model"]["input_size"])
        return object_crops(shards, batch_size=int(cfg["model"]["batch_size"]), size=size, seed=seed,
                            rank=rank, world_size=world_size, num_workers=num_workers,
                            augment=True, training=True,
                            prefetch_factor=cfg["prefetch_factor"] if num_workers else None)

    def forward(self, model, batch: dict[str, Any]) -> StepOutput:
        out = model(batch["rgb"], batch["depth"], batch["mask"], self.iterations, self.mode)
        metrics = {k: out[k] for k in LOGGED if isinstance(out.get(k), torch.Tensor)}
        return StepOutput(out["loss"], metrics, self.images(batch, out))

    def images(self, batch: dict[str, Any], out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Rows of the PNG grid: the inputs, then what this stage reconstructs."""
        binary = (batch["mask"] > 0.5).to(batch["rgb"].dtype)
        rows = {"input rgb": batch["rgb"], "input mask": batch["mask"]}
        if self.mode in ("depth", "rgb"):
            rows["target"] = batch["rgb"] * binary if self.mode == "rgb" else _normalise(
                batch["depth"], binary)
        for key in ("mask", "depth", "rgb"):
            value = out.get(key)
            if isinstance(value, torch.Tensor):
                rows[f"output {key}"] = _normalise(value, None) if key == "depth" else value
        return {k: v.detach() for k, v in rows.items()}


def _normalise(depth: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Depth scaled to [0, 1] per image for display."""
    d = depth.detach().float()
    lo = d.amin(dim=(1, 2, 3), keepdim=True)
    hi = d.amax(dim=(1, 2, 3), keepdim=True)
    d = (d - lo) / (hi - lo + 1e-6)
    return d * mask if mask is not None else d


ENCODER_DECODER = ("encoder.", "decoder.", "std", "depth")

MASK = register(ObjectStage("mask", "mask", 0, ("mask_pretrainer.",)))
DEPTH = register(ObjectStage("depth", "depth", 0, ("depth_pretrainer.",)))
RGB = register(ObjectStage("rgb", "rgb", 0, ("rgb_pretrainer.",)))
STAGE1 = register(ObjectStage("stage1", "all", 0, ENCODER_DECODER))
STAGE2 = register(ObjectStage("stage2", "all", 3, ENCODER_DECODER))
