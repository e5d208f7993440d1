"""The stages ``loci-fast train`` can run, by name: an explicit table, one module per family.

``BUILTIN`` maps each name to the module attribute holding its ``Stage``; modules are imported
only when their stage is asked for. ``--stage package.module:NAME`` loads a stage from anywhere
(how the tests plug in toy stages, and how a user can add one without editing this table).
"""
from __future__ import annotations

import importlib

from ..errors import TrainError
from .base import BatchStream, Stage, StepOutput

__all__ = ["BUILTIN", "BatchStream", "Stage", "StepOutput", "available", "get_stage",
           "stage_from_config"]

BUILTIN: dict[str, str] = {
    # Object pretraining (reference §15, §17.3): LociPretrainer on single-object crops.
    "mask": "loci_fast.train.stages.objects:MASK",
    "depth": "loci_fast.train.stages.objects:DEPTH",
    "rgb": "loci_fast.train.stages.objects:RGB",
    "stage1": "loci_fast.train.stages.objects:STAGE1",
    "stage2": "loci_fast.train.stages.objects:STAGE2",
    # The dynamic background (reference §12, §17.4): BackgroundPretrainer on frame pairs.
    "background": "loci_fast.train.stages.background:BACKGROUND",
    # The position proposal of segmentation-mode slot initialisation (reference §13, §17.6).
    "proposal": "loci_fast.train.stages.proposal:PROPOSAL",
    # The whole Loci-s model on videos, truncated BPTT (reference §14, §17.5).
    "loci": "loci_fast.train.stages.loci:LOCI",
    # The original Loci on CATER, upstream's online loop (loci.md §3.2-3.9); one step per frame.
    "cater1": "loci_fast.train.stages.cater:CATER1",
    "cater2": "loci_fast.train.stages.cater:CATER2",
    "cater3": "loci_fast.train.stages.cater:CATER3",
    "cater4": "loci_fast.train.stages.cater:CATER4",
}
#: upstream's command-line spellings of stages
ALIASES: dict[str, str] = {"pretrain-bg": "background", "pretrain_bg": "background"}


def available() -> list[str]:
    """Names of the built-in stages."""
    return sorted(BUILTIN)


def _load(spec: str, what: str) -> Stage:
    module_name, _, attr = spec.partition(":")
    try:
        stage = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise TrainError(f"{what}: cannot load {spec} ({err})") from None
    if not isinstance(stage, Stage):
        raise TrainError(f"{what}: {spec} is a {type(stage).__name__}, not a Stage")
    return stage


def get_stage(name: str) -> Stage:
    """The stage called ``name``, or ``package.module:ATTRIBUTE`` for a stage defined elsewhere."""
    if ":" in name:
        return _load(name, f"--stage {name}")
    name = ALIASES.get(name, name)
    if name not in BUILTIN:
        raise TrainError(f"unknown stage {name!r}; known stages: {', '.join(available())}, or "
                         f"package.module:ATTRIBUTE")
    return _load(BUILTIN[name], f"stage {name}")


def stage_from_config(cfg) -> str:
    """The config's ``stage`` when set; else upstream's rule: the stage follows from
    pretraining_mode and pretrainer_iterations (upstream picks the background by a flag only)."""
    try:
        explicit = cfg["stage"]
    except (KeyError, TypeError):
        explicit = None
    if explicit:
        return explicit
    try:
        kind = cfg["kind"]
    except (KeyError, TypeError):
        kind = None
    if kind == "loci-v1":  # upstream's model/cater-stage*.json name no stage
        raise TrainError("an original-Loci (CATER) config names no stage: pass --stage cater1 (or cater2, cater3, "
                         "cater4 for upstream's stages 2-4), or use configs/cater-stage{1..4}.json")
    mode, iterations = cfg["pretraining_mode"], int(cfg["pretrainer_iterations"])
    if mode in ("mask", "depth", "rgb"):
        return mode
    if mode == "all":
        return "stage1" if iterations == 0 else "stage2"
    raise TrainError(f"pretraining_mode={mode!r} has no trainer stage; pass --stage "
                     f"({', '.join(available())})")
