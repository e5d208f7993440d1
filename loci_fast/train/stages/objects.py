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

Stage 1 never runs the encoder's hypernetwork (upstream passes ``use_hyper_weights=False``), so its
weights and the hyper layers' ``alpha`` never get a gradient there and upstream leaves them as they
are. DeepSpeed instead hands every parameter without a gradient a zero one, on which Ranger would
still apply weight decay and Lookahead: stage 1 freezes them (55% of the demo's encoder weights).
"""
from __future__ import annotations

from typing import Any

import torch

from .base import Stage, StepOutput

LOGGED = ("mask_loss", "rgb_loss", "depth_loss", "position_loss", "z_loss", "mean_iou")


class ObjectStage(Stage):
    """One LociPretrainer mode on single-object crops."""

    def __init__(self, name: str, mode: str, iterations: int, prefixes: tuple[str, ...],
                 uses_hypernetwork: bool = True) -> None:
        self.name, self.mode, self.iterations, self.prefixes = name, mode, iterations, prefixes
        self.uses_hypernetwork = uses_hypernetwork
        self.metric_keys = LOGGED

    def build_model(self, cfg) -> torch.nn.Module:
        from loci_fast.model.pretrainer import LociPretrainer

        return LociPretrainer(cfg["model"])

    def trainable(self, param_name: str) -> bool:
        if not self.uses_hypernetwork and _hypernetwork_only(param_name):
            return False
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

    def forward(self, model, batch: dict[str, Any], state: Any = None) -> StepOutput:
        out = model(batch["rgb"], batch["depth"], batch["mask"], self.iterations, self.mode)
        metrics = {k: out[k] for k in LOGGED if isinstance(out.get(k), torch.Tensor)}
        return StepOutput(out["loss"], metrics, self.images(batch, out))

    def images(self, batch: dict[str, Any], out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Rows of the PNG grid: inputs, then targets and outputs inside the object mask.

        The losses only look inside the mask, so outputs are shown there; depth is the normalised
        depth the model predicts, mapped to grey as 0.5 + 0.25 * value.
        """
        binary = (batch["mask"] > 0.5).to(batch["rgb"].dtype)
        rows = {"input rgb": batch["rgb"], "input mask": binary}
        if isinstance(out.get("mask"), torch.Tensor):
            rows["output mask"] = out["mask"]
        if isinstance(out.get("depth"), torch.Tensor):
            rows["target depth"] = _depth_image(_normalised_depth(batch["depth"], binary), binary)
            rows["output depth"] = _depth_image(out["depth"], binary)
        if isinstance(out.get("rgb"), torch.Tensor):
            rows["target rgb"] = batch["rgb"] * binary
            rows["output rgb"] = out["rgb"] * binary
        return {k: v.detach().float() for k, v in rows.items()}


def _normalised_depth(depth: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """(D - masked mean) / masked std inside the mask: the depth target of every stage (§15.2)."""
    area = binary.sum((1, 2, 3), keepdim=True) + 1e-6
    mean = (depth * binary).sum((1, 2, 3), keepdim=True) / area
    std = (((depth - mean) ** 2 * binary).sum((1, 2, 3), keepdim=True) / area).sqrt()
    return (depth - mean) / (std + 1e-6) * binary


def _depth_image(depth: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    return ((0.5 + 0.25 * depth.detach().float()).clamp(0, 1)) * binary


def _hypernetwork_only(param_name: str) -> bool:
    """Encoder parameters that only act through generated weights: the hypernetwork and ``alpha``."""
    return param_name.startswith("encoder.hyper_weights.") or (
        param_name.startswith("encoder.") and param_name.endswith(".alpha"))


ENCODER_DECODER = ("encoder.", "decoder.", "std", "depth")

MASK = ObjectStage("mask", "mask", 0, ("mask_pretrainer.",))
DEPTH = ObjectStage("depth", "depth", 0, ("depth_pretrainer.",))
RGB = ObjectStage("rgb", "rgb", 0, ("rgb_pretrainer.",))
STAGE1 = ObjectStage("stage1", "all", 0, ENCODER_DECODER, uses_hypernetwork=False)
STAGE2 = ObjectStage("stage2", "all", 3, ENCODER_DECODER)
