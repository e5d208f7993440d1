"""Everything checked before a run touches DeepSpeed: config, stage, shards, output folder, resume.

Each check raises TrainError with the problem and the fix, so a misconfigured run fails in seconds
instead of after a launcher start-up, and every rank fails the same way.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from . import lock, manifest
from .dsconfig import ds_config_path, read_ds_config, resolve_ds_config
from .errors import TrainError
from .stages import Stage, get_stage, stage_from_config


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
    ds_config: dict[str, Any] = field(default_factory=dict)
    client_optimizer: bool = True
    fingerprint: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    resumed_step: int = 0
    done: str | None = None  # set when there is nothing to train (the message says why)
    notices: list[str] = field(default_factory=list)


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
    """Every shard exists and its whole tar index reads (no truncated, corrupt or empty shard)."""
    from loci_fast.data import DataError, verify_shards

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
        verify_shards(paths)
    except DataError as err:
        raise TrainError(str(err)) from None


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


# What changes the loss sequence besides the config, and how a user sets each: a resume must
# match all of them (the config itself is compared by hash).
FINGERPRINT_FLAGS = {
    "stage": "--stage (or the config's pretraining_mode)",
    "seed": "--seed",
    "data": "--data (or data.train)",
    "num_workers": "--workers (or num_workers)",
    "deepspeed": "--deepspeed",
    "world_size": "the number of ranks (the launcher's --num_gpus / --nproc_per_node)",
    "kernel_backend": "LOCI_FAST_KERNELS (or kernels.backend)",
}


def kernel_backend(cfg) -> str:
    """The kernel backend a run uses: LOCI_FAST_KERNELS when set, else the config's."""
    return os.environ.get("LOCI_FAST_KERNELS", "").strip().lower() or str(cfg["kernels"]["backend"])


def fingerprint(cfg, stage: Stage, shards: list[str], seed: int, num_workers: int,
                ds_config: dict[str, Any], world_size: int) -> dict[str, Any]:
    return {"stage": stage.name, "seed": seed, "data": list(shards), "num_workers": num_workers,
            "deepspeed": ds_config, "world_size": world_size, "kernel_backend": kernel_backend(cfg)}


