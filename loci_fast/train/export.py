"""``loci-fast export``: a checkpoint's weights as one fp32 safetensors file, for sharing and eval.

The metadata carries the stage, the step, the config (JSON) and its hash, so ``--init-from`` and
evaluation can check what they are given.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt


def export(checkpoint: str | Path, out: str | Path) -> tuple[Path, int]:
    """Write the weights of ``checkpoint`` to ``out``; returns (path, number of tensors)."""
    from safetensors.torch import save_file

    weights, client = ckpt.module_weights(checkpoint)
    tensors = {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in weights.items()}
    metadata = {"format": "loci-fast", "stage": str(client.get("stage", "")),
                "step": str(client.get("step", "")), "config_hash": str(client.get("config_hash", "")),
                "config": json.dumps(client.get("config", {}))}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=metadata)
    return out, len(tensors)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) of an exported or converted .safetensors file."""
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata() or {})
        for key in fh.keys():
            tensors[key] = fh.get_tensor(key)
    return tensors, metadata
