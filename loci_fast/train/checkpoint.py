"""Checkpoints that survive kills: layout, atomic ``latest``, manifests, pruning.

Layout under ``<out>/checkpoints/``::

    step_00000040/                 one checkpoint (DeepSpeed's files + ours)
        mp_rank_00_model_states.pt     DeepSpeed: module weights and optimiser (read by --resume only)
        ...optim_states.pt             DeepSpeed: optimiser partitions under ZeRO
        weights.safetensors            ours: the module weights in fp32 (export, --init-from)
        client.json                    ours: step, stage, config, run fingerprint
        rank_00000.safetensors         ours: rank 0's RNG states, data position, recurrent state
        MANIFEST.json                  every file's size and SHA-256, written once all ranks saved
        COMPLETE                       the marker: written last, after everything is fsynced
    step_00000040-r1/              the same step saved again (a resume that stopped at once)
    latest                         the tag of the newest COMPLETE checkpoint

A save never touches a complete checkpoint: a step saved twice goes to a new revision folder, and
``latest`` moves (atomic rename, fsynced) only once the new folder is complete. Pruning removes a
folder's ``COMPLETE`` before its files, so a half-deleted folder never looks complete. Nothing here
unpickles anything: our files are safetensors and JSON; DeepSpeed's own are loaded only by
``--resume``, after the manifest check (``manifest.problem``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import manifest

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
COMPLETE = "COMPLETE"
WEIGHTS = "weights.safetensors"
CLIENT = "client.json"
SLOW_SAVE_ENV = "LOCI_FAST_TEST_SLOW_SAVE"  # tests only: seconds to sleep inside every save
_TAG = re.compile(r"^step_(\d{8})(?:-r(\d+))?$")


def tag_for(step: int, revision: int = 0) -> str:
    """The directory name of the checkpoint taken after optimiser step ``step``."""
    return f"step_{step:08d}" + (f"-r{revision}" if revision else "")


def parse_tag(tag: str) -> tuple[int, int] | None:
    """(step, revision) of a checkpoint folder name, None for anything else."""
    match = _TAG.match(tag)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def rank_file(tag_dir: Path, rank: int) -> Path:
    return Path(tag_dir) / f"rank_{rank:05d}.safetensors"


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a mix;
    the file and its folder are fsynced before this returns."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def is_complete(tag_dir: Path) -> bool:
    return (Path(tag_dir) / COMPLETE).is_file()


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags of the checkpoints in ``ckpt_dir`` that finished saving, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if parse_tag(p.name) and is_complete(p)]
    return sorted(tags, key=parse_tag)


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag ``latest`` names, if it names a complete checkpoint; else the newest complete one."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        tag = pointer.read_text().strip()
        if parse_tag(tag) and is_complete(ckpt_dir / tag):
            return tag
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def resolve(path: str | Path) -> tuple[Path, str]:
    """Split a checkpoint reference into (checkpoints dir, tag).

    Accepts a run folder (``--out``), its ``checkpoints`` folder, or one checkpoint folder.
    Raises FileNotFoundError naming the path when no complete checkpoint is there.
    """
    path = Path(path)
    if parse_tag(path.name) and is_complete(path):
        return path.parent, path.name
    for candidate in (path / CHECKPOINT_DIR, path):
        tag = latest_tag(candidate)
        if tag is not None:
            return candidate, tag
    if parse_tag(path.name) and path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is incomplete (no {COMPLETE} marker): the run "
                                f"was killed while saving it; use the checkpoint before it")
    raise FileNotFoundError(f"no complete checkpoint under {path} (looked for {CHECKPOINT_DIR}/"
                            f"{LATEST} and step_* folders with a {COMPLETE} marker)")


def client_state(path: str | Path) -> dict[str, Any]:
    """The client state (step, config, stage, fingerprint, ...) stored with a checkpoint."""
    ckpt_dir, tag = resolve(path)
    file = ckpt_dir / tag / CLIENT
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} is missing: {ckpt_dir / tag} was not written by this "
                                f"version of loci-fast") from None
    except ValueError as err:
        raise FileNotFoundError(f"{file} is corrupt ({err})") from None


def module_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state dict in fp32, client state) of a checkpoint, on the CPU, without DeepSpeed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt_dir, tag = resolve(path)
    client = client_state(ckpt_dir / tag)
    file = ckpt_dir / tag / WEIGHTS
    try:
        return load_file(str(file)), client
    except (OSError, SafetensorError) as err:
        raise FileNotFoundError(f"{file} cannot be read ({err})") from None


def next_tag(ckpt_dir: Path, step: int) -> str:
    """The first folder name for ``step`` that does not exist yet (complete or not)."""
    revision = 0
    while (Path(ckpt_dir) / tag_for(step, revision)).exists():
        revision += 1
    return tag_for(step, revision)


def remove(tag_dir: Path) -> None:
    """Delete a checkpoint folder, its COMPLETE marker first (a kill mid-way leaves no impostor)."""
    marker = Path(tag_dir) / COMPLETE
    if marker.exists():
        marker.unlink()
        fsync_path(Path(tag_dir))
    shutil.rmtree(tag_dir, ignore_errors=True)


def prune(ckpt_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints (0: all); drop leftovers of killed saves.

    Rank 0 calls it after ``latest`` moved, while no rank writes (so an incomplete folder is a
    leftover, never a save in progress).
    """
    ckpt_dir = Path(ckpt_dir)
    current = latest_tag(ckpt_dir)
    tags = complete_tags(ckpt_dir)
    doomed = [t for t in tags[:-keep]] if keep > 0 else []
    doomed += [p.name for p in ckpt_dir.iterdir() if parse_tag(p.name) and p.is_dir()
               and not is_complete(p)]
    for tag in doomed:
        if tag != current:
            remove(ckpt_dir / tag)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(Path(folder).rglob("*"), reverse=True):
        fsync_path(path)
    fsync_path(folder)


def save(engine, out: Path, step: int, *, write_own: Callable[[Path], None], rank: int, keep: int,
         barrier: Callable[[], None]) -> Path:
    """Save a checkpoint from every rank; returns its folder once ``latest`` points at it.

    ``write_own(tag_dir)`` writes this rank's own files (rank file; on rank 0 also the weights and
    client.json). ``barrier`` blocks until every rank reaches it.
    """
    ckpt_dir = Path(out) / CHECKPOINT_DIR
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    tag = next_tag(ckpt_dir, step)  # every rank sees the same folders here
    barrier()
    tag_dir = ckpt_dir / tag
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step},
                           save_latest=False)
    write_own(tag_dir)
    if os.environ.get(SLOW_SAVE_ENV):
        time.sleep(float(os.environ[SLOW_SAVE_ENV]))
    barrier()
    if rank == 0:
        _fsync_tree(tag_dir)
        manifest.write(tag_dir)
        write_atomic(tag_dir / COMPLETE, f"{step}\n")
        write_atomic(ckpt_dir / LATEST, tag)
        prune(ckpt_dir, keep)
    barrier()
    return tag_dir
