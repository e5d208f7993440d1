"""The interface every training stage implements.

A stage says how to build its model from the config, which parameters it trains, where its
batches come from, and how one batch (and, for recurrent stages, the state carried over from the
previous batch) becomes a loss. The engine knows nothing else about it.

Recurrent state (slots, traces, hidden vectors, "last" outputs) never hides in module buffers: the
stage creates it with ``initial_state`` at a sequence start, ``forward`` takes it and returns the
next one in ``StepOutput.state``, and the engine detaches it between truncated-BPTT chunks and
stores it in every checkpoint (``state_tensors`` / ``state_from_tensors``), so a run resumed in the
middle of a sequence continues exactly. Stateless stages leave all of this at its defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .. import recurrent


@dataclass
class StepOutput:
    """One micro-batch: the loss to back-propagate, scalars to log, image rows to show, and (for
    recurrent stages) the state the next micro-batch of the same sequence continues from."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    state: Any = None


class BatchStream(Protocol):
    """An iterable of batches (one epoch per ``iter()``) whose position can be saved and restored."""

    def __iter__(self): ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Stage:
    """Base class: subclasses override ``build_model``, ``batches`` and ``forward`` and set
    ``name``/``metric_keys``; recurrent stages also override ``initial_state`` and
    ``starts_sequence``."""

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

    def build_optimizer(self, model: torch.nn.Module, params: list[torch.nn.Parameter], cfg,
                        ds_config: dict[str, Any] | None = None,
                        init_from: list[str] | None = None) -> torch.optim.Optimizer:
        """The client optimiser DeepSpeed steps when its config names none (default: Ranger, upstream
        Loci-s's optimiser for every stage). ``init_from``: the run's --init-from paths (empty on a
        resume), for stages that can start from stored optimiser states."""
        from ..ranger import Ranger

        return Ranger(params, lr=float(cfg["learning_rate"]), weight_decay=float(cfg["weight_decay"]))

    def batches(self, cfg, shards: list[str], *, rank: int, world_size: int, seed: int,
                num_workers: int) -> BatchStream:
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, batch: dict[str, Any], state: Any = None) -> StepOutput:
        """Loss and logs of one micro-batch; ``state`` is what the previous micro-batch of the same
        sequence returned (or ``initial_state``'s at a sequence start; None for stateless stages)."""
        raise NotImplementedError

    # Recurrent state. The defaults describe a stateless stage.
    def starts_sequence(self, batch: dict[str, Any]) -> bool:
        """Whether ``batch`` begins a new sequence (state must then be created afresh)."""
        return True

    def initial_state(self, model: torch.nn.Module, batch: dict[str, Any]) -> Any:
        """The state a sequence starts from (None: the stage keeps no state)."""
        return None

    def detach_state(self, state: Any) -> Any:
        """``state`` cut from the autograd graph (a truncated-BPTT boundary)."""
        return recurrent.detach(state)

    def state_tensors(self, state: Any) -> dict[str, torch.Tensor]:
        """``state`` as flat named tensors, for checkpoints (safetensors)."""
        return recurrent.flatten(state)

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device) -> Any:
        """The inverse of ``state_tensors``, on ``device``."""
        return recurrent.unflatten(tensors, device)
