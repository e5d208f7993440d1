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

from loci_fast.train.stage import Stage, StepOutput


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
            batch = {"rgb": self.images[index], "position": torch.tensor(self.position)}
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

    def forward(self, model, batch):
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

    def forward(self, model, batch):
        out = super().forward(model, batch)
        if int(batch["position"]) >= 3:
            out.loss = out.loss + (model.module.late if hasattr(model, "module") else model.late).square().mean()
        return out


TOY_LATE = LateStage("toy_late")
