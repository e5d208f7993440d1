"""``--init-from``: weights from earlier stages, by explicit prefix mappings, never by guesswork.

Which source stage may initialise which target stage, and how its keys move, is declared in
``MAPPINGS``. Each rule maps a key prefix of the source to a prefix of the target (a source
"prefix" that is neither empty nor ends in "." names one key exactly, e.g. the pretrainer's
``std``, which must not also catch ``std_...``); every source key under a rule's prefix must land
on a target key of the same shape, and every rule must match at least one key, else the run stops
before training, naming the key. Sources are our checkpoints
(run folder or checkpoint folder), ``loci-fast export`` files, and upstream checkpoints converted
by ``loci-fast import-upstream`` (safetensors whose metadata names no stage, or stage
``upstream``: they hold a whole LociPretrainer and load one-to-one).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .errors import TrainError

Rule = tuple[str, str]  # (source prefix, target prefix); "" means every key
WHOLE: tuple[Rule, ...] = (("", ""),)


def _decoder_rules(modality: str) -> tuple[Rule, ...]:
    # Stage 1 takes the trained auxiliary autoencoder, and its decoder a second time as the
    # LociDecoder's decoder of that modality (upstream train_objects does the same copy).
    return ((f"{modality}_pretrainer.", f"{modality}_pretrainer."),
            (f"{modality}_pretrainer.decoder.", f"decoder.to_{modality}."))


# Loci-s from a stage-2 object run (upstream's --load-objects): its encoder and decoder, and the
# learnt initial slot std and depth into object discovery (§17.5).
_LOCI_OBJECTS: tuple[Rule, ...] = (("encoder.", "encoder."), ("decoder.", "decoder."),
                                   ("std", "object_discovery.std"), ("depth", "object_discovery.depth"))

# (target stage, source stage) -> rules. A stage always initialises from itself one-to-one.
MAPPINGS: dict[tuple[str, str], tuple[Rule, ...]] = {
    ("stage1", "mask"): _decoder_rules("mask"),
    ("stage1", "depth"): _decoder_rules("depth"),
    ("stage1", "rgb"): _decoder_rules("rgb"),
    ("stage2", "stage1"): WHOLE,
    ("stage1", "upstream"): WHOLE,
    ("stage2", "upstream"): WHOLE,
    ("loci", "stage2"): _LOCI_OBJECTS,
    ("loci", "upstream"): _LOCI_OBJECTS,  # an upstream pretrainer converted by import-upstream
    # upstream's --load-bg: BackgroundPretrainer holds the UncertaintyBackground as ``net``
    ("loci", "background"): (("net.", "background."),),
    # upstream's --load-proposal (segmentation mode); the stage keeps it frozen
    ("loci", "proposal"): (("position_estimator.", "proposal.position_estimator."),),
    # The original Loci's CATER curriculum: each stage from the one before (upstream's -load), and any
    # stage from an upstream net*.pt converted by import-upstream --kind loci-v1.
    ("cater2", "cater1"): WHOLE,
    ("cater3", "cater2"): WHOLE,
    ("cater4", "cater3"): WHOLE,
    **{(f"cater{k}", "upstream"): WHOLE for k in range(1, 5)},
}


def _matches(key: str, src_prefix: str) -> bool:
    if src_prefix == "" or src_prefix.endswith("."):
        return key.startswith(src_prefix)
    return key == src_prefix


def read_source(path: str | Path) -> tuple[dict[str, torch.Tensor], str, str]:
    """(state dict, source stage, description) of a checkpoint folder or a .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise TrainError(f"--init-from {path}: file does not exist")
        from .export import read_weights

        weights, meta = read_weights(path)
        stage = meta.get("stage") or "upstream"
        return weights, stage, f"{path} (stage {stage}, step {meta.get('step', '?')})"
    try:
        weights, client = ckpt.module_weights(path)
    except FileNotFoundError as err:
        raise TrainError(f"--init-from {path}: {err}") from None
    stage = str(client.get("stage", "upstream"))
    return weights, stage, f"{path} (stage {stage}, step {client.get('step', '?')})"


def plan_mapping(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                 rules: tuple[Rule, ...], what: str) -> tuple[dict[str, str], list[str]]:
    """{target key: source key} for ``rules``, and report lines; TrainError on anything unplaceable."""
    mapping: dict[str, str] = {}
    lines = []
    for src_prefix, dst_prefix in rules:
        keys = [k for k in source if _matches(k, src_prefix)]
        if not keys:
            raise TrainError(f"--init-from {what}: holds no tensors under '{src_prefix}*', which "
                             f"this stage needs; is it a checkpoint of the right stage?")
        for key in keys:
            dst = dst_prefix + key[len(src_prefix):]
            if dst not in target:
                raise TrainError(f"--init-from {what}: cannot place '{key}' (no '{dst}' in this "
                                 f"model); the checkpoint's model config differs from this one")
            if tuple(source[key].shape) != tuple(target[dst].shape):
                raise TrainError(f"--init-from {what}: '{key}' has shape {tuple(source[key].shape)}"
                                 f" but '{dst}' has {tuple(target[dst].shape)}; the model configs "
                                 f"(gestalt_size, channels, input_size) must match")
            mapping[dst] = key
        star = "*" if src_prefix == "" or src_prefix.endswith(".") else ""  # an exact key has no star
        lines.append(f"  {src_prefix}{star} -> {dst_prefix}{star}: {len(keys)} tensors")
    return mapping, lines


def init_from(model: torch.nn.Module, stage, paths: list[str]) -> list[str]:
    """Load ``paths`` into ``model`` for ``stage``; returns the report (what came from where)."""
    target = model.state_dict()
    loaded: dict[str, Any] = {}
    report = []
    for path in paths:
        source, source_stage, what = read_source(path)
        if source_stage == stage.name:
            rules = WHOLE
        elif (stage.name, source_stage) in MAPPINGS:
            rules = MAPPINGS[(stage.name, source_stage)]
        else:
            allowed = sorted({s for (t, s) in MAPPINGS if t == stage.name} | {stage.name})
            raise TrainError(f"--init-from {what}: a {source_stage!r} checkpoint cannot initialise "
                             f"stage {stage.name!r} (accepted: {', '.join(allowed)})")
        mapping, lines = plan_mapping(source, target, rules, what)
        clash = sorted(set(mapping) & set(loaded))
        if clash:
            raise TrainError(f"--init-from {what}: '{clash[0]}' is also set by {loaded[clash[0]]}; "
                             f"give each part once")
        with torch.no_grad():
            for dst, src in mapping.items():
                target[dst].copy_(source[src].to(target[dst].dtype))
        loaded.update({dst: path for dst in mapping})
        report.append(f"init-from {what}:")
        report.extend(lines)
    model.load_state_dict(target)
    fresh = [k for k in target if k not in loaded]
    groups = sorted({k.split(".")[0] for k in fresh})
    report.append(f"init-from: {len(loaded)} of {len(target)} tensors loaded; "
                  f"{len(fresh)} keep their initial values"
                  + (f" (under {', '.join(g + '.' for g in groups)})" if groups else ""))
    return report
