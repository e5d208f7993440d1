"""The public loaders: ``video_chunks``, ``object_crops``, ``frame_pairs``, ``proposal_frames`` -> ``StreamLoader``.

Every loader takes ``paths`` (a shard path, folder, glob or brace pattern, a list of them, or a
dict ``{pattern: weight}`` to mix several sets), the batch size, ``seed``, ``rank``/``world_size``
(default: from torch.distributed when initialised), ``num_workers``, ``training`` (resampled,
augmented, ``epoch_batches`` per rank) or evaluation (split, every item once, padded; ``valid``
marks real items), ``on_error`` ("raise" or "skip") and returns a ``StreamLoader``.
"""
from __future__ import annotations

import signal
from typing import Any, Iterator

import torch

from .streams import ViewStream, shard_sets
from .views.frame_pairs import FramePairsView
from .views.object_crops import ObjectCropsView
from .views.proposal import ProposalFramesView
from .views.video_chunks import VideoChunksView, tbptt_chunks


def _dist(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return (dist.get_rank() if rank is None else rank,
                    dist.get_world_size() if world_size is None else world_size)
        return rank or 0, world_size or 1
    return rank, world_size


def ignore_stop_signals(_worker_id: int) -> None:
    """Workers leave SIGTERM/SIGINT to the main process: launchers signal the whole process group,
    and a worker that died of it would take the batches the main process needs to stop cleanly."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def worker_order(worker_batches: list[int]) -> list[int]:
    """The worker of each batch of an epoch, in the order a DataLoader yields them: round robin
    over the workers, passing over those that have produced all their batches."""
    left, order = list(worker_batches), []
    while any(left):
        for w, n in enumerate(left):
            if n:
                order.append(w)
                left[w] -= 1
    return order


class StreamLoader:
    """Iterate batches of one epoch per ``iter()``; remembers its position for resuming.

    ``len(loader)`` is the number of batches per epoch on this rank (equal on every rank).
    ``state_dict()`` / ``load_state_dict()`` store and restore (epoch, batches consumed per
    worker, chunk within a TBPTT group); after a restore the next ``iter()`` continues where the
    stored run stopped, without yielding consumed batches again. ``skipped`` counts bad samples and
    shards passed over with ``on_error="skip"`` so far (all epochs of this loader).
    """

    def __init__(self, stream: ViewStream, *, num_workers: int = 0, prefetch_factor: int | None = None,
                 chunks: dict[str, int] | None = None):
        self.stream, self.num_workers, self.prefetch_factor = stream, num_workers, prefetch_factor
        self.chunks = chunks
        self.epoch, self._consumed, self._skipped, self._partial = 0, {}, {}, None
        self._skipped_before = 0  # finished epochs

    def __len__(self) -> int:
        n = len(self.stream)
        if self.chunks:
            n *= len(list(tbptt_chunks(_fake_window(self.stream.view.sequence_len), **self.chunks)))
        return n

    @property
    def skipped(self) -> int:
        return self._skipped_before + sum(self._skipped.values())

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": dict(self._consumed), "partial": self._partial,
                "skipped": dict(self._skipped), "skipped_before": self._skipped_before, "num_workers": self.num_workers, "seed": self.stream.seed,
                "rank": self.stream.rank, "world_size": self.stream.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("num_workers", "world_size", "rank", "seed"):
            mine = self.num_workers if k == "num_workers" else getattr(self.stream, k)
            if state[k] != mine:
                raise ValueError(f"cannot resume: the stored loader had {k}={state[k]}, this one has {mine}; "
                                 "the stream order depends on it, so resume with the same setting")
        self.epoch = int(state["epoch"])
        self._consumed = {int(k): int(v) for k, v in state["consumed"].items()}
        self._skipped = {int(k): int(v) for k, v in state["skipped"].items()}
        self._partial = state.get("partial")
        self._skipped_before = int(state.get("skipped_before", 0))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = self.stream
        stream.epoch = self.epoch
        partial = dict(self._partial) if self._partial else None
        stream.skip = dict(self._consumed)
        if partial:  # re-produce the group that was cut short, drop its consumed chunks below
            stream.skip[partial["worker"]] -= 1
        kwargs: dict[str, Any] = {}
        if self.num_workers:
            kwargs.update(persistent_workers=False, prefetch_factor=self.prefetch_factor or 2,
                          worker_init_fn=ignore_stop_signals)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.num_workers, **kwargs)
        it = iter(loader)
        try:
            yield from self._consume(self._in_epoch_order(it, partial), partial)
        finally:
            # Stop worker processes now, not whenever a traceback holding `it` dies: workers forked
            # later would inherit the live iterator and stall at exit.
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        self.epoch += 1
        self._skipped_before += sum(self._skipped.values())
        self._consumed, self._skipped, self._partial = {}, {}, None

    def _in_epoch_order(self, it: Iterator[dict[str, Any]],
                        partial: dict[str, int] | None) -> Iterator[dict[str, Any]]:
        """``it``'s batches in the order an uninterrupted epoch yields them.

        A fresh DataLoader starts its round robin at worker 0; after a resume the epoch continues
        at another worker, so batches that arrive early wait for their turn.
        """
        if self.num_workers <= 1:
            yield from it
            return
        order = worker_order(list(self.stream.worker_batches))
        done = sum(self._consumed.values())
        expected = order[done:]
        if partial:  # the cut-short group comes again first: it was the last one consumed
            expected = [partial["worker"]] + expected
        waiting: dict[int, list[dict[str, Any]]] = {}
        position = 0
        for batch in it:
            waiting.setdefault(int(batch["_worker"]), []).append(batch)
            while position < len(expected) and waiting.get(expected[position]):
                yield waiting[expected[position]].pop(0)
                position += 1
        for w in sorted(waiting):  # nothing should be left; never drop a batch silently
            yield from waiting[w]

    def _consume(self, it: Iterator[dict[str, Any]], partial: dict[str, int] | None) -> Iterator[dict[str, Any]]:
        """Book-keep each batch (worker, consumed count, skips) and expand TBPTT groups."""
        for batch in it:
            wid = int(batch.pop("_worker"))
            batch.pop("_batch")
            self._skipped[wid] = int(batch.pop("_skipped"))
            if not self.chunks:
                self._consumed[wid] = self._consumed.get(wid, 0) + 1
                yield batch
                continue
            first = 0
            if partial and partial["worker"] == wid:
                first, partial = partial["chunks"], None
            else:
                self._consumed[wid] = self._consumed.get(wid, 0) + 1
            for n, chunk in enumerate(tbptt_chunks(batch, **self.chunks)):
                if n < first:
                    continue
                self._partial = {"worker": wid, "chunks": n + 1}
                yield chunk
            self._partial = None


def _fake_window(sequence_len: int) -> dict[str, Any]:
    return {"rgb": torch.zeros(1, sequence_len, 1, 1, 1)}


def _common(view: Any, paths: Any, batch_size: int, *, seed: int, rank: int | None, world_size: int | None,
            num_workers: int, training: bool, epoch_batches: int | None, on_error: str, buffer_videos: int,
            items_per_visit: int | None, prefetch_factor: int | None = None,
            chunks: dict[str, int] | None = None) -> StreamLoader:
    rank, world_size = _dist(rank, world_size)
    stream = ViewStream(view, shard_sets(paths), batch_size=batch_size, training=training, seed=seed, rank=rank,
                        world_size=world_size, num_workers=num_workers, epoch_batches=epoch_batches,
                        on_error=on_error, buffer_videos=buffer_videos, items_per_visit=items_per_visit)
    return StreamLoader(stream, num_workers=num_workers, prefetch_factor=prefetch_factor, chunks=chunks)


def object_crops(paths: Any, *, batch_size: int, size: tuple[int, int] = (64, 64), seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, num_workers: int = 0,
                 augment: bool = True, training: bool = True, epoch_batches: int | None = None,
                 on_error: str = "raise", buffer_videos: int = 8, items_per_visit: int | None = 16,
                 prefetch_factor: int | None = None) -> StreamLoader:
    """Single-object crops for ``LociPretrainer(rgb, depth, mask, iterations, mode)`` (§19.3).

    Batches: ``rgb`` (B, 3, H, W) float32 [0, 1]; ``depth`` (B, 1, H, W) float32 in [0, 1]
    (metric depth / depth_max; -1 everywhere when the video has no depth, as upstream); ``mask``
    (B, 1, H, W) float32 [0, 1], one instance per item; ``use_depth``, ``frame``, ``instance``
    (B,); ``valid`` (B,) bool; ``key`` list of video keys. ``items_per_visit`` caps how many crops
    one buffered video contributes before another is drawn (decorrelates batches).
    """
    return _common(ObjectCropsView(size, augment=augment), paths, batch_size, seed=seed, rank=rank,
                   world_size=world_size, num_workers=num_workers, training=training, epoch_batches=epoch_batches,
                   on_error=on_error, buffer_videos=buffer_videos, items_per_visit=items_per_visit,
                   prefetch_factor=prefetch_factor)


def video_chunks(paths: Any, *, batch_size: int, sequence_len: int, size: tuple[int, int] | None = None,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None, num_workers: int = 0,
                 augment: bool | None = None, training: bool = True, epoch_batches: int | None = None,
                 with_masks: bool | None = None, max_instances: int = 32, backprop_steps: int | None = None,
                 teacher_forcing: int = 10, on_error: str = "raise", buffer_videos: int = 4,
                 prefetch_factor: int | None = None) -> StreamLoader:
    """Windows of ``sequence_len`` frames for Loci (§19.2).

    Batches: ``rgb`` (B, S, 3, H, W) float32 [0, 1]; ``depth`` (B, S, 1, H, W) [0, 1] or -1;
    ``segmentation`` (B, S, H, W) int64 ids (0 = background); ``fg`` (B, S, 1, H, W) {0, 1};
    ``instance_masks`` (B, S, max_instances, H, W) float32 [0, 1] (channel m = id m + 1; default on
    for evaluation, off for training); ``time_steps`` (B, S); ``start`` (B,) first frame of each
    window in its video; ``use_depth``, ``valid`` (B,); ``key``.
    ``augment`` defaults to ``training`` (ScaleCrop + flip, same for the whole window).

    With ``backprop_steps`` K the loader yields upstream's TBPTT schedule instead: per window batch,
    floor(T_f/K) teacher-forcing chunks repeating frame 0 and S/K chunks of K frames, each with
    ``time_steps`` (k,) and ``reset`` (True on a group's first chunk); ``epoch_batches`` still
    counts window batches.
    """
    augment = training if augment is None else augment
    with_masks = (not training) if with_masks is None else with_masks
    view = VideoChunksView(sequence_len, size, augment=augment, with_masks=with_masks, max_instances=max_instances)
    chunks = {"backprop_steps": backprop_steps, "teacher_forcing": teacher_forcing} if backprop_steps else None
    return _common(view, paths, batch_size, seed=seed, rank=rank, world_size=world_size, num_workers=num_workers,
                   training=training, epoch_batches=epoch_batches, on_error=on_error, buffer_videos=buffer_videos,
                   items_per_visit=None, prefetch_factor=prefetch_factor, chunks=chunks)


def frame_pairs(paths: Any, *, batch_size: int, size: tuple[int, int] | None = None, seed: int = 0,
                rank: int | None = None, world_size: int | None = None, num_workers: int = 0,
                augment: bool | None = None, training: bool = True, epoch_batches: int | None = None,
                time_std_dev: float = -1.0, on_error: str = "raise", buffer_videos: int = 8,
                items_per_visit: int | None = 8, prefetch_factor: int | None = None,
                file_settings: dict[str, dict[str, Any]] | None = None) -> StreamLoader:
    """Source/target frame pairs of one video for background training (§19.4, §17.4).

    Batches: ``source_rgb``/``target_rgb`` (B, 3, H, W), ``source_depth``/``target_depth`` (B, 1,
    H, W) in [0, 1] or -1, ``source_fg``/``target_fg`` (B, 1, H, W), ``dt`` (B,) float (0 for a
    static camera), ``use_depth``, ``use_fg``, ``valid`` (B,), ``frames`` (B, 2), ``key``.
    ``file_settings`` ({shard: settings}, see ``views.frame_pairs.settings_by_shard``) gives shards
    their own loss settings, as the entries of upstream's background configs do.
    """
    augment = training if augment is None else augment
    view = FramePairsView(size, augment=augment, time_std_dev=time_std_dev, file_settings=file_settings)
    return _common(view, paths, batch_size, seed=seed,
                   rank=rank, world_size=world_size, num_workers=num_workers, training=training,
                   epoch_batches=epoch_batches, on_error=on_error, buffer_videos=buffer_videos,
                   items_per_visit=items_per_visit, prefetch_factor=prefetch_factor)


def proposal_frames(paths: Any, *, batch_size: int, num_masks: int, size: tuple[int, int] | None = None,
                    seed: int = 0, rank: int | None = None, world_size: int | None = None, num_workers: int = 0,
                    augment: bool | None = None, training: bool = True, epoch_batches: int | None = None,
                    on_error: str = "raise", buffer_videos: int = 8, items_per_visit: int | None = 8,
                    prefetch_factor: int | None = None) -> StreamLoader:
    """Frames with their instance masks for the position proposal (§19.4, §17.6).

    Batches: ``rgb`` (B, 3, H, W) [0, 1]; ``depth`` (B, 1, H, W) [0, 1] or -1; ``masks`` (B, num_masks,
    H, W) [0, 1], largest instance first, zero padded; ``use_depth``, ``frame``, ``num_instances``,
    ``valid`` (B,); ``key``. ``augment`` defaults to ``training`` (ScaleCrop + flip).
    """
    augment = training if augment is None else augment
    return _common(ProposalFramesView(num_masks, size, augment=augment), paths, batch_size, seed=seed, rank=rank,
                   world_size=world_size, num_workers=num_workers, training=training, epoch_batches=epoch_batches,
                   on_error=on_error, buffer_videos=buffer_videos, items_per_visit=items_per_visit,
                   prefetch_factor=prefetch_factor)
