"""One slot's latent as the playground edits it, and the files ``--latent`` reads (never pickles).

Accepted files, for a model whose gestalt has ``n`` values and position ``k``:

* JSON ``{"gestalt": [n numbers], "position": [k numbers]}``; either may also be a list of such rows
  (one per slot), then ``--slot`` picks one (default 0).
* safetensors with tensors ``gestalt`` (n,) or (O, n) and ``position`` (k,) or (O, k), same rule.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass
class SlotLatent:
    """A slot's gestalt vector and position vector (plain floats, the model's own layout)."""

    gestalt: list[float]
    position: list[float]

    def to_json(self) -> dict[str, list[float]]:
        return {"gestalt": list(self.gestalt), "position": list(self.position)}


def check_vector(name: str, values: Any, length: int, source: str) -> list[float]:
    """``values`` as ``length`` finite floats, else ValueError naming ``source``, the key and the fix."""
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{source}: {name!r} must be a list of {length} numbers")
    if len(values) != length:
        raise ValueError(f"{source}: {name!r} has {len(values)} values, this model needs {length} "
                         f"(a latent of another model or config?)")
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{source}: {name!r} holds a non-finite value (NaN or inf); use finite numbers")
    return out


def _pick_row(name: str, values: Any, slot: int, source: str) -> Any:
    """A vector, or row ``slot`` of a list of vectors."""
    if isinstance(values, (list, tuple)) and values and isinstance(values[0], (list, tuple)):
        if not 0 <= slot < len(values):
            raise ValueError(f"{source}: {name!r} holds {len(values)} slots; pass --slot 0..{len(values) - 1}")
        return values[slot]
    return values


def read_latent(path: str | Path, gestalt_size: int, position_size: int, slot: int = 0) -> SlotLatent:
    """Read a slot latent from a ``.json`` or ``.safetensors`` file (schema in the module docstring).

    Raises FileNotFoundError or ValueError naming the file, the problem and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--latent {path}: no such file (a .json or .safetensors slot latent)")
    source = f"--latent {path}"
    if path.suffix == ".safetensors":
        data = _read_safetensors(path, source)
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{source}: not valid JSON ({err})") from None
    else:
        raise ValueError(f"{source}: expected a .json or .safetensors file (pickles are never read)")
    if not isinstance(data, dict) or not {"gestalt", "position"} <= set(data):
        raise ValueError(f'{source}: expected keys "gestalt" and "position", e.g. '
                         '{"gestalt": [0, 1, ...], "position": [0.0, 0.0, 0.05]}')
    return SlotLatent(
        check_vector("gestalt", _pick_row("gestalt", data["gestalt"], slot, source), gestalt_size, source),
        check_vector("position", _pick_row("position", data["position"], slot, source), position_size, source))


def _read_safetensors(path: Path, source: str) -> dict[str, Sequence]:
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            for key in ("gestalt", "position"):
                if key not in fh.keys():
                    raise ValueError(f"{source}: no tensor {key!r} (it holds {sorted(fh.keys())})")
                tensor = fh.get_tensor(key)
                if tensor.dim() not in (1, 2):
                    raise ValueError(f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}; expected "
                                     "(n,) or (slots, n)")
                out[key] = tensor.double().tolist()
    except SafetensorError as err:
        raise ValueError(f"{source}: not a readable safetensors file ({err})") from None
    return out
