"""Evaluation of object-pretraining runs (the five LociPretrainer stages) on held-out crops.

Per crop: the IoU of the decoded mask (> 0.5) with the object's mask (> 0.5), and for the
encoder stages the distance between the encoder's (x, y) and the mask centroid in pixels of the
crop. Per batch: the model's own loss terms (batch means, stage 2's mean IoU weighted over its
passes as in training). Each batch is evaluated from the loaded state with its own seed, so a
resumed evaluation gives the numbers of an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

ON_OBJECT_IOU = 0.25


@dataclass
class BatchResult:
    """One batch: per-crop records, the model's batch-mean terms, and the outputs (for image grids)."""

    records: list[dict[str, Any]]
    terms: dict[str, float]
    images: dict[str, torch.Tensor] = field(default_factory=dict)


class PretrainerEvaluator:
    """Evaluates a LociPretrainer stage; ``kind`` names it in the ``eval`` command's registry."""

    kind = "pretrainer"

    def __init__(self, cfg, state: dict[str, torch.Tensor], stage: str, device: torch.device | str = "cpu"):
        from loci_fast.model.pretrainer import LociPretrainer
        from loci_fast.train.stages import get_stage

        self.cfg, self.stage = cfg, get_stage(stage)
        self.device = torch.device(device)
        self.model = LociPretrainer(cfg["model"])
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()
        # Buffers that forward passes advance (stage 2's schedule counters), restored per batch.
        self._buffers = {k: v.detach().clone() for k, v in self.model.state_dict().items()
                         if not v.is_floating_point()}
        self.size = tuple(int(s) for s in cfg["model"]["input_size"])

    def batches(self, shards: Any, *, batch_size: int, seed: int = 7) -> Iterator[dict[str, Any]]:
        """Crops drawn as in training (around the object, random scale) from ``shards``, endlessly
        (epoch after epoch of the loader, each reshuffled)."""
        from loci_fast.data.loaders import object_crops

        loader = object_crops(shards, batch_size=batch_size, size=self.size, seed=seed, rank=0, world_size=1,
                              num_workers=0, augment=True, training=True)
        while True:
            empty = True
            for batch in loader:
                empty = False
                yield batch
            if empty:
                raise ValueError(f"no crops of batch size {batch_size} in {shards}")

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any], index: int, *, seed: int = 0) -> BatchResult:
        """Run the model on one batch from the loaded state, seeded with ``seed + index``."""
        from loci_fast.model.pretrainer import iou_per_sample
        from loci_fast.train.stages.objects import LOGGED

        self.model.load_state_dict(self._buffers, strict=False)
        torch.manual_seed(seed + index)
        rgb, depth, mask = (batch[k].to(self.device) for k in ("rgb", "depth", "mask"))
        res = self.model(rgb, depth, mask, self.stage.iterations, self.stage.mode)
        terms = {k: float(res[k]) for k in ("loss",) + LOGGED if isinstance(res.get(k), torch.Tensor)}
        n = rgb.shape[0]
        per: dict[str, list] = {}
        if isinstance(res.get("mask"), torch.Tensor):
            per["iou"] = iou_per_sample(res["mask"], (mask > 0.5).float()).tolist()
        if self.stage.mode == "all":
            # The encoder's own (x, y) against the mask centroid, in pixels of the crop.
            _, centroid, _ = self.model.position_in_mask(mask)
            err = (res["position"][:, :2].float() - centroid.float()).norm(dim=1) * (self.size[1] - 1) / 2
            per["position_px"] = err.tolist()
        keys = batch.get("key") or [""] * n
        records = []
        for i in range(n):
            rec = {"batch": index, "item": i, "video": keys[i],
                   "frame": int(batch["frame"][i]) if "frame" in batch else None,
                   "instance": int(batch["instance"][i]) if "instance" in batch else None}
            rec.update({k: v[i] for k, v in per.items()})
            records.append(rec)
        return BatchResult(records, terms, self.stage.images(batch, res))


def batch_values(result: BatchResult) -> dict[str, float]:
    """One batch's numbers: the model's terms, the mean position error and the on-object share
    (share of crops whose decoded mask overlaps its object, IoU >= ON_OBJECT_IOU) for encoder stages."""
    values = dict(result.terms)
    if result.records and result.records[0].get("position_px") is not None:
        values["position_px"] = sum(r["position_px"] for r in result.records) / len(result.records)
        values["on_object"] = sum(r["iou"] >= ON_OBJECT_IOU for r in result.records) / len(result.records)
    return values


def summarise(records: list[dict[str, Any]], batch_terms: list[dict[str, float]]) -> dict[str, Any]:
    """Mean IoU, position error and on-object share over crops; the model's terms averaged over batches."""
    out: dict[str, Any] = {"crops": len(records), "batches": len(batch_terms)}
    for key in ("iou", "position_px"):
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            out[f"mean_{key}" if key == "iou" else key] = sum(values) / len(values)
    ious = [r["iou"] for r in records if r.get("iou") is not None]
    if ious and any(r.get("position_px") is not None for r in records):
        out["on_object"] = sum(v >= ON_OBJECT_IOU for v in ious) / len(ious)
    for key in sorted({k for t in batch_terms for k in t}):
        out[f"model_{key}"] = sum(t.get(key, 0.0) for t in batch_terms) / len(batch_terms)
    return out
