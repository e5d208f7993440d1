"""The DeepSpeed config of a run: read it, fill it from the training config, refuse contradictions.

The training config is the single source of truth for batch size, gradient accumulation, precision
and learning rate. A DeepSpeed JSON may leave those fields out or set them to ``"auto"``; when it
states a value that differs, the run stops before training with a message naming both values and
the fix.

Gradient clipping is off unless the DeepSpeed JSON sets ``gradient_clipping``: upstream clips in no
stage, while DeepSpeed on its own would clip every gradient to norm 1.0.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .errors import TrainError

DEFAULT_DS_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "zero_optimization": {"stage": 0},
}


def _is_set(value: Any) -> bool:
    return value is not None and value != "auto"


def ds_config_path(flag: str | None, cfg: Any) -> Path | None:
    """The DeepSpeed config file of a run, found the same way whatever folder the command runs in.

    ``flag`` (``--deepspeed``) is taken as given, relative to the cwd like any command-line path.
    Otherwise the config's ``deepspeed`` key: an absolute path as is; a relative one is looked up
    from the config file's folder and each folder above it (the shipped configs say
    ``configs/deepspeed/fp32.json``, which is relative to the repository holding them), then from
    the cwd. None when neither sets one (the built-in default). Raises TrainError naming the
    places searched.
    """
    if flag:
        path = Path(flag)
        if not path.is_file():
            raise TrainError(f"--deepspeed {flag} does not exist (relative to the current folder "
                             f"{Path.cwd()}); pass one of configs/deepspeed/*.json")
        return path
    value = cfg["deepspeed"]
    if not value:
        return None
    path = Path(value)
    source = getattr(cfg, "source", None)
    bases = list(Path(source).resolve().parent.parents) if source else []
    if source:
        bases.insert(0, Path(source).resolve().parent)
    candidates = [path] if path.is_absolute() else [base / path for base in bases] + [Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = f"{source}: " if source else ""
    searched = "" if path.is_absolute() else (
        f" (looked in {bases[0]} and the folders above it, and in {Path.cwd()})" if bases
        else f" (looked in {Path.cwd()})")
    raise TrainError(f"{where}deepspeed {value} does not exist{searched}; fix the path in the config "
                     f"(relative to the config file's folder), or pass --deepspeed DS.json")


def read_ds_config(path: str | Path | None) -> dict[str, Any]:
    """The DeepSpeed config at ``path`` (or the built-in fp32/ZeRO-0 default when None)."""
    if path is None:
        return copy.deepcopy(DEFAULT_DS_CONFIG)
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"DeepSpeed config {path} does not exist; pass --deepspeed with one of "
                         f"configs/deepspeed/*.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TrainError(f"DeepSpeed config {path} is not valid JSON: {err}") from None


def resolve_ds_config(ds: dict[str, Any], *, micro_batch: int, grad_accum: int, world_size: int,
                      mixed_precision: bool, learning_rate: float, on_gpu: bool,
                      source: str = "the DeepSpeed config") -> tuple[dict[str, Any], bool]:
    """Fill ``ds`` from the training config; return (ds config, whether to pass our Ranger).

    Raises TrainError when ``ds`` contradicts the training config (batch sizes, precision, lr).
    """
    ds = copy.deepcopy(ds)
    fix = "make them agree, or leave the field out (or \"auto\") so the training config decides"

    def check(key: str, expected: int, cfg_key: str) -> None:
        if _is_set(ds.get(key)) and int(ds[key]) != expected:
            raise TrainError(f"{source} sets {key}={ds[key]} but the training config gives "
                             f"{expected} ({cfg_key}); {fix}")
        ds[key] = expected

    check("train_micro_batch_size_per_gpu", micro_batch, "model.batch_size")
    check("gradient_accumulation_steps", grad_accum, "model.gradient_accumulation_steps")
    check("train_batch_size", micro_batch * grad_accum * world_size,
          f"model.batch_size x model.gradient_accumulation_steps x {world_size} ranks")

    half = [name for name in ("fp16", "bf16") if ds.get(name, {}).get("enabled", False)]
    if len(half) > 1:
        raise TrainError(f"{source} enables both fp16 and bf16; enable at most one")
    if half and not mixed_precision:
        raise TrainError(f"{source} enables {half[0]} but the training config has "
                         f"model.mixed_precision=false; add --set model.mixed_precision=true or use "
                         f"configs/deepspeed/fp32.json")
    if mixed_precision and not half:
        raise TrainError(f"the training config has model.mixed_precision=true but {source} trains "
                         f"in fp32; use configs/deepspeed/bf16.json (or fp16) or set "
                         f"model.mixed_precision=false")

    use_client_optimizer = "optimizer" not in ds
    if use_client_optimizer:
        # DeepSpeed only trusts its own optimisers with ZeRO unless told otherwise.
        if int(ds.get("zero_optimization", {}).get("stage", 0)) > 0:
            ds["zero_allow_untested_optimizer"] = True
    else:
        params = ds["optimizer"].setdefault("params", {})
        if _is_set(params.get("lr")) and float(params["lr"]) != float(learning_rate):
            raise TrainError(f"{source} sets optimizer lr={params['lr']} but the training config "
                             f"has learning_rate={learning_rate}; {fix}")
        params["lr"] = learning_rate
        kind = str(ds["optimizer"].get("type", "")).lower()
        if not on_gpu and kind in ("adam", "adamw") and "torch_adam" not in params:
            params["torch_adam"] = True  # DeepSpeed's CPU Adam op is a slow JIT build
    ds.setdefault("gradient_clipping", 0.0)  # DeepSpeed's default is 1.0; upstream never clips
    ds.setdefault("steps_per_print", 10**9)  # our logger reports progress
    return ds, use_client_optimizer


def engine_dtype_name(ds: dict[str, Any]) -> str:
    """'bf16', 'fp16' or 'fp32': the dtype the engine keeps its weights in."""
    for name in ("bf16", "fp16"):
        if ds.get(name, {}).get("enabled", False):
            return name
    return "fp32"
