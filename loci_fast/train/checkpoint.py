"""Checkpoints that survive kills: layout, atomic ``latest``, per-rank state, RNG capture.

Layout under ``<out>/checkpoints/``::

    step_00000040/                 one checkpoint (DeepSpeed's files + ours)
        mp_rank_00_model_states.pt     DeepSpeed: module weights and the client state
        ...optim_states.pt             DeepSpeed: optimiser state (per rank under ZeRO)
        rank_00000.pt                  ours: RNG states and data-stream position of rank 0
        COMPLETE                       written by rank 0 after every rank has saved
    latest                         the tag of the newest COMPLETE checkpoint

Every rank saves its part, a barrier follows, and only then rank 0 writes ``COMPLETE`` and swaps
``latest`` in with an atomic rename, so a kill at any moment leaves ``latest`` pointing at a whole
checkpoint. The name ``latest`` and its format (the bare tag) are DeepSpeed's own, so
``engine.load_checkpoint(dir)`` finds it too.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
COMPLETE = "COMPLETE"
MODEL_STATES = "mp_rank_00_model_states.pt"
_TAG = re.compile(r"^step_(\d{8})$")


def tag_for(step: int) -> str:
    """The directory name of the checkpoint taken after optimiser step ``step``."""
    return f"step_{step:08d}"


def rank_file(tag_dir: Path, rank: int) -> Path:
    return Path(tag_dir) / f"rank_{rank:05d}.pt"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags of the checkpoints in ``ckpt_dir`` that finished saving, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if _TAG.match(p.name) and (p / COMPLETE).exists()]
    return sorted(tags)


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag ``latest`` names, if it names a complete checkpoint; else the newest complete one."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST
    if pointer.exists():
        tag = pointer.read_text().strip()
        if (ckpt_dir / tag / COMPLETE).exists():
            return tag
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def resolve(path: str | Path) -> tuple[Path, str]:
    """Split a checkpoint reference into (checkpoints dir, tag).

    Accepts a run folder (``--out``), its ``checkpoints`` folder, or one checkpoint folder.
    Raises FileNotFoundError naming the path when no complete checkpoint is there.
    """
    path = Path(path)
    if (path / COMPLETE).exists() and _TAG.match(path.name):
        return path.parent, path.name
    for candidate in (path / CHECKPOINT_DIR, path):
        tag = latest_tag(candidate)
        if tag is not None:
            return candidate, tag
    if _TAG.match(path.name) and path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is incomplete (no {COMPLETE} marker): the run "
                                f"was killed while saving it; use the checkpoint before it")
    raise FileNotFoundError(f"no complete checkpoint under {path} (looked for {CHECKPOINT_DIR}/"
                            f"{LATEST} and step_* folders with a {COMPLETE} marker)")


def client_state(path: str | Path) -> dict[str, Any]:
    """The client state (step, config, stage, ...) stored with a checkpoint, read on the CPU."""
    ckpt_dir, tag = resolve(path)
    states = torch.load(ckpt_dir / tag / MODEL_STATES, map_location="cpu", weights_only=False)
    return {k: v for k, v in states.items() if k not in ("module", "optimizer", "lr_scheduler")}


def module_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state dict, client state) of a checkpoint, on the CPU, without DeepSpeed."""
    ckpt_dir, tag = resolve(path)
    states = torch.load(ckpt_dir / tag / MODEL_STATES, map_location="cpu", weights_only=False)
    module = states.get("module")
    if not isinstance(module, dict):
        raise ValueError(f"{ckpt_dir / tag / MODEL_STATES} holds no module weights")
    extra = {k: v for k, v in states.items() if k not in ("module", "optimizer", "lr_scheduler")}
    return module, extra


def rng_state() -> dict[str, Any]:
    """The state of every random generator the training loop touches (python, numpy, torch)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prune(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (rank 0 only, after ``latest``)."""
    if keep <= 0:
        return
    tags = complete_tags(ckpt_dir)
    current = latest_tag(ckpt_dir)
    for tag in tags[:-keep]:
        if tag != current:
            shutil.rmtree(Path(ckpt_dir) / tag, ignore_errors=True)


def save(engine, out: Path, step: int, client: dict[str, Any], rank_state: dict[str, Any],
         *, rank: int, keep: int, barrier) -> Path:
    """Save a checkpoint from every rank; returns its folder once ``latest`` points at it.

    ``barrier`` is a callable that blocks until every rank reaches it.
    """
    ckpt_dir = Path(out) / CHECKPOINT_DIR
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tag_dir.exists():  # a half-written copy left by a killed run
            shutil.rmtree(tag_dir)
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client, save_latest=False)
    torch.save(rank_state, rank_file(tag_dir, rank))
    barrier()
    if rank == 0:
        (tag_dir / COMPLETE).write_text(f"{step}\n")
        write_atomic(ckpt_dir / LATEST, tag)
        prune(ckpt_dir, keep)
    barrier()
    return tag_dir
