"""Tracks derived from one CATER scene-metadata JSON (``labels/<video>.json``), by the rules of §6.1.

* snitch: the first object whose ``shape`` is ``"spl"``; its xyz per frame from ``locations["0"]``,
  ``locations["1"]``, ... (as many as there are entries);
* final grid label: col = floor(x) + 3, row = floor(y) + 3, label = 6 row + col, from the last location;
* visibility, per ``Cone_*`` entry of ``movements`` in list order: an object is hidden from the END
  frame of the cone's ``_contain`` on it until the START frame of the cone's next ``_pick_place``
  (to ``NUM_FRAMES`` if none follows); a contain ending at frame 0 is ignored; a second contain
  before a pick-place replaces the first (upstream's rule, kept);
* contained: 1 where the snitch is hidden, over ``NUM_FRAMES`` frames.

``tracks`` gives them as the JSON of a converted sample's ``cater.json``: ``snitch_instance``,
``snitch_xyz`` (n x 3), ``label``, ``contained`` (301 ints), ``visible`` {instance: 301 ints},
``num_objects``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

NUM_FRAMES = 301  # upstream's fixed track length (frames are zero-padded to it)
SNITCH_SHAPE = "spl"


class LabelError(ValueError):
    """The metadata lacks something a track needs; the message names it."""


def snitch_object(meta: dict[str, Any]) -> dict[str, Any]:
    objs = meta.get("objects")
    if not isinstance(objs, list):
        raise LabelError("no 'objects' list")
    snitch = [o for o in objs if isinstance(o, dict) and o.get("shape") == SNITCH_SHAPE]
    if not snitch:
        raise LabelError(f"no object with shape {SNITCH_SHAPE!r} (the snitch)")
    locs = snitch[0].get("locations")
    if not isinstance(locs, dict) or not locs:
        raise LabelError("the snitch has no 'locations'")
    return snitch[0]


def snitch_xyz(meta: dict[str, Any]) -> np.ndarray:
    """(n, 3) float64 snitch positions, n = the number of location entries."""
    locs = snitch_object(meta)["locations"]
    try:
        return np.array([locs[str(i)] for i in range(len(locs))], np.float64).reshape(len(locs), 3)
    except (KeyError, ValueError, TypeError) as err:
        raise LabelError(f"snitch locations are not frames '0'..'{len(locs) - 1}' of [x, y, z] ({err!r})") from None


def final_label(meta: dict[str, Any]) -> int:
    """The 6x6 grid cell (0..35 on the grid) of the snitch's last location, floor rule."""
    x, y = snitch_xyz(meta)[-1, :2]
    return (int(math.floor(y)) + 3) * 6 + int(math.floor(x)) + 3


def visibility(meta: dict[str, Any], num_frames: int = NUM_FRAMES) -> dict[str, np.ndarray]:
    """{instance: (num_frames,) float64, 1 = visible} under the cone-containment rule."""
    objs = meta.get("objects", [])
    vis = {o["instance"]: np.ones(num_frames) for o in objs if isinstance(o, dict) and "instance" in o}
    movements = meta.get("movements", {})
    if not isinstance(movements, dict):
        raise LabelError("'movements' is not an object")
    for cone, motions in movements.items():
        if not cone.startswith("Cone_"):
            continue
        hidden_from, target = -1, None
        for m in motions:
            if m[0] == "_contain":
                hidden_from, target = int(m[3]), m[1]
            elif m[0] == "_pick_place" and hidden_from > 0:
                _hide(vis, target, hidden_from, int(m[2]), cone)
                hidden_from = -1
        if hidden_from > 0:
            _hide(vis, target, hidden_from, num_frames, cone)
    return vis


def _hide(vis: dict[str, np.ndarray], target: Any, start: int, end: int, cone: str) -> None:
    if target not in vis:
        raise LabelError(f"{cone} contains {target!r}, which is not among the objects")
    vis[target][start:end] = 0


def snitch_contained(meta: dict[str, Any], num_frames: int = NUM_FRAMES) -> np.ndarray:
    """(num_frames,) float64, 1 while the snitch is inside a cone."""
    return 1 - visibility(meta, num_frames)[snitch_object(meta)["instance"]]


def tracks(meta: dict[str, Any]) -> dict[str, Any]:
    """The derived tracks as JSON-ready values (the ``cater.json`` member of a converted sample)."""
    snitch = snitch_object(meta)
    if "instance" not in snitch:
        raise LabelError("the snitch has no 'instance' name")
    vis = visibility(meta)
    return {"snitch_instance": snitch["instance"], "snitch_xyz": snitch_xyz(meta).tolist(),
            "label": final_label(meta), "contained": [int(c) for c in 1 - vis[snitch["instance"]]],
            "visible": {k: [int(x) for x in v] for k, v in vis.items()}, "num_objects": len(meta["objects"])}
