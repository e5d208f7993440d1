"""Parameter-free skips and the residual blocks of the original Loci (reference loci.md §2.1).

Module nesting (``layers.<i>`` indices, ``alpha``) follows upstream's state-dict layout so converted
checkpoints load one to one.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def channel_skip(x: torch.Tensor, c_in: int, c_out: int) -> torch.Tensor:
    """Map channels c_in -> c_out without parameters: identity, mean over groups of consecutive
    channels, repeat of each channel, or (neither dividing the other) mean down to gcd then repeat.
    Works on (N, C, ...) tensors."""
    if c_in == c_out:
        return x
    if c_in % c_out and c_out % c_in:
        g = math.gcd(c_in, c_out)
        return channel_skip(channel_skip(x, c_in, g), g, c_out)
    shape = x.shape
    if c_in > c_out:
        return x.reshape(shape[0], c_out, c_in // c_out, *shape[2:]).mean(dim=2)
    return x.repeat_interleave(c_out // c_in, dim=1)


def upsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H·f, W·f), each pixel repeated f×f."""
    return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def mean_pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Exact f×f average pooling; H and W must be divisible by f."""
    n, c, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"mean_pool: a {h}x{w} map is not divisible by {factor}; the original Loci needs "
                         "input sizes that are 16x the latent grid")
    return x.reshape(n, c, h // factor, factor, w // factor, factor).mean(dim=(3, 5))


class ResidualBlock(nn.Module):
    """[ReLU] → conv k×k → ReLU → conv k×k, plus the channel skip (no spatial scaling is used by Loci v1);
    with ``alpha_residual`` the branch is gated by a learnable alpha (init 1e-12)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, alpha_residual: bool = False,
                 input_nonlinearity: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        pad = kernel_size // 2
        layers: list[nn.Module] = [nn.ReLU()] if input_nonlinearity else []
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad), nn.ReLU(),
                   nn.Conv2d(out_channels, out_channels, kernel_size, padding=pad)]
        self.layers = nn.Sequential(*layers)
        self.alpha_residual = alpha_residual
        if alpha_residual:
            self.alpha = nn.Parameter(torch.zeros(1) + 1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = channel_skip(x, self.in_channels, self.out_channels)
        if self.alpha_residual:
            return self.alpha * self.layers(x) + skip
        return self.layers(x) + skip


class LinearResidual(nn.Module):
    """ReLU → Linear(in, out) → ReLU → Linear(out, out) plus the parameter-free channel mean/repeat skip."""

    def __init__(self, num_inputs: int, num_outputs: int) -> None:
        super().__init__()
        if num_inputs % num_outputs and num_outputs % num_inputs:
            raise ValueError(f"LinearResidual {num_inputs} -> {num_outputs}: one width must divide the other "
                             "(upstream refuses the gcd skip here)")
        self.num_inputs, self.num_outputs = num_inputs, num_outputs
        self.layers = nn.Sequential(nn.ReLU(), nn.Linear(num_inputs, num_outputs), nn.ReLU(),
                                    nn.Linear(num_outputs, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_skip(x, self.num_inputs, self.num_outputs) + self.layers(x)


class _PushToInf(torch.autograd.Function):
    """Identity forward; backward returns -1 everywhere whatever the incoming gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -torch.ones_like(grad)


def push_to_inf(x: torch.Tensor) -> torch.Tensor:
    """Identity whose gradient is always -1: an optimizer then pushes x up by about one step per update
    (upstream's counter-free warm-up ramps, loci.md §2.1)."""
    return _PushToInf.apply(x)


class ForcedAlpha(nn.Module):
    """x · tanh(push_to_inf(init·speed)), init = 0: a 0 → 1 ramp driven by the optimizer's steps."""

    def __init__(self, speed: float = 1.0) -> None:
        super().__init__()
        self.init = nn.Parameter(torch.zeros(1))
        self.speed = speed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(push_to_inf(self.init * self.speed))
