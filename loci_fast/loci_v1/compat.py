"""Named switches for the original Loci's quirks that change numbers (reference loci.md §11).

Each flag reproduces upstream f5a7023 by default (so converted checkpoints give upstream's outputs);
False selects the corrected behaviour. A config selects them in ``model.compat``.
"""
from __future__ import annotations

import difflib
from typing import Any

#: name -> (default, what upstream does and what False does)
V1_COMPAT_FLAGS: dict[str, tuple[bool, str]] = {
    "noise_in_eval": (
        True,
        "§11.3: the binarising noise x + x(1-x)*eps (gestalt bottleneck, tracker gate) and the priority "
        "jitter 0.1*eps are drawn in training AND evaluation mode. False: in evaluation mode (module.eval()) "
        "nothing is drawn and the clean values are used.",
    ),
    "l1_float_row_division": (
        True,
        "§11.1: the CATER L1 grid distance takes rows as label/6 with true division (|Δ(k mod 6)| + |Δk|/6). "
        "False: whole cells, |Δcol| + |Δrow|. (Read by evaluation through tracker.grid_metrics.)",
    ),
    "warmup_target_carry_over": (
        True,
        "§11.14: training's warm-up iterations after the first score against (and build the error map from) "
        "the previous iteration's foreground-masked target. False: every warm-up iteration uses frame 0. "
        "(Read by the cater1..cater4 training stages.)",
    ),
    "init_first_iteration_gradient": (
        True,
        "§11.10: the slot seeder's Adam steps on a video's first iteration only, so it only ever uses that "
        "iteration's gradient. False: its gradients are summed over the whole video and it steps once, on the "
        "video's last iteration. (Read by the cater1..cater4 training stages.)",
    ),
}


def resolve_v1_compat(model_cfg: Any = None) -> dict[str, bool]:
    """All v1 compat flags: the defaults overridden by ``model_cfg["compat"]``.

    Raises ValueError naming an unknown flag (with the closest valid one) or a non-boolean value.
    """
    flags = {name: default for name, (default, _) in V1_COMPAT_FLAGS.items()}
    given = None
    if model_cfg is not None:
        try:
            given = model_cfg["compat"]
        except (KeyError, TypeError, IndexError):
            given = None
    for name, value in dict(given or {}).items():
        if name not in flags:
            near = difflib.get_close_matches(name, list(flags), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known flags: {', '.join(flags)}"
            raise ValueError(f"model.compat.{name}: unknown original-Loci compat flag{hint}")
        if not isinstance(value, bool):
            raise ValueError(f"model.compat.{name}: expected true or false, got {value!r}")
        flags[name] = value
    return flags
