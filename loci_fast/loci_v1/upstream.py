"""Convert the original Loci's upstream checkpoints (``net*.pt``, reference loci.md §3.2 item 6).

An upstream file is a dict ``{"model": state_dict, "optimizer_init": ..., "optimizer_encoder": ...,
"optimizer_decoder": ..., "optimizer_predictor": ..., "optimizer_background": ...}``, read here with
``torch.load(weights_only=True)`` (no pickled code runs). Keys are upstream's but for the two renames
upstream applies when loading: ``.module.`` -> ``.`` (DataParallel wrappers) and ``predictor.vae`` ->
``predictor.bottleneck`` (checkpoints from before commit 476dade). A bare state dict is accepted too.
Conversion is strict: with ``model`` every key and shape must match.
"""
from __future__ import annotations

import sys
from typing import Any, Mapping

import torch
from torch import nn

OPTIMIZERS = ("optimizer_init", "optimizer_encoder", "optimizer_decoder", "optimizer_predictor",
              "optimizer_background")


def rename_key(key: str) -> str:
    """Upstream's load-time renames: ``.module.`` -> ``.``, a leading ``module.`` dropped, ``predictor.vae`` ->
    ``predictor.bottleneck``."""
    key = key.replace(".module.", ".")
    if key.startswith("module."):
        key = key[len("module."):]
    return key.replace("predictor.vae", "predictor.bottleneck")


def read_upstream_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(model state dict, {optimizer name: state})`` of an upstream ``net*.pt`` (or a bare state dict, then
    no optimizers). Raises ValueError naming the problem: unreadable, pickled objects, wrong layout."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint file") from None
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for refused or damaged files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True) ({first}). loci-fast never "
                         "unpickles arbitrary objects; if the file is damaged copy it again, if it holds objects "
                         "other than tensors and dicts re-save its 'model' state dict in an environment you trust") \
            from None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return dict(obj["model"]), {k: obj[k] for k in OPTIMIZERS if k in obj}
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), {}
    kind = type(obj).__name__ if not isinstance(obj, Mapping) else f"dict with keys {sorted(map(str, obj))[:6]}"
    raise ValueError(f"{path}: expected an upstream Loci checkpoint (a dict with 'model' and the optimizer states) "
                     f"or a state dict, found a {kind}")