def _describe(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def compare_fingerprint(saved: dict[str, Any], mine: dict[str, Any], what: str) -> None:
    """TrainError naming the first setting that differs from the checkpoint's, and the fix."""
    if not saved:
        raise TrainError(f"{what} stores no run fingerprint; it was not written by this version of "
                         f"loci-fast: start a new run with --init-from {what}")
    for key, flag in FINGERPRINT_FLAGS.items():
        if saved.get(key) != mine.get(key):
            raise TrainError(f"cannot resume {what}: it was trained with {key} = "
                             f"{_describe(saved.get(key))}, this run has {_describe(mine.get(key))}; "
                             f"resume with the same {flag}, or start a new run in another --out "
                             f"(with --init-from {what} to keep the weights)")


def _verified(ckpt_dir: Path, tag: str) -> str | None:
    """None when checkpoint ``tag`` is whole (manifest matches), else the problem."""
    return manifest.problem(ckpt_dir / tag)


def choose_resume(out: Path, resume: str | None) -> tuple[tuple[Path, str] | None, list[str]]:
    """(checkpoint to resume, notices). ``auto`` takes the newest complete checkpoint whose files
    match its manifest, saying which it passed over; an explicit path must match its own."""
    ckpt_dir = out / ckpt.CHECKPOINT_DIR
    existing = ckpt.latest_tag(ckpt_dir)
    if resume is None:
        if existing is not None or ckpt.complete_tags(ckpt_dir):
            raise TrainError(f"{out} already holds checkpoints of a run (latest: {existing}); pass "
                             f"--resume auto to continue it, or choose another --out")
        return None, []
    if resume != "auto":
        try:
            target = ckpt.resolve(resume)
        except FileNotFoundError as err:
            raise TrainError(f"--resume {resume}: {err}") from None
        problem = _verified(*target)
        if problem:
            raise TrainError(f"--resume {resume}: refused, {problem}; DeepSpeed's files are only "
                             f"loaded from a checkpoint whose manifest matches")
        return target, []
    notices = []
    tags = ckpt.complete_tags(ckpt_dir)
    if existing in tags:  # try what `latest` names first, then older ones
        tags = [t for t in tags if t != existing] + [existing]
    for tag in reversed(tags):
        problem = _verified(ckpt_dir, tag)
        if problem is None:
            if notices:
                notices.append(f"--resume auto: resuming from {tag}, the newest checkpoint that "
                               f"passes its manifest check")
            return (ckpt_dir, tag), notices
        notices.append(f"--resume auto: skipping checkpoint {tag}: {problem}")
    if tags:
        raise TrainError("; ".join(notices) + "; no checkpoint passes: start a new run in another "
                         "--out")
    return None, notices


def check_resume(target: tuple[Path, str], cfg, mine: dict[str, Any],
                 max_steps: int | None) -> tuple[int, str | None]:
    """(stored step, message when there is nothing left to train); TrainError on any mismatch."""
    what = str(target[0] / target[1])
    try:
        saved = ckpt.client_state(target[0] / target[1])
    except FileNotFoundError as err:
        raise TrainError(f"--resume: {err}") from None
    if saved.get("config_hash") != cfg.hash():
        raise TrainError(f"cannot resume {what}: it was trained with another config (hash "
                         f"{str(saved.get('config_hash'))[:12]} vs {cfg.hash()[:12]}); resume with "
                         f"the same config and --set overrides, or start a new run in another --out")
    compare_fingerprint(saved.get("fingerprint") or {}, mine, what)
    step = int(saved["step"])
    if max_steps is not None and max_steps <= step:
        return step, (f"nothing to do: {what} is at step {step} and --max-steps is {max_steps}; "
                      f"raise --max-steps to train further")
    return step, None


def resolve_deepspeed(options: TrainOptions, cfg, world_size: int) -> tuple[dict[str, Any], bool]:
    """The run's DeepSpeed config (filled from the training config) and whether Ranger is used."""
    import torch

    ds_path = ds_config_path(options.deepspeed, cfg)
    return resolve_ds_config(
        read_ds_config(ds_path), micro_batch=int(cfg["model"]["batch_size"]),
        grad_accum=int(cfg["model"]["gradient_accumulation_steps"]), world_size=world_size,
        mixed_precision=bool(cfg["model"]["mixed_precision"]),
        learning_rate=float(cfg["learning_rate"]), on_gpu=torch.cuda.is_available(),
        source=f"DeepSpeed config {ds_path}" if ds_path else "the default DeepSpeed config")


def check_numbers(options: TrainOptions) -> None:
    for key, value in (("save_every", options.save_every), ("image_every", options.image_every),
                       ("max_nonfinite", options.max_nonfinite)):
        if value < 1:
            raise TrainError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    if options.max_steps is not None and options.max_steps < 1:
        raise TrainError(f"--max-steps must be >= 1, got {options.max_steps}")
    if options.workers is not None and options.workers < 0:
        raise TrainError(f"--workers must be >= 0, got {options.workers}")


def plan(options: TrainOptions, world_size: int) -> Plan:
    """Run every check that needs no process group; return what the engine needs.

    ``world_size`` comes from the launcher's environment (the process group does not exist yet).
    """
    check_numbers(options)
    cfg = load_training_config(options.config, options.overrides)
    stage = get_stage(options.stage or stage_from_config(cfg))
    shards = [os.path.abspath(s) for s in expand_shards(training_patterns(cfg, options.data))]
    check_shards(shards)
    out = Path(options.out or Path("out") / cfg["model_path"])
    lock.check_free(out)
    seed = int(options.seed if options.seed is not None else cfg["seed"])
    num_workers = options.workers if options.workers is not None else int(cfg["num_workers"])
    ds_config, client_optimizer = resolve_deepspeed(options, cfg, world_size)
    mine = fingerprint(cfg, stage, shards, seed, num_workers, ds_config, world_size)
    resume_from, notices = choose_resume(out, options.resume)
    step, done = (0, None) if resume_from is None else check_resume(resume_from, cfg, mine,
                                                                     options.max_steps)
    result = Plan(options, cfg, stage, shards, out, seed, resume_from, ds_config,
                  client_optimizer, mine, num_workers, step, done, notices)
    return result
