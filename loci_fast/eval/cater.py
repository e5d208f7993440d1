"""CATER snitch localisation metrics (reference loci.md §2.12, §4.1): pure batched torch functions.

The tracker predicts the snitch as a screen position (row, col) in CATER's normalised image
coordinates. It is lifted onto the plane z = ``SNITCH_Z`` of the fixed CATER camera, classified
into the 6x6 world grid over [-3, 3]^2 and compared with the final-frame label and position:

* ``top1``: predicted cell == target cell; ``top5``: target among the 5 cells nearest the lifted
  point (CATER task 3);
* ``l1_grid``: |col - col*| + |row - row*| in cells, integer rows (the intended metric);
* ``l1_upstream``: upstream's as-implemented value |col - col*| + |k - k*| / 6 (the row is a true
  division of the class index; quirk §11.1), kept under its own name for comparison with
  published numbers;
* ``l2``: Euclidean distance in world units between the lifted prediction (z = ``SNITCH_Z``) and
  the true 3-D snitch position.

Upstream picks the cell and the top 5 through ``softmax(exp(-d^2))``; this is monotone in the
distance, so ours rank cells by the squared distance itself. The two agree except far off the
grid (more than about 4 units from the nearest cell centre), where upstream's float32 softmax
saturates into ties that ``argmax``/``topk`` break by index.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..data.cater.camera import CATER_CAMERA, SNITCH_Z

GRID = 6  # 6x6 cells of 1x1 world units over [-3, 3]^2
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)  # upstream's L2-versus-containment curves (plus the mean)


def _camera(camera: torch.Tensor | Sequence | None, like: torch.Tensor) -> torch.Tensor:
    cam = torch.as_tensor(CATER_CAMERA if camera is None else camera, dtype=like.dtype, device=like.device)
    if cam.shape != (4, 4):
        raise ValueError(f"camera must be a 4x4 matrix, got shape {tuple(cam.shape)}")
    return cam


def world_to_screen(xyz: torch.Tensor, camera: torch.Tensor | None = None) -> torch.Tensor:
    """World points (N, 3) -> screen (N, 2) as (row, col), row pointing down, both in [-1, 1] on screen."""
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (N, 3), got {tuple(xyz.shape)}")
    cam = _camera(camera, xyz)
    clip = torch.cat([xyz, torch.ones_like(xyz[:, :1])], 1) @ cam.T
    return torch.stack([-clip[:, 1] / clip[:, 3], clip[:, 0] / clip[:, 3]], 1)


def screen_to_world(screen: torch.Tensor, camera: torch.Tensor | None = None, z: float = SNITCH_Z) -> torch.Tensor:
    """Screen (N, 2) as (row, col) -> world (N, 3) on the plane of height ``z``.

    Solves the projection's first two rows for world x, y with z fixed: the inverse of
    ``world_to_screen`` for points at that height.
    """
    if screen.ndim != 2 or screen.shape[1] != 2:
        raise ValueError(f"screen must be (N, 2) (row, col), got {tuple(screen.shape)}")
    cam = _camera(camera, screen)
    row, col = screen[:, 0], screen[:, 1]
    # u = col and v = -row are clip x / w and clip y / w; each gives one linear equation in (x, y).
    u, v = col, -row
    r0, r1, r3 = cam[0], cam[1], cam[3]
    a1, b1 = r0[0] - u * r3[0], r0[1] - u * r3[1]
    c1 = -(r0[2] * z + r0[3] - u * (r3[2] * z + r3[3]))
    a2, b2 = r1[0] - v * r3[0], r1[1] - v * r3[1]
    c2 = -(r1[2] * z + r1[3] - v * (r3[2] * z + r3[3]))
    det = a1 * b2 - a2 * b1
    x = (c1 * b2 - c2 * b1) / det
    y = (a1 * c2 - a2 * c1) / det
    return torch.stack([x, y, torch.full_like(x, z)], 1)


def grid_label(xyz: torch.Tensor) -> torch.Tensor:
    """CATER's cell of world points (N, >=2) -> (N,) long: 6*(floor(y)+3) + floor(x)+3 (§6.1).

    The rule of the dataset's final-frame labels; points off the grid give labels outside 0..35,
    as the rule does.
    """
    col = torch.floor(xyz[:, 0]).long() + GRID // 2
    row = torch.floor(xyz[:, 1]).long() + GRID // 2
    return row * GRID + col


def cell_centres(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """(36, 2) world (x, y) of the cell centres: class k sits at (k mod 6 - 2.5, k div 6 - 2.5)."""
    k = torch.arange(GRID * GRID, device=device)
    return torch.stack([k % GRID, k // GRID], 1).to(dtype) - (GRID / 2 - 0.5)


def grid_distances(world: torch.Tensor) -> torch.Tensor:
    """Squared distances (N, 36) from world points (N, >=2) to the 36 cell centres."""
    c = cell_centres(world.dtype, world.device)
    return ((world[:, None, :2] - c[None]) ** 2).sum(-1)


def snitch_localisation(screen: torch.Tensor, target_label: torch.Tensor, target_xyz: torch.Tensor, *,
                        camera: torch.Tensor | None = None, z: float = SNITCH_Z) -> dict[str, torch.Tensor]:
    """Per-video localisation results at the final frame.

    Args:
        screen: (N, 2) predicted snitch screen position (row, col).
        target_label: (N,) integer cell 0..35 of the true final position (``grid_label``).
        target_xyz: (N, 3) true final snitch position in world units.
    Returns (each of shape (N,)): ``label`` (long, the predicted cell), ``top1``, ``top5`` (bool),
    ``l1_grid`` and ``l1_upstream`` (float, in cells, see the module docstring), ``l2`` (float,
    world units), and ``world`` (N, 3), the lifted prediction.
    """
    n = screen.shape[0]
    if target_label.shape != (n,) or target_xyz.shape != (n, 3):
        raise ValueError(f"for {n} predictions target_label must be ({n},) and target_xyz ({n}, 3), got "
                         f"{tuple(target_label.shape)} and {tuple(target_xyz.shape)}")
    world = screen_to_world(screen, camera, z)
    d2 = grid_distances(world)
    label = d2.argmin(1)
    nearest5 = torch.topk(d2, 5, dim=1, largest=False).indices
    target = target_label.to(device=screen.device, dtype=torch.long)
    dcol = (label % GRID - target % GRID).abs().to(screen.dtype)
    l1_grid = dcol + (label // GRID - target // GRID).abs().to(screen.dtype)
    l1_upstream = dcol + (label.to(screen.dtype) / GRID - target.to(screen.dtype) / GRID).abs()
    l2 = ((world - target_xyz.to(world)) ** 2).sum(1).sqrt()
    return {"label": label, "top1": label == target, "top5": (nearest5 == target[:, None]).any(1),
            "l1_grid": l1_grid, "l1_upstream": l1_upstream, "l2": l2, "world": world}


def localisation_summary(results: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means over videos of ``snitch_localisation`` (or of its per-video results concatenated over
    batches and ranks): top1 and top5 as fractions, l1_grid, l1_upstream, l2."""
    return {k: float(results[k].double().mean()) for k in ("top1", "top5", "l1_grid", "l1_upstream", "l2")}


