"""Convert upstream Loci-Segmented state dicts into ours (reference §15.1, §24.11b).

``convert_state_dict(sd, kind="pretrainer")`` takes the state dict of an upstream
``LociPretrainer`` (with or without the Lightning module's ``net.`` prefix) and returns one that
``loci_fast.model.LociPretrainer.load_state_dict(..., strict=True)`` accepts. Every upstream key
is placed by exactly one rule below or reported; unused upstream tensors (the ``legacy`` switches,
which must be 0, and ``gestalt_mean``/``gestalt_std``) are dropped.

``kind="background"`` takes upstream's ``LociBackgroundModule`` state dict (``net.*`` and the
depth-context GestaltLoss counter) and returns one for ``loci_fast.model.background.BackgroundPretrainer``
(key map in ``upstream_background_keys.py``).

``kind="loci"`` takes upstream's ``LociModule`` state dict (or its ``Loci`` net's) and returns one for
:class:`loci_fast.model.loci_model.LociModel`: ``net.`` stripped, ``encoder.``/``decoder.`` by the
object-pathway rules, ``predictor.``/``update_gate.``/``object_discovery.`` key for key, ``background.``
through the background key map, ``proposal.`` (segmentation configs) through the proposal's; the RGB
loss's constant colour matrix is dropped.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import torch
from torch import nn

from .upstream_background_keys import BACKGROUND_KEY_MAP, COUNTER_KEY
from .upstream_encoder_keys import encoder_key_map

KINDS = ("pretrainer", "background", "loci")
#: LociModule buffers outside the network (the YCbCr loss's constant conversion matrix)
_LOCI_MODULE_EXTRAS = ("rgbloss.to_YCbCr.matrix", "l1ssim.to_YCbCr.matrix")
_LOCI_SAME = ("predictor.", "update_gate.", "object_discovery.")
_DROP = "drop"
_LEGACY = "legacy"


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _as_conv1x1(t: torch.Tensor) -> torch.Tensor:
    # upstream Conv1x1 is a Linear (out, in); ours is a 1x1 Conv2d (out, in, 1, 1)
    return t.reshape(*t.shape, 1, 1) if t.dim() == 2 else t


def _as_count(t: torch.Tensor) -> torch.Tensor:
    # upstream's call counters are float tensors of shape () or (1,); ours are int64 scalars
    return t.reshape(()).round().to(torch.int64) if t.numel() == 1 else t


_WB12 = r"(?:weight|bias)[12]"  # parameters of the patch-codec MLPs
_DEC_DR = r"decoder\.to_(?:depth|rgb)|(?:depth|rgb)_pretrainer\.decoder"  # depth and RGB decoders
_DEC_M = r"decoder\.to_mask|mask_pretrainer\.decoder"  # mask decoders

# (pattern on the upstream key, our key as a re.Match.expand template or a marker, tensor transform)
_RULES: list[tuple[re.Pattern, str, Callable[[torch.Tensor], torch.Tensor]]] = [(re.compile(p), r, f) for p, r, f in [
    (r"^gestalt_(?:mean|std)$", _DROP, _same),  # unused parameters of upstream's pretrainer
    (r"^(?:.+\.)?legacy$", _LEGACY, _same),  # always-off old std parameterisation (checked to be 0)
    # mask decoders: conv stack and the x16 upscaler
    (rf"^({_DEC_M})\.(decoder\.\d+\.(?:weight|bias)|mask_reconstruction\.{_WB12})$", r"\1.\2", _same),
    # depth and RGB decoders: upstream's Linear "Conv1x1" is our 1x1 convolution
    (rf"^({_DEC_DR})\.layers\.0\.linear\.(weight|bias)$", r"\1.layers.0.\2", _as_conv1x1),
    (rf"^({_DEC_DR})\.(layers\.[1-9]\d*\..+)$", r"\1.\2", _same),
    (rf"^({_DEC_DR})\.((?:mask|depth)_encoder\.0\.{_WB12})$", r"\1.\2", _same),
    (rf"^({_DEC_DR})\.(depth_upscale\.{_WB12}|rgb_upscale\.0\.{_WB12})$", r"\1.\2", _same),
    # per-modality pretraining encoders: embedding, ConvNeXt, pooling are one GestaltEncoder here
    (rf"^(mask|depth|rgb)_pretrainer\.\1_embedding\.(0\.{_WB12})$", r"\1_pretrainer.encoder.embedding.\2", _same),
    (r"^(mask|depth|rgb)_pretrainer\.encoder\.(\d+\..+)$", r"\1_pretrainer.encoder.encoder.\2", _same),
    (r"^(mask|depth|rgb)_pretrainer\.pool\.0\.(residual\.[02]\.(?:weight|bias))$",
     r"\1_pretrainer.encoder.pool.\2", _same),
    # stand-alone patch autoencoders of mode "embedding"
    (rf"^((?:mask|depth|rgb)_patch_embedding\.0\.{_WB12})$", r"\1", _same),
    (rf"^((?:mask|depth)_patch_reconstruction\.{_WB12}|rgb_patch_reconstruction\.0\.{_WB12})$", r"\1", _same),
    # learnt initial std and depth; schedule counters
    (r"^(std|depth)$", r"\1", _same),
    (r"^(gestalt_loss|init_weight0|init_weight1)\.num_updates$", r"\1.num_updates", _as_count),
    (r"^decying_mse\.num_updates$", "decaying_mse.num_updates", _as_count),
    (r"^init_counter$", "init_counter.num_updates", _as_count),
]]


def _place(key: str) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None:
    """(our key, or a drop marker; tensor transform) for an upstream key, None if no rule places it."""
    if key.startswith("encoder."):
        rel = key[len("encoder."):]
        for pattern, repl in encoder_key_map():  # the encoder's own map, upstream_encoder_keys.py
            if re.match(pattern, rel):
                return (_LEGACY, _same) if repl is None else ("encoder." + re.sub(pattern, repl, rel), _same)
        return None
    for pattern, target, transform in _RULES:
        match = pattern.match(key)
        if match is not None:
            return (target if target in (_DROP, _LEGACY) else match.expand(target)), transform
    return None


def strip_lightning_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the Lightning module's ``net.`` prefix when every key has it; otherwise return a copy."""
    keys = list(state_dict)
    if keys and all(k.startswith("net.") for k in keys):
        return {k[len("net."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _format(keys: list[str]) -> str:
    return "\n  " + "\n  ".join(keys)


def check_against(converted: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Raise ValueError naming every missing, unexpected or wrongly shaped key for ``model``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(converted[k].shape)}, model {tuple(v.shape)}"
              for k, v in expected.items() if k in converted and tuple(converted[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys the model needs are missing from the checkpoint:{_format(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint keys have no place in the model:{_format(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} tensors have the wrong shape (was the checkpoint trained with another "
                        f"config? pass the config it was trained with):{_format(shapes)}")
    if problems:
        raise ValueError("converted upstream state dict does not fit the model:\n" + "\n".join(problems))


def _convert_background(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Upstream ``LociBackgroundModule`` state dict (or a bare ``UncertantyBackground`` one, whose
    GestaltLoss counter then starts at 0) -> ours, and the keys no rule places."""
    source = dict(state_dict)
    if not any(k.startswith("net.") or k == COUNTER_KEY for k in source):
        source = {"net." + k: v for k, v in source.items()}
        source[COUNTER_KEY] = torch.zeros(())
    out, unplaced = {}, []
    for key, value in source.items():
        if key == COUNTER_KEY:
            out[key] = _as_count(value)
            continue
        for pattern, repl in BACKGROUND_KEY_MAP:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unplaced.append(key)
    return out, unplaced


def _convert_loci(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Upstream ``LociModule`` (``net.*``) or ``Loci`` state dict -> ours, the unplaced keys, the legacy
    switches that are on."""
    from .upstream_proposal import convert_proposal_state_dict

    source = {k: v for k, v in state_dict.items() if k not in _LOCI_MODULE_EXTRAS}
    if any(k.startswith("net.") for k in source):
        source = {(k[len("net."):] if k.startswith("net.") else k): v for k, v in source.items()}
    out: dict[str, torch.Tensor] = {}
    unplaced, legacy_on, background, proposal = [], [], {}, {}
    for key, value in source.items():
        if key.startswith(("encoder.", "decoder.")):
            placed = _place(key)
            if placed is not None and placed[0] == _LEGACY:
                if value.numel() != 1 or float(value) != 0:
                    legacy_on.append(f"{key} = {value.tolist()}")
            elif placed is None or not placed[0].startswith(("encoder.", "decoder.")):
                unplaced.append(key)
            else:
                out[placed[0]] = placed[1](value)
        elif key.startswith(_LOCI_SAME):
            out[key] = value
        elif key.startswith("background."):
            background["net." + key[len("background."):]] = value
        elif key.startswith("proposal."):
            proposal[key[len("proposal."):]] = value
        else:
            unplaced.append(key)
    if background:
        converted, missed = _convert_background({**background, COUNTER_KEY: torch.zeros(())})
        out.update({"background." + k[len("net."):]: v for k, v in converted.items() if k != COUNTER_KEY})
        unplaced += ["background." + k[len("net."):] for k in missed]
    if proposal:
        out.update({"proposal." + k: v for k, v in convert_proposal_state_dict(proposal).items()})
    return out, unplaced, legacy_on


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], kind: str = "pretrainer", *,
                       model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Upstream ``LociPretrainer`` (``kind="pretrainer"``), ``LociBackgroundModule`` (``kind="background"``)
    or ``LociModule`` (``kind="loci"``) state dict -> ours (see the module docstring).

    With ``model`` the result is also checked key by key and shape by shape against
    ``model.state_dict()``. Raises ValueError naming every key that no rule places, every
    non-zero ``legacy`` switch, and (with ``model``) every mismatch.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: unknown checkpoint kind {kind!r}; supported: {', '.join(KINDS)}")
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict: expected a mapping of names to tensors, received {type(state_dict).__name__}")
    not_tensors = [f"{k} ({type(v).__name__})" for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if kind == "background":
        out, unplaced = _convert_background({k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)})
        return _finish(out, unplaced, [], not_tensors, "upstream LociBackgroundModule", model)
    if kind == "loci":
        out, unplaced, legacy_on = _convert_loci({k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)})
        return _finish(out, unplaced, legacy_on, not_tensors, "upstream LociModule", model)
    source = strip_lightning_prefix(state_dict)
    out: dict[str, torch.Tensor] = {}
    unplaced, legacy_on = [], []
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            continue
        placed = _place(key)
        if placed is None:
            unplaced.append(key)
        elif placed[0] == _LEGACY:
            if value.numel() != 1 or float(value) != 0:
                legacy_on.append(f"{key} = {value.tolist()}")
        elif placed[0] != _DROP:
            out[placed[0]] = placed[1](value)
    return _finish(out, unplaced, legacy_on, not_tensors, "upstream LociPretrainer", model)


def _finish(out: dict[str, torch.Tensor], unplaced: list[str], legacy_on: list[str], not_tensors: list[str],
            what: str, model: nn.Module | None) -> dict[str, torch.Tensor]:
    problems = []
    if unplaced:
        problems.append(f"{len(unplaced)} keys are not part of an {what} (is this the right "
                        f"checkpoint kind?):{_format(unplaced)}")
    if legacy_on:
        problems.append("the legacy sigmoid-std switch is on, which loci-fast does not implement (only "
                        f"checkpoints with every 'legacy' buffer 0 convert):{_format(legacy_on)}")
    if not_tensors:
        problems.append(f"entries that are not tensors:{_format(not_tensors)}")
    if problems:
        raise ValueError("cannot convert the upstream state dict:\n" + "\n".join(problems))
    if model is not None:
        check_against(out, model)
    return out
