"""Mask logits -> clean binary slot masks (reference §13.2, eval path).

1. hard assignment: one-hot argmax over [zero background logit, N logits] (ties to the lower index,
   so the background wins ties at 0), background dropped;
2. per mask, its largest 8-connected component (``scipy.ndimage.label`` on the CPU, all masks of
   the batch in one call; ties to the component met first in raster order);
3. a 5×5 morphological closing whose dilation and erosion ignore the image border (as OpenCV's
   default border does);
4. the keep rule: a mask is kept whole if at least one pixel has its whole 5×5 neighbourhood
   (zero outside the image) inside the mask, otherwise it is zeroed.
Steps 1, 3 and 4 run batched on the logits' device.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

KERNEL = 5


def hardmax_with_background(logits: torch.Tensor) -> torch.Tensor:
    """(B, N, H, W) logits -> (B, N, H, W) one-hot masks of the argmax over [0, logits]."""
    full = torch.cat((torch.zeros_like(logits[:, :1]), logits), dim=1)
    index = full.argmax(dim=1, keepdim=True)
    return torch.zeros_like(full).scatter_(1, index, 1.0)[:, 1:]


def largest_component(masks: torch.Tensor) -> torch.Tensor:
    """Keep each mask's largest 8-connected component; empty masks stay empty. (B, N, H, W) {0, 1}."""
    b, n, h, w = masks.shape
    binary = (masks.detach() > 0).cpu().numpy().reshape(b * n, h, w)
    # No connectivity along the stacking axis: each slice is labelled on its own, with labels numbered
    # in raster order over the whole stack, so a slice's labels form one increasing run.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # the 8-neighbourhood within a slice
    labels, count = ndimage.label(binary, structure=structure)
    keep = np.zeros(b * n, dtype=np.int64)  # 0: nothing kept
    if count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        last = np.maximum.accumulate(labels.reshape(b * n, -1).max(1))
        ids = np.arange(1, count + 1)
        owner = np.searchsorted(last, ids, side="left")  # the slice each label lies in
        # per slice: the largest component, the lowest label among equal sizes
        order = np.lexsort((ids, -sizes[1:], owner))
        first = np.ones(len(order), dtype=bool)
        first[1:] = owner[order][1:] != owner[order][:-1]
        keep[owner[order][first]] = ids[order][first]
    out = (labels == keep[:, None, None]) & (keep[:, None, None] > 0)
    return torch.from_numpy(out.reshape(b, n, h, w)).to(device=masks.device, dtype=masks.dtype)


def close_gaps(masks: torch.Tensor, kernel: int = KERNEL) -> torch.Tensor:
    """Binary closing (dilate, then erode) with a kernel×kernel square; outside the image counts as
    neither set nor unset (max-pooling pads with -inf)."""
    b, n, h, w = masks.shape
    x = masks.reshape(b * n, 1, h, w)
    dilated = F.max_pool2d(x, kernel, stride=1, padding=kernel // 2)
    closed = -F.max_pool2d(-dilated, kernel, stride=1, padding=kernel // 2)
    return closed.view(b, n, h, w)


def drop_small(masks: torch.Tensor, kernel: int = KERNEL) -> torch.Tensor:
    """Zero every mask in which no pixel has its whole kernel×kernel window (zero padded) set."""
    b, n, h, w = masks.shape
    padded = F.pad(masks.reshape(b * n, 1, h, w), (kernel // 2,) * 4, value=0.0)
    eroded = -F.max_pool2d(-padded, kernel, stride=1)  # window minimum
    keep = eroded.view(b, n, -1).amax(-1) > 0.5
    return masks * keep[..., None, None].to(masks.dtype)


@torch.no_grad()
def postprocess_masks(logits: torch.Tensor) -> torch.Tensor:
    """Steps 1-4 above: (B, N, H, W) logits -> (B, N, H, W) binary masks (no gradient)."""
    return drop_small(close_gaps(largest_component(hardmax_with_background(logits))))