def convert_state_dict(state_dict: Mapping[str, Any], *, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Upstream ``Loci`` state dict -> ours (the renames of the module docstring).

    With ``model`` (a :class:`~loci_fast.loci_v1.LociV1`) every key must exist in it with the same shape and
    none may be missing; raises ValueError listing the keys that do not fit.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict: expected a mapping of names to tensors, received {type(state_dict).__name__}")
    problems = [f"{k} is a {type(v).__name__}, not a tensor" for k, v in state_dict.items()
                if not isinstance(v, torch.Tensor)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            new = rename_key(key)
            if new in out:
                problems.append(f"{key} and another key both map to {new}")
            out[new] = value
    if model is not None and not problems:
        mine = model.state_dict()
        missing, extra = sorted(set(mine) - set(out)), sorted(set(out) - set(mine))
        shapes = [f"{k}: checkpoint {tuple(out[k].shape)}, model {tuple(mine[k].shape)}"
                  for k in sorted(set(out) & set(mine)) if out[k].shape != mine[k].shape]
        if missing:
            problems.append(f"{len(missing)} tensors of the model are missing (is this an original-Loci checkpoint?): "
                            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if extra:
            problems.append(f"{len(extra)} tensors do not exist in the model built from the config: "
                            f"{', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
        if shapes:
            problems.append("shapes differ (does --config match the checkpoint's sizes?): " + "; ".join(shapes[:8]))
    if problems:
        raise ValueError("cannot convert the upstream Loci checkpoint:\n  " + "\n  ".join(problems))
    return out


#: upstream optimizer -> the model's submodule whose parameters it holds, in ``parameters()`` order
_OPTIMIZER_MODULES = {"optimizer_init": "initial_states", "optimizer_encoder": "encoder",
                      "optimizer_decoder": "decoder", "optimizer_predictor": "predictor",
                      "optimizer_background": "background"}


def convert_optimizers(optimizers: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Upstream's five optimizer state dicts -> the flat form of :func:`~loci_fast.loci_v1.optimizers.flat_state`.

    Upstream keys each state by the index of the parameter in its module's ``parameters()`` order; ours are
    the same modules in the same order, and every state's shape is checked against its parameter. The
    update counter (``num_updates``) is not stored upstream, so it is not part of the result. Raises
    ValueError naming the optimizer and index that do not fit.
    """
    out: dict[str, torch.Tensor] = {}
    for key, state in optimizers.items():
        module = _OPTIMIZER_MODULES[key]
        named = [(f"{module}.{n}", p) for n, p in getattr(model, module).named_parameters()]
        for index, entry in dict(state.get("state", {})).items():
            index = int(index)
            if index >= len(named):
                raise ValueError(f"{key}: state for parameter {index}, but {module} has {len(named)} parameters")
            name, p = named[index]
            if not {"step", "exp_avg", "exp_avg_sq"} <= set(entry):
                raise ValueError(f"{key}: parameter {index} ({name}) has state {sorted(entry)}, expected step, "
                                 "exp_avg and exp_avg_sq (Adam/RAdam)")
            for field in ("exp_avg", "exp_avg_sq"):
                if tuple(entry[field].shape) != tuple(p.shape):
                    raise ValueError(f"{key}: parameter {index} ({name}) {field} has shape "
                                     f"{tuple(entry[field].shape)}, the parameter {tuple(p.shape)}")
                out[f"{name}/{field}"] = entry[field].detach().float().contiguous().clone()
            out[f"{name}/step"] = torch.tensor(int(float(entry["step"])), dtype=torch.int64)
    return out


def optimizer_path(weights: str) -> str:
    """Where the converted optimizer states of a ``.safetensors`` weights file live: beside it."""
    return weights[: -len(".safetensors")] + ".optimizer.safetensors"


def import_loci_v1(checkpoint: str, model_cfg: Any, out: str, *, teacher_forcing: int = 10) -> int:
    """``import-upstream --kind loci-v1``: read, convert, load strictly into the model built from ``model_cfg``,
    write ``out`` (.safetensors with metadata, or a torch file). Returns the exit status."""
    from .loci import LociV1

    try:
        state, optimizers = read_upstream_checkpoint(checkpoint)
        model = LociV1.from_config(model_cfg, teacher_forcing=teacher_forcing)
        converted = convert_state_dict(state, model=model)
        model.load_state_dict(converted, strict=True)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    tensors = {k: v.detach().contiguous().clone() for k, v in converted.items()}
    if out.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(tensors, out, metadata={"format": "loci-fast", "model": "loci-v1", "source": "upstream"})
    else:
        torch.save(tensors, out)
    n = sum(t.numel() for t in tensors.values())
    note = ""
    if optimizers and out.endswith(".safetensors"):
        try:
            flat = convert_optimizers(optimizers, model)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        from safetensors.torch import save_file

        save_file(flat, optimizer_path(out), metadata={"format": "loci-fast", "model": "loci-v1",
                                                       "source": "upstream", "optimizers": ",".join(optimizers)})
        note = (f"; {len(optimizers)} optimizer states ({len(flat) // 3} parameters) in {optimizer_path(out)} "
                "(loaded by --init-from with --set load_optimizers=true)")
    elif optimizers:
        note = f"; optimizer states not converted (write a .safetensors file to keep them): {', '.join(optimizers)}"
    print(f"wrote {out}: {len(tensors)} tensors, {n:,} values (kind loci-v1){note}")
    return 0
