"""The two metric conventions.

``upstream`` reproduces Loci-Segmented's validation numbers exactly (reference §18.1, quirks §24.8,
§24.16): the ARI's row and column sums come from the contingency while its pixel total is the GT
total, the AMI scores the pixels some *predicted* mask covers (its arguments are swapped), the
predictions' mIoU and sequence ARI are scored against the GT of the frame before, and IoU / F1
carry a 1e-6 in their denominators. ``standard`` computes the textbook definitions.
"""
from __future__ import annotations

CONVENTIONS = ("upstream", "standard")


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, not {convention!r}")
    return convention
