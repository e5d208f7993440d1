"""Convert an upstream proposal state dict into ours (reference §13, §17.6).

Accepts the state dict of upstream's ``LociProposalModule`` (Lightning, keys ``net.*``) or of a bare
``LociProposal``. Our layout is upstream's but for one name (``to_possition`` -> ``to_position``);
every other key must be one of ours, and with ``model`` the result is checked key by key and shape
by shape, so a checkpoint of another kind is refused with the keys that do not fit.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

_RENAMES = [(re.compile(r"^position_estimator\.to_possition\.(weight|bias)$"), r"position_estimator.to_position.\1")]


def convert_proposal_state_dict(state_dict: Mapping[str, torch.Tensor], *,
                                model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Upstream ``LociProposalModule`` / ``LociProposal`` state dict -> ours (see the module docstring).

    Raises ValueError naming keys that are not tensors, keys outside the proposal network and (with
    ``model``) keys missing from it or of the wrong shape.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict: expected a mapping of names to tensors, received {type(state_dict).__name__}")
    source = dict(state_dict)
    if source and all(k.startswith("net.") for k in source):
        source = {k[len("net."):]: v for k, v in source.items()}
    problems = [f"{k} is a {type(v).__name__}, not a tensor" for k, v in source.items()
                if not isinstance(v, torch.Tensor)]
    out, unplaced = {}, []
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            continue
        if not key.startswith("position_estimator."):
            unplaced.append(key)
            continue
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    if unplaced:
        problems.append(f"{len(unplaced)} keys are not part of an upstream LociProposal (is this the right checkpoint "
                        f"kind?): {', '.join(sorted(unplaced)[:8])}{' ...' if len(unplaced) > 8 else ''}")
    if model is not None and not problems:
        mine = model.state_dict()
        missing = sorted(set(mine) - set(out))
        extra = sorted(set(out) - set(mine))
        shapes = [f"{k}: checkpoint {tuple(out[k].shape)}, model {tuple(mine[k].shape)}"
                  for k in sorted(set(out) & set(mine)) if out[k].shape != mine[k].shape]
        if missing:
            problems.append(f"{len(missing)} proposal tensors are missing: {', '.join(missing[:8])}")
        if extra:
            problems.append(f"{len(extra)} tensors do not exist in the model built from the config: "
                            f"{', '.join(extra[:8])}")
        if shapes:
            problems.append("shapes differ (does --config match the checkpoint's position_proposal, input_depth?): "
                            + "; ".join(shapes[:8]))
    if problems:
        raise ValueError("cannot convert the upstream proposal checkpoint:\n  " + "\n  ".join(problems))
    return out


def import_proposal(checkpoint: str, model_cfg, out: str) -> int:
    """``import-upstream --kind proposal``: read (``weights_only=True``), convert, load strictly into
    the proposal built from ``model_cfg``, write ``out``. A .safetensors file names its stage
    ("proposal"), so ``loci-fast train --stage proposal --init-from OUT`` loads it one-to-one."""
    import sys

    from .command import load_upstream_checkpoint
    from .proposal import LociProposal

    try:
        state = load_upstream_checkpoint(checkpoint)
        model = LociProposal.from_config(model_cfg)
        converted = convert_proposal_state_dict(state, model=model)
        model.load_state_dict(converted, strict=True)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from .command import save

    save(converted, out, {"format": "loci-fast", "stage": "proposal", "source": "upstream"})
    n = sum(t.numel() for t in converted.values())
    print(f"wrote {out}: {len(converted)} tensors, {n:,} values (kind proposal)")
    return 0
