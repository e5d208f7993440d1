"""Generic handling of a recurrent stage's state: nested dicts, lists and tuples of tensors.

``flatten`` names every tensor by its path (``slots.0.position``) with a type tag per container, so
``unflatten`` rebuilds the same structure from a safetensors file: no pickles in checkpoints.
"""
from __future__ import annotations

from typing import Any

import torch

_SEP = "."


def detach(state: Any) -> Any:
    """A copy of ``state`` whose tensors are detached from the autograd graph."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, dict):
        return {k: detach(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(detach(v) for v in state)
    if hasattr(state, "detach"):
        return state.detach()
    raise TypeError(f"cannot detach recurrent state of type {type(state).__name__}; override "
                    f"Stage.detach_state")


def flatten(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """``{path: tensor}`` for a nested dict/list/tuple of tensors; {} for None.

    Containers are recorded as ``<path>#dict`` / ``#list`` / ``#tuple`` markers (empty tensors) so
    empty and nested containers survive the round trip.
    """
    if state is None:
        return {}
    if isinstance(state, torch.Tensor):
        return {prefix: state.detach().contiguous()}
    if isinstance(state, (dict, list, tuple)):
        kind = "dict" if isinstance(state, dict) else type(state).__name__
        out = {f"{prefix}#{kind}": torch.zeros(0)}
        items = state.items() if isinstance(state, dict) else enumerate(state)
        for key, value in items:
            key = str(key)
            if _SEP in key or "#" in key:
                raise ValueError(f"recurrent state key {key!r} must not contain '.' or '#'")
            out.update(flatten(value, f"{prefix}{_SEP}{key}" if prefix else key))
        return out
    raise TypeError(f"cannot store recurrent state of type {type(state).__name__}; override "
                    f"Stage.state_tensors / state_from_tensors")


def unflatten(tensors: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> Any:
    """The structure ``flatten`` produced, tensors moved to ``device``; None for {}."""
    if not tensors:
        return None
    return _build("", tensors, device)


def _build(prefix: str, tensors: dict[str, torch.Tensor], device) -> Any:
    if prefix in tensors:
        return tensors[prefix].to(device)
    kinds = [k for k in ("dict", "list", "tuple") if f"{prefix}#{k}" in tensors]
    if not kinds:
        raise ValueError(f"recurrent state has no entry {prefix!r}")
    head = f"{prefix}{_SEP}" if prefix else ""
    children = sorted({k[len(head):].split(_SEP)[0].split("#")[0] for k in tensors
                       if k.startswith(head) and k != f"{prefix}#{kinds[0]}" and k[len(head):]})
    if kinds[0] == "dict":
        return {c: _build(head + c, tensors, device) for c in children}
    values = [_build(head + str(i), tensors, device) for i in sorted(int(c) for c in children)]
    return values if kinds[0] == "list" else tuple(values)
