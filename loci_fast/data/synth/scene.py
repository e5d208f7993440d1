"""Build one MOVi-style PyBullet scene: a textured floor, objects dropped and thrown onto it.

Everything random comes from one ``numpy.random.Generator``, so a (seed, video index) pair gives
the same scene in any process. Objects are primitives (box, sphere, cylinder, capsule) and the
convex meshes of ``pybullet_data/random_urdfs``, each with a random colour, size, pose and velocity.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np

TEXTURES = ("checker_blue.png", "checker_grid.jpg", "tex256.png", "uvmap.png", "colors16.png")
TEXTURED_OBJECTS = 0.3  # share of objects that get a (tinted) texture instead of a plain colour
NUM_RANDOM_MESHES = 1000  # pybullet_data/random_urdfs/000 .. 999
ARENA = 1.6               # objects start within [-ARENA, ARENA]^2 metres


@dataclass
class Scene:
    """Bodies of one built scene: ``objects`` holds the PyBullet body id of every thrown object."""

    floor: int
    objects: list[int] = field(default_factory=list)
    light_direction: tuple[float, float, float] = (1.0, 1.0, 1.0)


def data_path() -> str:
    import pybullet_data

    return pybullet_data.getDataPath()


@functools.lru_cache(maxsize=256)
def _mesh_extent(path: str) -> tuple[np.ndarray, float]:
    """Centre and largest side of an OBJ mesh's bounding box (read once per process)."""
    with open(path) as f:
        v = np.array([[float(x) for x in line.split()[1:4]] for line in f if line.startswith("v ")])
    lo, hi = v.min(0), v.max(0)
    return (lo + hi) / 2, float((hi - lo).max())


def _shape(p, rng: np.random.Generator, size: float) -> tuple[int, int]:
    """Create (collision, visual) shapes of a random kind with largest extent about ``size`` metres."""
    kind = rng.choice(["box", "sphere", "cylinder", "capsule", "mesh", "mesh"])
    if kind == "box":
        half = size / 2 * rng.uniform(0.5, 1.0, 3)
        half[rng.integers(3)] = size / 2
        return (p.createCollisionShape(p.GEOM_BOX, halfExtents=half.tolist()),
                p.createVisualShape(p.GEOM_BOX, halfExtents=half.tolist()))
    if kind == "sphere":
        return (p.createCollisionShape(p.GEOM_SPHERE, radius=size / 2),
                p.createVisualShape(p.GEOM_SPHERE, radius=size / 2))
    if kind in ("cylinder", "capsule"):
        geom = p.GEOM_CYLINDER if kind == "cylinder" else p.GEOM_CAPSULE
        radius = size / 2 * rng.uniform(0.4, 1.0)
        length = size * rng.uniform(0.4, 1.0)
        if kind == "capsule":
            length = max(length - 2 * radius, 0.05)
        return (p.createCollisionShape(geom, radius=radius, height=length),
                p.createVisualShape(geom, radius=radius, length=length))
    idx = f"{rng.integers(NUM_RANDOM_MESHES):03d}"
    mesh = os.path.join(data_path(), "random_urdfs", idx, idx + ".obj")
    centre, extent = _mesh_extent(mesh)
    scale = [size / extent] * 3
    shift = (-centre * size / extent).tolist()
    return (p.createCollisionShape(p.GEOM_MESH, fileName=mesh, meshScale=scale, collisionFramePosition=shift),
            p.createVisualShape(p.GEOM_MESH, fileName=mesh, meshScale=scale, visualFramePosition=shift))


def build_scene(p, rng: np.random.Generator, num_objects: int,
                object_size: tuple[float, float] = (0.4, 1.0)) -> Scene:
    """Reset the simulation behind client module ``p`` and populate it; returns the body ids.

    ``object_size`` is the (min, max) largest extent of an object in metres.
    """
    p.resetSimulation()
    p.setPhysicsEngineParameter(deterministicOverlappingPairs=1)
    p.setGravity(0, 0, -9.81)
    floor = p.loadURDF(os.path.join(data_path(), "plane.urdf"))
    textures = [p.loadTexture(os.path.join(data_path(), name)) for name in TEXTURES]
    tint = rng.uniform(0.5, 1.0, 3).tolist() + [1.0]
    p.changeVisualShape(floor, -1, textureUniqueId=textures[rng.integers(len(textures))], rgbaColor=tint)
    p.changeDynamics(floor, -1, lateralFriction=0.6, restitution=0.4)
    scene = Scene(floor=floor, light_direction=tuple(rng.uniform([-1, -1, 1], [1, 1, 3]).tolist()))
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(num_objects):
        size = float(rng.uniform(*object_size))
        col, vis = _shape(p, rng, size)
        for _try in range(20):  # avoid starting inside another object
            pos = np.array([*rng.uniform(-ARENA, ARENA, 2), rng.uniform(0.4, 2.0) + size / 2])
            if all(np.linalg.norm(pos - q) > (size + s) / 2 for q, s in placed):
                break
        placed.append((pos, size))
        orn = p.getQuaternionFromEuler(rng.uniform(-np.pi, np.pi, 3).tolist())
        body = p.createMultiBody(baseMass=float(rng.uniform(0.5, 2.0)), baseCollisionShapeIndex=col,
                                 baseVisualShapeIndex=vis, basePosition=pos.tolist(), baseOrientation=orn)
        colour = rng.uniform(0.05, 1.0, 3)
        p.changeVisualShape(body, -1, rgbaColor=colour.tolist() + [1.0])
        if rng.random() < TEXTURED_OBJECTS:
            p.changeVisualShape(body, -1, textureUniqueId=textures[rng.integers(len(textures))])
        p.changeDynamics(body, -1, lateralFriction=float(rng.uniform(0.3, 0.9)),
                         restitution=float(rng.uniform(0.1, 0.7)))
        # Thrown towards the centre with some spread, MOVi-style.
        towards = -pos[:2] / (np.linalg.norm(pos[:2]) + 1e-6)
        vel = np.array([*(towards * rng.uniform(0.0, 3.0) + rng.normal(0, 0.5, 2)), rng.uniform(-1, 2)])
        p.resetBaseVelocity(body, linearVelocity=vel.tolist(), angularVelocity=rng.normal(0, 2, 3).tolist())
        scene.objects.append(body)
    return scene
