"""One rank's own part of a checkpoint: RNG states, data position, recurrent state.

Stored as one safetensors file per rank: tensors (torch/CUDA generator states, the recurrent state)
as tensors, everything else (python and numpy generator states, the loader position) as JSON in the
file's metadata. Nothing is pickled, so a resume never runs code from a file.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STATE = "state/"


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON-able values) of every generator the training loop touches."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    values = {"python": [version, list(internal), gauss],
              "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, values


def set_rng_state(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    version, internal, gauss = values["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = values["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def write(path: Path, *, rank: int, data: dict[str, Any], state: dict[str, torch.Tensor],
          rng: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> None:
    """Write rank ``rank``'s file: the RNG states ``rng`` (from ``rng_state``), the loader's
    ``data`` position, and the recurrent ``state`` tensors (``Stage.state_tensors``)."""
    from safetensors.torch import save_file

    tensors, values = dict(rng[0]), rng[1]
    tensors.update({_STATE + k: v.detach().cpu().contiguous() for k, v in state.items()})
    meta = {"rank": rank, "rng": values, "data": data}
    save_file(tensors, str(path), metadata={"json": json.dumps(meta)})


def read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(JSON part, RNG tensors, recurrent state tensors) of a rank file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {})["json"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    rng = {k: v for k, v in tensors.items() if k.startswith("rng/")}
    state = {k[len(_STATE):]: v for k, v in tensors.items() if k.startswith(_STATE)}
    return meta, rng, state
