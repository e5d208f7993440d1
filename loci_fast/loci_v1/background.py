"""The precalculated background with its learned mask logit and fade-in gate (reference loci.md §2.10)."""
from __future__ import annotations

import torch
from torch import nn

from .residual import mean_pool, push_to_inf


class PrecalculatedBackground(nn.Module):
    """A fixed background image (the dataset's ``background.jpg``) gated by tanh(push_to_inf(alpha/2)).

    ``mask`` (1, 1, H, W) init 1 is the learned per-pixel background logit, ``alpha`` init 0 the fade-in
    gate (each use inside the loss graph adds -0.5 to its gradient), ``local_bias`` is unused (kept for
    upstream's state dict). ``forward(frame, image)`` with the background image (B or 1, 3, H', W') at the
    full input size or the frame's -> (mask logits (B, 1, h, w), gated background, raw background).
    """

    def __init__(self, input_size: tuple[int, int], img_channels: int = 3) -> None:
        super().__init__()
        h, w = int(input_size[0]), int(input_size[1])
        self.mask = nn.Parameter(torch.ones(1, 1, h, w))
        self.alpha = nn.Parameter(torch.zeros(1))
        self.local_bias = nn.Parameter(torch.zeros(1, img_channels, h, w))

    def init_status(self) -> float:
        """tanh(alpha/2): how far the background has faded in (0 at init)."""
        return torch.tanh(self.alpha.detach() * 0.5).item()

    def gate(self) -> torch.Tensor:
        """tanh(push_to_inf(alpha/2)), the differentiable fade-in factor."""
        return torch.tanh(push_to_inf(self.alpha * 0.5))

    def forward(self, frame: torch.Tensor, image: torch.Tensor):
        h, w = frame.shape[2:]
        if image.shape[-1] > w:
            image = mean_pool(image, image.shape[-1] // w)
        mask = self.mask if self.mask.shape[-1] == w else mean_pool(self.mask, self.mask.shape[-1] // w)
        mask = mask.expand(frame.shape[0], 1, h, w)
        return mask, image * self.gate(), image
