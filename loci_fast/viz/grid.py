"""The training-time image grid: named rows of image batches tiled into one uint8 picture.

``loci_fast.train.logs`` writes it as the run's ``images/step_*.png``; the demo draws it too.
Kept free of heavy imports (torch and numpy only) so the trainer can import it cheaply.
"""
from __future__ import annotations

import numpy as np
import torch


def palette(n: int) -> torch.Tensor:
    """(n, 3) distinct RGB colours (hues evenly spread, full saturation); slot k has colour k."""
    hue = torch.arange(n, dtype=torch.float32) / max(n, 1)
    k = (torch.tensor([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6
    return 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def image_grid(rows: dict[str, torch.Tensor], max_items: int = 8) -> np.ndarray:
    """A uint8 (H, W, 3) grid: one row per named (B, C, H, W) tensor in [0, 1], C in {1, 3}.

    Each row shows its first ``max_items`` samples side by side with a 1-pixel white border; rows of
    different widths are padded with black on the right.
    """
    tiles = []
    for tensor in rows.values():
        t = tensor.detach().float().cpu()[:max_items].clamp(0, 1)
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        t = torch.nn.functional.pad(t, (1, 1, 1, 1), value=1.0)
        tiles.append(torch.cat(list(t), dim=2))  # (3, H+2, B*(W+2))
    width = max(t.shape[2] for t in tiles)
    tiles = [torch.nn.functional.pad(t, (0, width - t.shape[2])) for t in tiles]
    grid = torch.cat(tiles, dim=1)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
