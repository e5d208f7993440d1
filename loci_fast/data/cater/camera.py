"""CATER's fixed camera (static-camera ``all_actions`` videos) and the snitch height (§2.12)."""
from __future__ import annotations

import numpy as np

# homogeneous world (x, y, z, 1) -> clip space; screen (row, col) = (-clip_y / clip_w, clip_x / clip_w)
CATER_CAMERA = (
    (1.4503, 1.6376, 0.0000, -0.0251),
    (-1.0346, 0.9163, 2.5685, 0.0095),
    (-0.6606, 0.5850, -0.4748, 10.5666),
    (-0.6592, 0.5839, -0.4738, 10.7452),
)
SNITCH_Z = 0.3421497941017151  # height of the snitch centre


def project(xyz: np.ndarray) -> np.ndarray:
    """World points (N, 3) -> screen (N, 2) as (row, col) in [-1, 1] on screen, top-left (-1, -1)."""
    clip = np.concatenate([xyz, np.ones_like(xyz[:, :1])], 1) @ np.asarray(CATER_CAMERA).T
    return np.stack([-clip[:, 1] / clip[:, 3], clip[:, 0] / clip[:, 3]], 1)
