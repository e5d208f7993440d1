"""The weights ``loci-fast eval --checkpoint`` accepts, read without unpickling arbitrary objects."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class LoadedWeights:
    """A state dict, the config stored with it (None for converted upstream weights) and its stage."""

    state: dict[str, torch.Tensor]
    config: dict[str, Any] | None
    stage: str | None
    source: str


def load_weights_and_config(path: str | Path, config: Any = None,
                            overrides: dict[str, Any] | None = None) -> tuple[LoadedWeights, Any]:
    """:func:`load_weights` and the config to build their model with: ``config`` (a path, a dict or a
    loaded config) when given, else the one stored with the weights; ``overrides`` as ``load_config``'s.

    Raises ValueError naming the fix when there is no config or it does not validate.
    """
    from loci_fast.config import ConfigError, load_config

    weights = load_weights(path)
    source = config if config is not None else weights.config
    if source is None:
        raise ValueError(f"{weights.source} carries no config: pass --config (the config it was trained with)")
    if not isinstance(source, (str, Path, dict)) and not overrides:  # already a loaded config
        return weights, source
    try:
        return weights, load_config(source, overrides) if overrides else load_config(source)
    except ConfigError as err:
        raise ValueError(f"config: {err}") from None


def load_weights(path: str | Path) -> LoadedWeights:
    """Weights of our run folder or checkpoint folder, an ``export`` .safetensors file, or the
    output of ``import-upstream`` (.safetensors, or a torch state dict read with weights_only=True).

    Raises FileNotFoundError / ValueError naming the path and what it should be.
    """
    path = Path(path)
    if path.is_dir():
        from loci_fast.train import checkpoint as ckpt

        state, client = ckpt.module_weights(path)
        return LoadedWeights(state, client.get("config"), client.get("stage"), f"checkpoint {path}")
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path}: no such run folder, checkpoint or weights file")
    if path.suffix == ".safetensors":
        from loci_fast.train.export import read_weights

        state, meta = read_weights(path)
        config = json.loads(meta["config"]) if meta.get("config") else None
        return LoadedWeights(state, config or None, meta.get("stage") or None, f"weights file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same remedy
        raise ValueError(f"--checkpoint {path}: not a run folder, .safetensors file or tensor-only torch file "
                         f"({type(err).__name__}); convert upstream checkpoints with loci-fast import-upstream") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--checkpoint {path}: expected a state dict (names to tensors)")
    return LoadedWeights(state, None, None, f"weights file {path}")
