"""Mask cases shared by the metric tests: random and hand-built, as (pred, gt) binary float stacks."""
from __future__ import annotations

import torch


def one_hot(labels: torch.Tensor, channels: int) -> torch.Tensor:
    """Labels (B, H, W) in 0..channels (channels = no mask) -> masks (B, channels, H, W) float64."""
    return torch.nn.functional.one_hot(labels, channels + 1)[..., :channels].movedim(-1, 1).double()


def random_exclusive(gen: torch.Generator, b: int, n: int, m: int, h: int, w: int):
    """Disjoint masks with some pixels in no mask, as segmentations and softmax masks are."""
    pred = one_hot(torch.randint(0, n + 1, (b, h, w), generator=gen), n)
    gt = one_hot(torch.randint(0, m + 1, (b, h, w), generator=gen), m)
    return pred, gt


def random_overlapping(gen: torch.Generator, b: int, n: int, m: int, h: int, w: int):
    """Independent Bernoulli masks: overlaps within pred and within gt."""
    pred = (torch.rand(b, n, h, w, generator=gen) < 0.3).double()
    gt = (torch.rand(b, m, h, w, generator=gen) < 0.25).double()
    return pred, gt


def hand_built(gen: torch.Generator, h: int = 9, w: int = 7) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """perfect, permuted, empty GT, single cluster, more slots than objects (and fewer), one sample each."""
    labels = torch.randint(0, 5, (1, h, w), generator=gen)
    gt = one_hot(labels, 4)
    perm = torch.randperm(4, generator=gen)
    more = one_hot(torch.randint(0, 7, (1, h, w), generator=gen), 6)
    more_slots = torch.cat([gt[:, perm], torch.zeros(1, 3, h, w, dtype=gt.dtype)], 1)
    more_slots[:, 5] = more[:, 0] * (gt.sum(1) == 0)  # a spurious slot on unlabelled pixels
    return {
        "perfect": (gt.clone(), gt),
        "permuted": (gt[:, perm], gt),
        "empty_gt": (one_hot(labels, 4), torch.zeros_like(gt)),
        "single_cluster": (torch.ones(1, 1, h, w, dtype=gt.dtype), torch.ones(1, 1, h, w, dtype=gt.dtype)),
        "one_pred_many_gt": (torch.ones(1, 1, h, w, dtype=gt.dtype), gt),
        "more_slots_than_objects": (more_slots, gt),
        "fewer_slots_than_objects": (gt[:, perm[:2]], gt),
    }


def first_on_labels(masks: torch.Tensor, none: int) -> torch.Tensor:
    """Per pixel the first mask that is on, ``none`` where no mask is: (B, K, H, W) -> (B, H·W) int64."""
    flat = masks.flatten(2) > 0.5
    label = flat.to(torch.int64).argmax(1)
    return torch.where(flat.any(1), label, torch.full_like(label, none))
