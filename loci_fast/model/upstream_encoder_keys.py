"""Upstream ``LociEncoder`` state-dict keys -> ours.

Our encoder mirrors upstream's module names and nesting, so every parameter keeps its key
(e.g. ``stem.layers.1.linear_layers.1.weight1``, ``hyper_weights.3.weight``,
``mask_gestalt_pooling.0.residual.0.weight``). The only difference: upstream's persistent
``legacy`` buffers (``preprocess.legacy``, ``{mask,depth,rgb}_gestalt_pooling.0.legacy``,
``depth_scale_pooling.0.legacy``) switch on a dead std parameterisation (§24.11b); we drop them
after checking they are 0.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

#: (regex on a key relative to the encoder, replacement; None = drop the key after checking it is 0)
_RULES: list[tuple[str, str | None]] = [
    (r"^(?:.*\.)?legacy$", None),
    (r"^(.*)$", r"\1"),
]


def encoder_key_map() -> list[tuple[str, str | None]]:
    """Rules turning an upstream encoder key (without the ``encoder.`` prefix) into ours.

    The first rule whose regex matches decides: a replacement string for ``re.sub``, or None for a
    key that is dropped (only ever a ``legacy`` buffer, whose value must be 0).
    """
    return list(_RULES)


def convert_encoder_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Apply :func:`encoder_key_map` to the keys of ``state_dict`` starting with ``prefix``.

    Returns our keys, without the prefix. Raises ValueError when a dropped ``legacy`` buffer is not 0
    (such a checkpoint used the old sigmoid std parameterisation, which we do not implement).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix):]
        for pattern, repl in _RULES:
            if re.match(pattern, rel):
                if repl is None:
                    if torch.as_tensor(value).count_nonzero().item():
                        raise ValueError(f"{key}: upstream 'legacy' buffer is {value.tolist()}, expected 0; "
                                         "the legacy std parameterisation is not supported")
                else:
                    out[re.sub(pattern, repl, rel)] = value
                break
    return out
