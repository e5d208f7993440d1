"""Named switches for upstream quirks that change numbers (reference §24).

Each flag reproduces upstream behaviour by default, so converted upstream checkpoints give
upstream's outputs; turning a flag off selects the corrected behaviour. A config selects them in
``model.compat``, e.g. ``"compat": {"prioritize_noise": false}``.

Only quirks that live in the modules of ``loci_fast.model`` are listed; quirks that upstream had
to reproduce exactly (the constant-1 competitor logit, the unsquashed std, ...) are simply the
specification and have no flag.
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping

#: name -> (default, what the upstream behaviour is and what turning it off does)
COMPAT_FLAGS: dict[str, tuple[bool, str]] = {
    "prioritize_noise": (
        True,
        "§24.2a: the decoder's priority occlusion adds N(0, 2.5^2) noise to the scaled priorities "
        "(250*pi + 2.5*eps) in training and in evaluation. False: no noise (deterministic "
        "occlusion order).",
    ),
    "hyper_slices_from_start": (
        True,
        "Upstream HyperSequential never advances its slice offset (nn/hypernets.py at b4abc3a; reference "
        "§6.3 describes per-layer slices): every hyper layer of a sub-network reads the *leading* "
        "num_weights() values of base_weights and of the per-slot dynamic vector. False: layer i reads "
        "its own slice. (Read by LociEncoder.)",
    ),
    "uncertainty_noise_in_eval": (
        True,
        "§24.2c: the background's uncertainty estimator draws its noise eps (u + u(1-u)*eps) on every "
        "call, in evaluation too, advancing the RNG even where only the clean map is used. False: in "
        "evaluation the noised map is the clean one and nothing is drawn. (Read by UncertaintyBackground.)",
    ),
    "predictor_repeat_attention_stack": (
        True,
        "§24.6c: each of the predictor's iterations runs the whole stack of its attention layers before "
        "its GateL0RD cell (3 layers: 9 attention calls per step). False: iteration i runs attention "
        "layer i only (3 calls). (Read by LatentPredictor.)",
    ),
    "rgb_loss_batch_scaled": (
        True,
        "§24.7: the Loci-s RGB loss's all-ones mask is shaped (B, 1, 1, H, W) and broadcasts against the "
        "(B, 1, H, W) maps, so every RGB term (reconstruction and prediction, loss, L1 and SSIM parts) is "
        "B times the image mean; the same for B = 1. False: the plain image mean for every batch size. "
        "(Read by LociModel.)",
    ),
}


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` for dicts and config nodes alike, ``default`` when absent."""
    try:
        return cfg[key]
    except (KeyError, IndexError, TypeError, AttributeError):
        return default


def resolve_compat(model_cfg: Any = None) -> dict[str, bool]:
    """All compat flags with their values: the defaults, overridden by ``model_cfg["compat"]``.

    Raises ValueError naming an unknown flag (with the closest valid name) or a non-boolean value.
    """
    given = cfg_get(model_cfg, "compat", None) if model_cfg is not None else None
    flags = {name: default for name, (default, _) in COMPAT_FLAGS.items()}
    if given is None:
        return flags
    if not isinstance(given, Mapping) and not hasattr(given, "items"):
        raise ValueError(f"model.compat: expected a mapping of flag names to booleans, received "
                         f"{type(given).__name__}")
    for name, value in given.items():
        if name not in COMPAT_FLAGS:
            close = difflib.get_close_matches(name, COMPAT_FLAGS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"model.compat.{name}: unknown compat flag{hint} "
                             f"Valid flags: {', '.join(sorted(COMPAT_FLAGS))}")
        if not isinstance(value, bool):
            raise ValueError(f"model.compat.{name}: expected true or false, received {value!r}")
        flags[name] = value
    return flags
