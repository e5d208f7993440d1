"""Hypernetwork layers: depthwise convolutions whose weights come per sample from one weight vector.

Reference §6. A :class:`HyperSequential` owns a base weight vector; each hyper layer consumes its
slice of ``base + alpha·dynamic`` (dynamic = a per-sample vector from the encoder's hypernetwork).
Every depthwise convolution runs through ``loci_fast.kernels.hyper_depthwise_conv2d``. Names
(``layers``, ``base_weights``, ``alpha``, ``hyper_conv2d``, ``linear_layers``, ``skip``,
``base_layer``) follow upstream ``nn/hypernets.py``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from loci_fast import kernels as K

from .convnext import Bottleneck, SkipConnection


class HyperConv2dDepthWise(nn.Module):
    """Depthwise k×k convolution with per-sample weights and biases; owns no parameters.

    ``weights`` (N, C·k² + C): the first C·k² values are the kernels (channel-major, each k×k
    row-major), the last C the biases. Zero 'same' padding.
    """

    def __init__(self, channels: int, kernel_size: int = 7):
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size

    def num_weights(self) -> int:
        return self.channels * self.kernel_size ** 2 + self.channels

    @torch.no_grad()
    def init_weights_(self, weights: torch.Tensor) -> None:
        """Fill base weights in place (§6.1): kernels ~ N(0, 6/(k² + C)), biases ~ N(0, 1/C)."""
        c, k2 = self.channels, self.kernel_size ** 2
        weights[:, :c * k2].normal_(0.0, math.sqrt(6 / (k2 + c)))
        weights[:, c * k2:c * k2 + c].normal_(0.0, math.sqrt(1 / c))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n, c, k = x.shape[0], self.channels, self.kernel_size
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"x: expected shape (N, {c}, H, W), received {tuple(x.shape)}")
        if weights.dim() != 2 or weights.shape != (n, self.num_weights()):
            raise ValueError(f"weights: expected shape ({n}, {self.num_weights()}) = (N, C·k² + C) for "
                             f"C={c}, k={k}, received {tuple(weights.shape)}")
        # Under autocast the generated weights can come out in another dtype than x; the kernel wants one.
        weights = weights.to(x.dtype)
        kernels = weights[:, :c * k * k].reshape(n, c, k, k)
        bias = weights[:, c * k * k:]
        return K.hyper_depthwise_conv2d(x, kernels, bias)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}"


class HyperConvNextBlock(nn.Module):
    """y = Skip(x) + Bottleneck(GroupNorm(HyperDW7x7(x; w))) (§6.2), channels in -> out.

    GroupNorm uses 32 channels per group (fewer when in < 32); hidden = 4·max(in, out).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        per_group = min(32, in_channels)
        self.hyper_conv2d = HyperConv2dDepthWise(in_channels, 7)
        self.linear_layers = nn.Sequential(
            nn.GroupNorm(in_channels // per_group, in_channels),
            Bottleneck(in_channels, out_channels),
        )
        self.skip = SkipConnection(in_channels, out_channels)

    def num_weights(self) -> int:
        return self.hyper_conv2d.num_weights()

    def init_weights_(self, weights: torch.Tensor) -> None:
        self.hyper_conv2d.init_weights_(weights)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.linear_layers(self.hyper_conv2d(x, weights))


class NonHyperWrapper(nn.Module):
    """Puts an ordinary module (e.g. a patch downscaler) into a HyperSequential; it takes 0 weights."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    def num_weights(self) -> int:
        return 0

    def init_weights_(self, weights: torch.Tensor) -> None:
        pass

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.base_layer(x)


class HyperSequential(nn.Module):
    """A chain of hyper layers sharing one weight vector (§6.3).

    Parameters: ``base_weights`` (1, Σ num_weights), initialised layer by layer, and a scalar
    ``alpha`` (1e-16 at init). ``forward(x, dynamic)`` gives layer i the slice
    base[a_i:b_i] + alpha·dynamic[:, a_i:b_i] (base only when ``dynamic`` is None).

    ``slices_from_start`` (compat flag ``hyper_slices_from_start``, default True) reproduces an
    upstream quirk: its forward never advances the offset, so every layer reads [0, n_i) of the
    vector (layers of equal width share kernels; the tail of the vector is unused). False gives
    each layer its own consecutive slice [a_i, b_i), as the initialisation lays them out.
    """

    def __init__(self, *layers: nn.Module, slices_from_start: bool = True):
        super().__init__()
        self.slices_from_start = slices_from_start
        self.layers = nn.Sequential(*layers)
        self.base_weights = nn.Parameter(torch.zeros(1, self.num_weights()))
        self.alpha = nn.Parameter(torch.full((1,), 1e-16))
        self.init_weights_(self.base_weights.data)

    def __getitem__(self, index: int) -> nn.Module:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def num_weights(self) -> int:
        return sum(layer.num_weights() for layer in self.layers)

    def init_weights_(self, weights: torch.Tensor) -> None:
        offset = 0
        for layer in self.layers:
            layer.init_weights_(weights[:, offset:offset + layer.num_weights()])
            offset += layer.num_weights()

    def forward(self, x: torch.Tensor, dynamic: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        if dynamic is not None and (dynamic.dim() != 2 or dynamic.shape != (n, self.num_weights())):
            raise ValueError(f"dynamic: expected shape ({n}, {self.num_weights()}) (one weight vector per "
                             f"sample), received {tuple(dynamic.shape)}")
        offset = 0
        for layer in self.layers:
            m = layer.num_weights()
            weights = None
            if m:
                weights = self.base_weights[:, offset:offset + m].expand(n, -1)
                if dynamic is not None:
                    weights = weights + self.alpha * dynamic[:, offset:offset + m]
            x = layer(x, weights)
            if not self.slices_from_start:
                offset += m
        return x
