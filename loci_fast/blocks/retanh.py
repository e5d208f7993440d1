"""ReTanh: g = relu(tanh(x)) with an L0 surrogate gradient (reference §9.2)."""
from __future__ import annotations

import torch
from torch import nn


class ReTanhFunction(torch.autograd.Function):
    """g = relu(tanh(x)), openings = mean(H_g); backward dx = (dg + λ·H_g)·(1 - g²)·H_g."""

    @staticmethod
    def forward(ctx, x, reg):
        g = torch.relu(torch.tanh(x))
        open_ = torch.ceil(g).clamp(0, 1)  # Heaviside step H_g
        ctx.reg = float(reg)
        ctx.save_for_backward(open_, (1 - g ** 2) * open_)
        openings = open_.mean()
        ctx.mark_non_differentiable(openings)
        return g, openings

    @staticmethod
    def backward(ctx, dg, _unused_openings_grad):
        open_, slope = ctx.saved_tensors
        return (dg + ctx.reg * open_) * slope, None


def retanh(x: torch.Tensor, reg: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(relu(tanh(x)), mean of H_g)``; the backward adds λ = ``reg`` times H_g to the incoming gradient."""
    return ReTanhFunction.apply(x, reg)


class ReTanh(nn.Module):
    """ReTanh gate with input noise in training mode: ``forward(x, noise=None) -> (g, openings)``.

    In training mode ``x + ε·noise_level`` enters the gate, with ε = ``randn_like(x)`` drawn on every
    training call whatever the level (upstream's RNG use) unless ``noise`` (shape of x) is given;
    evaluation mode adds nothing and draws nothing. ``openings`` is a 0-dim tensor (no host sync).
    """

    def __init__(self, reg_lambda: float = 0.0, noise_level: float = 0.0) -> None:
        super().__init__()
        self.reg_lambda = float(reg_lambda)
        self.noise_level = float(noise_level)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            if noise is None:
                noise = torch.randn_like(x)
            elif noise.shape != x.shape:
                raise ValueError(f"ReTanh noise: expected shape {tuple(x.shape)} (that of x), "
                                 f"received {tuple(noise.shape)}")
            x = x + noise * self.noise_level
        return retanh(x, self.reg_lambda)

    def extra_repr(self) -> str:
        return f"reg_lambda={self.reg_lambda}, noise_level={self.noise_level}"
