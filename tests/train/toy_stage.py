"""A tiny stage for the engine tests: a conv autoencoder over images read from real tar shards.

Loaded by the trainer with ``--stage tests.train.toy_stage:TOY`` (the tests run from the repo root).
Its batch stream is a pure function of (seed, rank, position), so resuming at a saved position
reproduces the batches exactly.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch

from loci_fast.train.stages import Stage, StepOutput


def write_toy_shards(folder: Path, shards: int = 2, per_shard: int = 6, size: int = 8) -> str:
    """Write ``shards`` tar files of random .npy images; return their brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for s in range(shards):
        with tarfile.open(folder / f"toy-{s:06d}.tar", "w") as tar:
            for i in range(per_shard):
                buf = io.BytesIO()
                np.save(buf, rng.random((3, size, size), dtype=np.float32))
                info = tarfile.TarInfo(f"sample{s:03d}{i:03d}.rgb.npy")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    return str(folder / f"toy-{{000000..{shards - 1:06d}}}.tar")


class ToyStream:
    def __init__(self, shards, batch_size: int, seed: int, rank: int) -> None:
        images = []
        for path in shards:
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    images.append(np.load(io.BytesIO(tar.extractfile(member).read())))
        self.images = torch.from_numpy(np.stack(images))
        self.batch_size, self.seed, self.rank, self.position = batch_size, seed, rank, 0

    def __iter__(self):
        # Finite epochs, like the real loaders: the engine must start the next one itself.
        for _ in range(5):
            gen = torch.Generator().manual_seed(self.seed * 7919 + self.rank * 104729 + self.position)
            index = torch.randint(len(self.images), (self.batch_size,), generator=gen)
            batch = {"rgb": self.images[index], "position": torch.tensor(self.position),
                     "rank": torch.tensor(self.rank)}
            self.position += 1
            yield batch

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = int(state["position"])


class ToyModel(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encode = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.decode = torch.nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, rgb):
        # Dropout-style noise makes the loss depend on the RNG state, which resume must restore.
        hidden = torch.relu(self.encode(rgb)) * (torch.rand_like(rgb[:, :1]) > 0.1)
        return torch.sigmoid(self.decode(hidden))


class ToyStage(Stage):
    metric_keys = ("mse",)

    def __init__(self, name: str = "toy", nan_from: int | None = None) -> None:
        self.name, self.nan_from = name, nan_from

    def build_model(self, cfg):
        return ToyModel(int(cfg["model"]["gestalt_size"]))

    def batches(self, cfg, shards, *, rank, world_size, seed, num_workers):
        return ToyStream(shards, int(cfg["model"]["batch_size"]), seed, rank)

    def forward(self, model, batch, state=None):
        recon = model(batch["rgb"])
        mse = torch.mean((recon - batch["rgb"]) ** 2)
        loss = mse
        if self.nan_from is not None and int(batch["position"]) >= self.nan_from:
            loss = loss * float("nan")
        return StepOutput(loss, {"mse": mse}, {"input": batch["rgb"], "recon": recon})


TOY = ToyStage()
TOY_NAN = ToyStage("toy_nan", nan_from=3)


class LateModel(ToyModel):
    """ToyModel plus a parameter that the loss reaches only from batch position 3 on."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.late = torch.nn.Parameter(torch.ones(4))


class LateStage(ToyStage):
    def build_model(self, cfg):
        return LateModel(int(cfg["model"]["gestalt_size"]))

    def forward(self, model, batch, state=None):
        out = super().forward(model, batch)
        if int(batch["position"]) >= 3:
            out.loss = out.loss + (model.module.late if hasattr(model, "module") else model.late).square().mean()
        return out


TOY_LATE = LateStage("toy_late")


def _module(model):
    return model.module if hasattr(model, "module") else model


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


class InfGradStage(ToyStage):
    """Finite losses; at batch positions ``at`` on rank ``on_rank`` (None: every rank) the first
    weight's gradient is infinite. Under ZeRO 2 that weight's partition lives on rank 0 only, so
    the ranks' own checks disagree."""

    def __init__(self, name: str, at: tuple[int, ...], on_rank: int | None = None) -> None:
        super().__init__(name)
        self.at, self.on_rank = at, on_rank

    def forward(self, model, batch, state=None):
        out = super().forward(model, batch)
        hit = int(batch["position"]) in self.at and self.on_rank in (None, int(batch["rank"]))
        if hit:
            weight = _module(model).encode.weight
            out.loss = out.loss + 0.0 * _InfiniteGradient.apply(weight).sum()
        return out


TOY_INF_GRAD = InfGradStage("toy_inf_grad", at=(2, 3))
TOY_INF_GRAD_RANK1 = InfGradStage("toy_inf_grad_rank1", at=(2, 3), on_rank=1)


class RecurrentModel(ToyModel):
    """ToyModel plus a recurrent cell whose hidden vector carries over between batches."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.cell = torch.nn.Linear(3 + 4, 4)


class RecurrentStage(ToyStage):
    """Sequences of ``length`` batches; the state (a hidden vector per sample, and a step counter
    in a nested container) is created at each sequence start and feeds the loss, so a resume in
    mid-sequence is exact only if the state came back from the checkpoint."""

    metric_keys = ("mse", "hidden")

    def __init__(self, name: str = "toy_recurrent", length: int = 3) -> None:
        super().__init__(name)
        self.length = length

    def build_model(self, cfg):
        return RecurrentModel(int(cfg["model"]["gestalt_size"]))

    def starts_sequence(self, batch):
        return int(batch["position"]) % self.length == 0

    def initial_state(self, model, batch):
        n = batch["rgb"].shape[0]
        return {"hidden": torch.full((n, 4), 0.5), "meta": [torch.zeros(())]}

    def forward(self, model, batch, state=None):
        out = super().forward(model, batch)
        pooled = batch["rgb"].mean((2, 3))
        hidden = torch.tanh(_module(model).cell(torch.cat([pooled, state["hidden"]], 1)))
        out.loss = out.loss + hidden.square().mean()
        out.metrics["hidden"] = hidden.mean()
        out.state = {"hidden": hidden, "meta": [state["meta"][0] + 1]}
        return out


TOY_RECURRENT = RecurrentStage()
