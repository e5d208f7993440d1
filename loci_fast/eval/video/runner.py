"""Loci-s over whole held-out videos, as upstream's validation loop runs it (§18.1).

The model is in eval mode (Binarize rounds, no update-gate noise) and ``evaluate=False`` (losses and
the regulariser counters run as in training). Each window goes through upstream's TBPTT schedule
(teacher-forcing chunks on frame 0, then K frames per chunk) with its slot state carried over;
every step with time stamp >= 0 is scored (:mod:`.scores`). A batch of videos behaves as separate
batches of one: per-video draws (:mod:`.draws`) and the module buffers a forward pass advances
(ObjectDiscovery's permanence counter) restored before every batch, so each video's numbers are
the same at any batch size, on any rank, in any order (upstream instead carries that counter from
video to video, which only matters while it has not saturated).
"""
from __future__ import annotations

from typing import Any

import torch

from .draws import PerVideoDraws, batch_of_one_semantics, video_seed
from .scores import THRESHOLD, VideoScores

MODES = ("random", "regularization", "segmentation")
#: per-window tensors of a ``video_chunks`` batch that the model or the scores read
FIELDS = ("rgb", "depth", "use_depth", "time_steps", "fg", "instance_masks", "start")


def check_mode(mode: str, cfg, state: dict[str, torch.Tensor]) -> None:
    """ValueError naming the problem and the fix for an unknown mode or a segmentation mode without a proposal."""
    from loci_fast.model.compat import cfg_get

    if mode not in MODES:
        raise ValueError(f"--modes: unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if mode == "segmentation":
        if cfg_get(cfg["model"], "position_proposal") is None:
            raise ValueError("--modes segmentation needs model.position_proposal in the config: pass --config "
                             "with the proposal's settings (those the proposal was trained with)")
        if not any(k.startswith("proposal.") for k in state):
            raise ValueError("--modes segmentation needs the position proposal in the weights (proposal.*): "
                             "train the loci stage with model.inference_mode=segmentation and --init-from a "
                             "proposal run, or evaluate the random/regularization modes only")


class LociVideoEvaluator:
    """A Loci-s model in one inference ``mode``; :meth:`evaluate` scores a batch of windows."""

    kind = "loci"

    def __init__(self, cfg, state: dict[str, torch.Tensor], mode: str, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        from loci_fast.model.compat import cfg_get
        from loci_fast.model.loci_model import LociModel

        check_mode(mode, cfg, state)
        self.cfg = cfg.replace({"model.inference_mode": mode})
        self.mode, self.device = mode, torch.device(device)
        self.sequence_len = int(self.cfg["sequence_len"])
        if self.sequence_len < 2:
            raise ValueError("sequence_len 1 (image configs, upstream's review setup) has no video to evaluate; "
                             "use a video config (sequence_len >= 2)")
        self.backprop_steps, self.teacher_forcing = int(self.cfg["backprop_steps"]), int(self.cfg["teacher_forcing"])
        self.size = tuple(int(s) for s in self.cfg["model"]["input_size"])
        # upstream reads a config key `amodal` for the mIoU targets' threshold (0.4); no shipped config sets it
        self.instance_threshold = 0.4 if cfg_get(self.cfg["model"], "amodal", False) else THRESHOLD
        self.model = LociModel.from_config(self.cfg)
        weights = {k: v for k, v in state.items() if mode == "segmentation" or not k.startswith("proposal.")}
        try:
            self.model.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise ValueError(f"the weights do not fit the config's Loci-s model ({str(err).splitlines()[0]}); "
                             "pass the --config the weights were trained with") from None
        self.dtype = dtype
        self.model.to(device=self.device, dtype=dtype).eval()
        self._buffers = {k: v.detach().clone() for k, v in self.model.named_buffers()}

    def loader(self, shards: list[str], *, batch_size: int, rank: int = 0, world_size: int = 1):
        """Every window of ``shards`` once (this rank's share), resized, with instance and fg masks."""
        from loci_fast.data.loaders import video_chunks

        return video_chunks(shards, batch_size=batch_size, sequence_len=self.sequence_len, size=self.size,
                            rank=rank, world_size=world_size, num_workers=0, training=False, with_masks=True)

    def _restore_buffers(self) -> None:
        for name, buf in self.model.named_buffers():
            if name in self._buffers:
                buf.copy_(self._buffers[name])

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any], seed: int, videos: list[str]) -> list[dict[str, Any]]:
        """Score the windows of ``batch`` (every item valid; ``videos`` their ids) with the run's ``seed``;
        one record (``steps``, ``upstream``, ``standard``) per window."""
        from loci_fast.data.views.video_chunks import tbptt_chunks

        window = {k: batch[k].to(self.device, dtype=self.dtype if batch[k].is_floating_point() else None)
                  for k in FIELDS}
        masks = window["instance_masks"]
        scores = VideoScores(masks > THRESHOLD, masks > self.instance_threshold, window["fg"] > THRESHOLD)
        draws = PerVideoDraws([video_seed(seed, v) for v in videos], self.device)
        self._restore_buffers()
        b = window["rgb"].shape[0]
        state = self.model.initial_state(b, device=self.device, dtype=window["rgb"].dtype)
        last_stamp = None
        with batch_of_one_semantics(draws):
            for chunk in tbptt_chunks(window, self.backprop_steps, self.teacher_forcing):
                stamps = [int(t) for t in chunk["time_steps"].tolist()]
                out = self.model(chunk["rgb"], chunk["depth"], chunk["time_steps"], chunk["use_depth"], state)
                full = stamps if chunk["reset"] else [last_stamp] + stamps
                for step, tau in zip(out.steps, full[:-1]):
                    if tau >= 0:
                        scores.add(tau, step.reconstruction["mask"], step.prediction["mask"])
                state, last_stamp = out.state, stamps[-1]
        return scores.records()


def select(batch: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    """The items ``keep`` of a loader batch (tensors and lists alike)."""
    index = torch.tensor(keep, dtype=torch.long)
    return {k: (v.index_select(0, index) if isinstance(v, torch.Tensor) and v.dim() else
                [v[i] for i in keep] if isinstance(v, list) else v) for k, v in batch.items()}
