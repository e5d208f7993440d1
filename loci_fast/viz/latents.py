"""Per-slot latent export: one ``latents.safetensors`` and one ``latents.json`` per video (never pickles).

Schema (``SCHEMA`` = "loci-fast/latents/1"), tensors indexed by rollout step first, slot second:

* ``time`` (steps,) int64: τ of the step (negative during teacher forcing / warm-up);
* ``position`` (steps, O, P) float32: Loci-s (x, y, z, std) with P = 4; the original Loci
  (row, col, size) with P = 3;
* ``gestalt`` (steps, O, G) float32: the gestalt code as the model outputs it;
* ``gestalt_bits`` (steps, O, G) uint8: round(clip(gestalt, 0, 1)), upstream's saved 0/1 code;
* ``priority`` (steps, O) float32;
* original Loci with a snitch tracker: ``snitch`` (steps, 2) float32 screen (row, col).

The values are those of the output each step shows (Loci-s: the prediction of the next frame for
τ ≥ 0, the reconstruction during teacher forcing; original Loci: the predicted state for the next
frame). The safetensors metadata and the JSON file carry ``schema``, ``kind``, ``video`` and
``position_fields``; the JSON file repeats every tensor as nested lists for reading without torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

SCHEMA = "loci-fast/latents/1"
POSITION_FIELDS = {"loci": ["x", "y", "z", "std"], "loci-v1": ["row", "col", "size"]}


def latent_tensors(records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the rollout records' ``position``, ``gestalt``, ``priority`` (and ``snitch``) over steps."""
    out = {"time": torch.tensor([int(r["time"]) for r in records], dtype=torch.int64)}
    for key in ("position", "gestalt", "priority", "snitch"):
        if records and records[0].get(key) is not None:
            out[key] = torch.cat([r[key] for r in records]).float().contiguous()
    out["gestalt_bits"] = torch.round(out["gestalt"].clamp(0, 1)).to(torch.uint8)
    return out


def write_latents(folder: str | Path, tensors: dict[str, torch.Tensor], *, kind: str, video: str) -> tuple[Path, Path]:
    """Write ``latents.safetensors`` and ``latents.json`` into ``folder`` (each through a temporary file)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"schema": SCHEMA, "kind": kind, "video": video, "position_fields": POSITION_FIELDS[kind]}
    st, js = folder / "latents.safetensors", folder / "latents.json"
    tmp = st.with_name(st.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()})
    os.replace(tmp, st)
    doc = {**meta, "shapes": {k: list(v.shape) for k, v in tensors.items()},
           "tensors": {k: v.tolist() for k, v in tensors.items()}}
    tmp = js.with_name(js.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, js)
    return st, js


def read_latents(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A ``latents.safetensors`` file -> (tensors on the CPU, metadata); refuses other schemas."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {meta.get('schema')!r}, expected {SCHEMA!r} (write it with loci-fast viz)")
    meta["position_fields"] = json.loads(meta.get("position_fields", "[]"))
    return tensors, meta
