"""The CATER snitch tracker head and CATER camera geometry (reference loci.md §2.12).

Screen positions are (row, col) in normalised image coordinates, top-left (-1, -1).
"""
from __future__ import annotations

import torch
from torch import nn

from .noise import binarize, given_or_drawn
from .residual import LinearResidual

#: CATER's fixed camera (world -> clip), as used by upstream and CATER's own tracking baseline
CATER_CAMERA = (
    (1.4503, 1.6376, 0.0000, -0.0251),
    (-1.0346, 0.9163, 2.5685, 0.0095),
    (-0.6606, 0.5850, -0.4748, 10.5666),
    (-0.6592, 0.5839, -0.4738, 10.7452),
)
#: the snitch centre's height, the plane screen positions are lifted onto
CATER_ZERO_ELEVATION = 0.3421497941017151


class CaterSnitchTracker(nn.Module):
    """Snitch screen position (B, 2) = Σ_o gate_o·(row, col)_o with gate = binarised softmax over slots of
    an MLP on each slot's (s, gestalt, priority) predictor output."""

    def __init__(self, latent_size: int, num_objects: int) -> None:
        super().__init__()
        self.num_objects = num_objects
        self.gate = nn.Sequential(LinearResidual(latent_size, latent_size), LinearResidual(latent_size, latent_size),
                                  LinearResidual(latent_size, 1))

    def forward(self, xy: torch.Tensor, latent: torch.Tensor, eps: torch.Tensor | None = None,
                use_noise: bool = True) -> torch.Tensor:
        """``xy`` (B·O, 2), ``latent`` (B·O, G+2) -> (B, 2). The gate noise is ``eps`` (B, O, 1), else drawn
        with ``randn_like`` as upstream; ``use_noise`` False uses the clean gate."""
        o = self.num_objects
        gate = torch.softmax(self.gate(latent).view(-1, o, 1), dim=1)
        if use_noise:
            eps = given_or_drawn(eps, "tracker", tuple(gate.shape), lambda: torch.randn_like(gate))
            gate = binarize(gate, eps)
        return torch.sum(xy.view(-1, o, 2) * gate, dim=1)


def world_to_screen(xyz: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """(N, 3) world points -> (N, 2) screen (row, col) = (-s1/s3, s0/s3) of [x y z 1]·camᵀ."""
    s = torch.cat((xyz, torch.ones(xyz.shape[0], 1, device=xyz.device, dtype=xyz.dtype)), 1).mm(camera.t().to(xyz))
    return torch.stack((s[:, 1] / -s[:, -1], s[:, 0] / s[:, -1]), dim=1)


def screen_to_world(rc: torch.Tensor, camera: torch.Tensor, zero_elevation: float = CATER_ZERO_ELEVATION,
                    height: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 2) screen (row, col) -> (N, 3) world points on the plane z = zero_elevation (+ ``height`` (N, 1)):
    the closed-form inverse of :func:`world_to_screen` using camera rows 0, 1 and 3."""
    cam = camera.to(rc)
    a, b, c, d = cam[0]
    e, f, g, h = cam[1]
    m, n, o, p = cam[3]
    col, row = rc[:, 1], rc[:, 0]
    z = (torch.zeros_like(col) if height is None else height[:, 0]) + zero_elevation
    den = a * f - b * e + row * a * n - row * b * m + col * e * n - col * f * m
    x = (b * h - d * f + row * b * p - row * d * n + col * f * p - col * h * n + b * g * z - c * f * z
         + row * b * o * z - row * c * n * z + col * f * o * z - col * g * n * z) / den
    y = -(a * h - d * e + row * a * p - row * d * m + col * e * p - col * h * m + a * g * z - c * e * z
          + row * a * o * z - row * c * m * z + col * e * o * z - col * g * m * z) / den
    return torch.stack((x, y, z), dim=1)


def tracking_loss(snitch: torch.Tensor, target_xyz: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """Mean squared screen-space error between the predicted snitch (B, 2) and the projected target (B, 3)."""
    return torch.mean((snitch - world_to_screen(target_xyz, camera)) ** 2)


def grid_probabilities(world: torch.Tensor) -> torch.Tensor:
    """(N, ≥2) world (x, y) -> (N, 36) softmax_k(exp(-‖c_k - (x, y)‖²)) over CATER's 6×6 cells, centre of
    class k = (k mod 6 - 2.5, ⌊k/6⌋ - 2.5)."""
    k = torch.arange(36, device=world.device)
    centres = torch.stack(((k % 6) - 2.5, torch.div(k, 6, rounding_mode="floor") - 2.5), 1).to(world.dtype)
    return torch.softmax(torch.exp(-((centres[None] - world[:, None, :2]) ** 2).sum(2)), dim=1)


def grid_metrics(snitch: torch.Tensor, target_label: torch.Tensor, camera: torch.Tensor, *,
                 float_row_division: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CATER localisation of predicted screen positions (B, 2) against grid labels (B,):
    ``(L1 cell distance, top-1, top-5, predicted label)``.

    ``float_row_division`` True reproduces upstream's L1 (rows as label/6 with true division, §11.1:
    |Δ(k mod 6)| + |Δk|/6); False counts whole cells, |Δcol| + |Δrow|.
    """
    probs = grid_probabilities(screen_to_world(snitch, camera))
    label = torch.argmax(probs, dim=1)
    target = target_label.long().to(label.device)
    if float_row_division:
        rows, target_rows = label / 6, target / 6
    else:
        rows, target_rows = torch.div(label, 6, rounding_mode="floor"), torch.div(target, 6, rounding_mode="floor")
    l1 = torch.mean((torch.abs(label % 6 - target % 6) + torch.abs(rows - target_rows)).float())
    top1 = torch.mean((label == target).float())
    top5 = torch.mean((torch.topk(probs, 5, dim=1)[1] == target[:, None]).float().sum(1))
    return l1, top1, top5, label


def l2_distance(snitch: torch.Tensor, target_xyz: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """(B,) world distance between the predicted screen position lifted to z = z0 and the true 3-D point."""
    return torch.sqrt(((screen_to_world(snitch, camera) - target_xyz) ** 2).sum(1))
