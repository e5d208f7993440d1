"""The interface every training stage implements, and the registry the trainer picks from.

A stage says how to build its model from the config, which parameters it trains, where its
batches come from, and how one batch becomes a loss. The engine knows nothing else about it.
Stages register by name (``register``); ``--stage package.module:NAME`` loads one from anywhere,
which is how the tests plug in a toy stage and how later stages can live outside this package.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .errors import TrainError


@dataclass
class StepOutput:
    """One micro-batch: the loss to back-propagate, scalars to log, image rows to show."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)


class BatchStream(Protocol):
    """An endless iterable of batches whose position can be saved and restored."""

    def __iter__(self): ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Stage:
    """Base class: subclasses override the four methods below and set ``name``/``metric_keys``."""

    name: str = "stage"
    metric_keys: tuple[str, ...] = ()

    def build_model(self, cfg) -> torch.nn.Module:
        raise NotImplementedError

    def trainable(self, param_name: str) -> bool:
        """Whether the parameter called ``param_name`` trains in this stage (default: all)."""
        return True

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """Freeze every parameter of ``model`` this stage does not train; return the others."""
        for name, param in model.named_parameters():
            if not self.trainable(name):
                param.requires_grad_(False)
        return [p for p in model.parameters() if p.requires_grad]

    def batches(self, cfg, shards: list[str], *, rank: int, world_size: int, seed: int,
                num_workers: int) -> BatchStream:
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        raise NotImplementedError


_REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Make ``stage`` selectable by its name."""
    _REGISTRY[stage.name] = stage
    return stage


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    importlib.import_module("loci_fast.train.stages")


def get_stage(name: str) -> Stage:
    """The stage called ``name``, or ``package.module:ATTRIBUTE`` for a stage defined elsewhere."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            stage = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise TrainError(f"--stage {name}: cannot load it ({err})") from None
        if not isinstance(stage, Stage):
            raise TrainError(f"--stage {name} is a {type(stage).__name__}, not a Stage")
        return stage
    _load_builtin()
    if name not in _REGISTRY:
        raise TrainError(f"unknown stage {name!r}; known stages: {', '.join(available())}")
    return _REGISTRY[name]


def stage_from_config(cfg) -> str:
    """Upstream's rule: the stage follows from pretraining_mode and pretrainer_iterations."""
    mode, iterations = cfg["pretraining_mode"], int(cfg["pretrainer_iterations"])
    if mode in ("mask", "depth", "rgb"):
        return mode
    if mode == "all":
        return "stage1" if iterations == 0 else "stage2"
    raise TrainError(f"pretraining_mode={mode!r} has no trainer stage; pass --stage "
                     f"({', '.join(available())})")