def tracking_l2(screen: torch.Tensor, target_xyz: torch.Tensor, *, camera: torch.Tensor | None = None,
                z: float = SNITCH_Z) -> torch.Tensor:
    """World-unit L2 (...,) of screen predictions (..., 2) against true positions (..., 3), any batch shape."""
    flat = screen.reshape(-1, 2)
    world = screen_to_world(flat, camera, z)
    return ((world - target_xyz.reshape(-1, 3).to(world)) ** 2).sum(1).sqrt().reshape(screen.shape[:-1])


def containment_duration(contained: torch.Tensor) -> torch.Tensor:
    """Consecutive contained frames so far: (B, T) flags -> (B, T) long; 0 where not contained.

    d[t] = d[t-1] * c[t] + c[t], as upstream counts it (computed with a cumulative sum, no loop).
    """
    c = (contained > 0.5).long()
    run = torch.cumsum(c, 1)
    # the running count at the last uncontained frame, carried forward, is subtracted
    reset = torch.cummax(torch.where(c == 0, run, torch.zeros_like(run)), 1).values
    return (run - reset) * c


def containment_pairs(l2: torch.Tensor, contained: torch.Tensor, *,
                      upstream_offset: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2, containment duration) pairs of the contained frames, flat, to gather over batches and ranks.

    Args:
        l2: (B, T) world-unit error of the prediction for frame t; NaN where no prediction is scored
            (e.g. frame 0, which upstream never predicts).
        contained: (B, T) snitch-contained flags of the same frames.
        upstream_offset: pair the L2 of frame t with the duration of frame t-1, as upstream's
            evaluation does (quirk §11.17); default: the duration of frame t itself.
    Returns ``(values (P,), durations (P,) long)`` for the pairs with duration > 0 and finite L2.
    """
    if l2.shape != contained.shape or l2.ndim != 2:
        raise ValueError(f"l2 and contained must both be (B, T), got {tuple(l2.shape)} and {tuple(contained.shape)}")
    dur = containment_duration(contained)
    if upstream_offset:
        dur = torch.cat([torch.zeros_like(dur[:, :1]), dur[:, :-1]], 1)
    keep = (dur > 0) & torch.isfinite(l2)
    return l2[keep], dur[keep]


def l2_versus_containment(values: torch.Tensor, durations: torch.Tensor,
                          quantiles: Sequence[float] = QUANTILES) -> dict[str, torch.Tensor]:
    """Quantiles and mean of L2 for each containment duration (upstream's pgfplots curves).

    Args:
        values: (P,) L2 values; durations: (P,) their integer durations (``containment_pairs``).
    Returns ``duration`` (D,) long (the distinct durations, ascending), ``quantiles`` (D, Q) (linear
    interpolation, as ``numpy.quantile``'s default), ``mean`` (D,), ``count`` (D,) long, and
    ``q`` (Q,), the quantile levels. Computed with one sort, no loop over durations.
    """
    if values.shape != durations.shape or values.ndim != 1:
        raise ValueError(f"values and durations must both be (P,), got {tuple(values.shape)} and "
                         f"{tuple(durations.shape)}")
    q = torch.as_tensor(quantiles, dtype=values.dtype, device=values.device)
    if values.numel() == 0:
        empty = values.new_zeros((0,))
        return {"duration": durations.new_zeros((0,)), "quantiles": values.new_zeros((0, q.numel())),
                "mean": empty, "count": durations.new_zeros((0,)), "q": q}
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(durations[order], stable=True)]  # by duration, then by value
    v, d = values[order], durations[order]
    dur, count = torch.unique_consecutive(d, return_counts=True)
    start = torch.cumsum(count, 0) - count
    pos = q[None, :] * (count[:, None] - 1).to(values.dtype)  # (D, Q) fractional rank in each group
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, count[:, None] - 1)
    frac = pos - lo.to(values.dtype)
    vlo, vhi = v[start[:, None] + lo], v[start[:, None] + hi]
    sums = torch.zeros(dur.numel(), dtype=values.dtype, device=values.device)
    sums.index_add_(0, torch.repeat_interleave(torch.arange(dur.numel(), device=values.device), count), v)
    return {"duration": dur, "quantiles": vlo + (vhi - vlo) * frac, "mean": sums / count.to(values.dtype),
            "count": count, "q": q}
