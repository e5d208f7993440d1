"""Everything checked before a run touches DeepSpeed: config, stage, shards, output folder, resume.

Each check raises TrainError with the problem and the fix, so a misconfigured run fails in seconds
instead of after a launcher start-up, and every rank fails the same way.
"""
from __future__ import annotations

import glob
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from .errors import TrainError
from .stage import Stage, get_stage, stage_from_config


@dataclass
class TrainOptions:
    """The command line of ``loci-fast train`` (see command.py for the meaning of each)."""

    config: str
    data: list[str] | None = None
    deepspeed: str | None = None
    out: str | None = None
    init_from: list[str] = field(default_factory=list)
    resume: str | None = None
    max_steps: int | None = None
    seed: int | None = None
    stage: str | None = None
    overrides: list[str] = field(default_factory=list)
    save_every: int = 500
    image_every: int = 250
    keep: int = 2
    max_nonfinite: int = 10
    workers: int | None = None
    progress: bool = True


@dataclass
class Plan:
    """The checked, resolved inputs of a run."""

    options: TrainOptions
    cfg: Any
    stage: Stage
    shards: list[str]
    out: Path
    seed: int
    resume_from: tuple[Path, str] | None  # (checkpoints dir, tag)


def load_training_config(path: str, overrides: list[str]) -> Any:
    """The validated config, or TrainError naming the file, key and problem."""
    from loci_fast.config import ConfigError, load_config, parse_overrides

    if not Path(path).is_file():
        raise TrainError(f"config {path} does not exist")
    try:
        return load_config(path, overrides=parse_overrides(overrides))
    except ConfigError as err:
        raise TrainError(f"bad config: {err}") from None


def expand_shards(patterns: list[str]) -> list[str]:
    """Expand brace ranges ({000000..000007}) and globs; every resulting path must exist."""
    from braceexpand import braceexpand

    paths: list[str] = []
    for pattern in patterns:
        for item in braceexpand(pattern):
            matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
            if not matches:
                raise TrainError(f"no shard matches {item!r} (from {pattern!r}); check --data or "
                                 f"data.train in the config, or write shards with "
                                 f"`loci-fast data synth --out DIR`")
            paths.extend(matches)
    return paths


def check_shards(paths: list[str]) -> None:
    """Every shard exists, is readable and starts like a tar file."""
    if not paths:
        raise TrainError("no training shards: give --data 'DIR/name-{000000..000007}.tar' or set "
                         "data.train in the config")
    for path in paths:
        if not os.path.isfile(path):
            raise TrainError(f"shard {path} does not exist; check --data / data.train, or write "
                             f"shards with `loci-fast data synth --out DIR`")
        if not os.access(path, os.R_OK):
            raise TrainError(f"shard {path} is not readable (permissions)")
        try:
            ok = tarfile.is_tarfile(path)
        except OSError as err:
            raise TrainError(f"shard {path} cannot be read: {err}") from None
        if not ok:
            raise TrainError(f"shard {path} is not a tar file (webdataset shards are tar archives)")


def training_patterns(cfg, data_flag: list[str] | None) -> list[str]:
    """Shard patterns from --data, else from the config's data.train entries."""
    if data_flag:
        return list(data_flag)
    patterns = []
    for entry in cfg["data"]["train"]:
        if entry["shards"] is None:
            raise TrainError(f"data.train entry {entry['path']!r} is an upstream HDF5 file; convert "
                             f"it to shards (loci-fast data convert) or pass --data SHARDS")
        patterns.append(entry["shards"])
    return patterns


def check_out_dir(out: Path, resume: str | None, config_hash: str) -> tuple[Path, str] | None:
    """Decide where to resume from; refuse to mix a new run into a folder that holds another."""
    ckpt_dir = out / ckpt.CHECKPOINT_DIR
    existing = ckpt.latest_tag(ckpt_dir)
    if resume is None:
        if existing is not None or ckpt.complete_tags(ckpt_dir):
            raise TrainError(f"{out} already holds checkpoints of a run (latest: {existing}); pass "
                             f"--resume auto to continue it, or choose another --out")
        return None
    if resume == "auto":
        if existing is None:
            return None  # nothing yet: a fresh start
        target = (ckpt_dir, existing)
    else:
        try:
            target = ckpt.resolve(resume)
        except FileNotFoundError as err:
            raise TrainError(f"--resume {resume}: {err}") from None
    saved = ckpt.client_state(target[0] / target[1])
    if saved.get("config_hash") != config_hash:
        raise TrainError(f"--resume {resume}: checkpoint {target[1]} was trained with another "
                         f"config (hash {str(saved.get('config_hash'))[:12]} vs "
                         f"{config_hash[:12]}); resume with the same config and --set overrides, "
                         f"or start a new run in another --out")
    return target


def plan(options: TrainOptions) -> Plan:
    """Run every check; return what the engine needs."""
    cfg = load_training_config(options.config, options.overrides)
    stage = get_stage(options.stage or stage_from_config(cfg))
    shards = expand_shards(training_patterns(cfg, options.data))
    check_shards(shards)
    out = Path(options.out or Path("out") / cfg["model_path"])
    seed = int(options.seed if options.seed is not None else cfg["seed"])
    for key, value in (("save_every", options.save_every), ("image_every", options.image_every),
                       ("max_nonfinite", options.max_nonfinite)):
        if value < 1:
            raise TrainError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    if options.max_steps is not None and options.max_steps < 1:
        raise TrainError(f"--max-steps must be >= 1, got {options.max_steps}")
    resume_from = check_out_dir(out, options.resume, cfg.hash())
    return Plan(options, cfg, stage, shards, out, seed, resume_from)
