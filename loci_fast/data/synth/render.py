"""Cameras and the CPU renderer: RGB, metric depth and per-body segmentation for one frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEAR, FAR = 0.1, 32.0  # metres; FAR is also the stored depth_max (16-bit step 0.5 mm)


@dataclass
class CameraPath:
    """Camera positions per frame, all looking at ``target``; static when start == end."""

    start: np.ndarray
    end: np.ndarray
    target: np.ndarray
    fov: float

    def eye(self, t: float) -> np.ndarray:
        return self.start + (self.end - self.start) * t


def _on_shell(rng: np.random.Generator, dist: tuple[float, float], elev_deg: tuple[float, float]) -> np.ndarray:
    az = rng.uniform(0, 2 * np.pi)
    el = np.deg2rad(rng.uniform(*elev_deg))
    r = rng.uniform(*dist)
    return np.array([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)])


def random_camera(rng: np.random.Generator, moving: bool) -> CameraPath:
    """A camera 4.5-6 m from the arena looking down 35-65 degrees; the moving one travels a straight
    line to a second such point (the MOVi-E recipe)."""
    start = _on_shell(rng, (4.5, 6.0), (35.0, 65.0))
    end = _on_shell(rng, (4.5, 6.0), (35.0, 65.0)) if moving else start.copy()
    target = np.array([*rng.uniform(-0.5, 0.5, 2), 0.0])
    return CameraPath(start=start, end=end, target=target, fov=float(rng.uniform(45.0, 55.0)))


def render_frame(p, camera: CameraPath, t: float, size: int,
                 light_direction: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render at progress ``t`` in [0, 1]: rgb (H, W, 3) uint8, planar depth (H, W) metres, body ids (H, W)."""
    view = p.computeViewMatrix(camera.eye(t).tolist(), camera.target.tolist(), [0, 0, 1])
    proj = p.computeProjectionMatrixFOV(camera.fov, 1.0, NEAR, FAR)
    _, _, rgba, zbuf, seg = p.getCameraImage(size, size, view, proj, renderer=p.ER_TINY_RENDERER,
                                             lightDirection=list(light_direction), shadow=1)
    rgb = np.asarray(rgba, np.uint8).reshape(size, size, 4)[..., :3]
    z = np.asarray(zbuf, np.float64).reshape(size, size)
    depth = FAR * NEAR / (FAR - (FAR - NEAR) * z)  # OpenGL depth buffer -> distance along the view axis
    return rgb, depth.astype(np.float32), np.asarray(seg, np.int64).reshape(size, size)
