"""ConvNeXt building blocks: parameter-free skips, the per-pixel MLP, blocks, patch down/up-scalers.

Reference §2. Module and parameter names follow upstream ``nn/convnext.py`` so checkpoints convert
with an (almost) identity key map.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint


def _check_4d(name: str, x: torch.Tensor, channels: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a (N, C, H, W) tensor, received {shape}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels (dim 1), received shape {tuple(x.shape)}")


def channel_skip(x: torch.Tensor, in_channels: int, out_channels: int, dim: int = 1) -> torch.Tensor:
    """Parameter-free channel change along ``dim``.

    in == out: identity; in = k·out: mean of k consecutive channels; out = k·in: each channel
    repeated k times consecutively; otherwise mean down to gcd(in, out) then repeat up.
    """
    if in_channels == out_channels:
        return x
    mid = math.gcd(in_channels, out_channels)
    if in_channels != mid:
        shape = x.shape[:dim] + (mid, in_channels // mid) + x.shape[dim + 1:]
        x = x.reshape(shape).mean(dim + 1)
    if out_channels != mid:
        x = x.repeat_interleave(out_channels // mid, dim=dim)
    return x


class SkipConnection(nn.Module):
    """Parameter-free skip (§2.1): channel mean/repeat plus nearest-neighbour up- or mean-pool down-scaling.

    ``scale_factor`` > 1 repeats pixels (after the channel change); < 1 mean-pools by 1/scale_factor
    (before the channel change), as upstream orders them.
    """

    def __init__(self, in_channels: int, out_channels: int, scale_factor: float = 1):
        super().__init__()
        if not (scale_factor == 1 or int(scale_factor) > 1 or int(1 / scale_factor) > 1):
            raise ValueError(f"scale_factor: expected 1, an int > 1 or 1/int, received {scale_factor!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scale_factor = scale_factor

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_factor
        if s == 1:
            return x
        if s > 1:
            s = int(s)
            return x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        k = int(1 / s)
        h, w = x.shape[2:]
        if h % k == 0 and w % k == 0:
            return x.reshape(*x.shape[:2], h // k, k, w // k, k).mean((3, 5))
        if h >= k and w >= k:
            return F.avg_pool2d(x, kernel_size=k, stride=k)
        return x.mean((2, 3), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d("x", x, self.in_channels)
        if self.scale_factor > 1:
            return self._scale(channel_skip(x, self.in_channels, self.out_channels))
        return channel_skip(self._scale(x), self.in_channels, self.out_channels)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, scale_factor={self.scale_factor}"


class LinearSkip(nn.Module):
    """The channel part of :class:`SkipConnection` for vectors (N, C); one size must divide the other."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        if in_features % out_features and out_features % in_features:
            raise ValueError(f"LinearSkip: in_features ({in_features}) and out_features ({out_features}) "
                             "must divide one another")
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x: expected shape (N, {self.in_features}), received {tuple(x.shape)}")
        return channel_skip(x, self.in_features, self.out_features)


def _mlp_rows(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
              b2: torch.Tensor) -> torch.Tensor:
    return F.linear(F.silu(F.linear(x, w1, b1)), w2, b2)


class Bottleneck(nn.Module):
    """Per-pixel MLP (§2.2): y = W2·SiLU(W1·x + b1) + b2 with hidden = 4·max(in, out).

    Xavier-uniform weights, zero biases. ``checkpoint=True`` recomputes the hidden activation in
    backward (upstream's memory optimisation) via ``torch.utils.checkpoint``; numbers are identical.
    Output is an NCHW view of NHWC memory, as upstream.
    """

    def __init__(self, in_channels: int, out_channels: int, *, checkpoint: bool = False):
        super().__init__()
        hidden = 4 * max(in_channels, out_channels)
        self.in_channels, self.out_channels, self.checkpoint = in_channels, out_channels, checkpoint
        self.weight1 = nn.Parameter(torch.empty(hidden, in_channels))
        self.bias1 = nn.Parameter(torch.zeros(hidden))
        self.weight2 = nn.Parameter(torch.empty(out_channels, hidden))
        self.bias2 = nn.Parameter(torch.zeros(out_channels))
        nn.init.xavier_uniform_(self.weight1)
        nn.init.xavier_uniform_(self.weight2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d("x", x, self.in_channels)
        rows = x.permute(0, 2, 3, 1)
        args = (rows, self.weight1, self.bias1, self.weight2, self.bias2)
        if self.checkpoint and torch.is_grad_enabled():
            out = _checkpoint(_mlp_rows, *args, use_reentrant=False)
        else:
            out = _mlp_rows(*args)
        return out.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """y = Bottleneck(GroupNorm(DWConv7x7(x))) + Skip(x) (§2.3); 32 channels per norm group."""

    def __init__(self, in_channels: int, out_channels: int | None = None, channels_per_group: int = 32):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        per_group = min(channels_per_group, in_channels)
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size=7, padding=3, groups=in_channels),
            nn.GroupNorm(in_channels // per_group, in_channels),
            Bottleneck(in_channels, out_channels),
        )
        self.skip = SkipConnection(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) + self.skip(x)


def patches_to_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/k, W/k, C·k·k), each patch flattened in (c, row, col) order."""
    n, c, h, w = x.shape
    if h % k or w % k:
        raise ValueError(f"x: spatial size {h}x{w} must be divisible by the patch size {k}")
    return x.reshape(n, c, h // k, k, w // k, k).permute(0, 2, 4, 1, 3, 5).reshape(n, h // k, w // k, c * k * k)


def rows_to_patches(v: torch.Tensor, channels: int, k: int) -> torch.Tensor:
    """(N, h, w, C·k·k) -> (N, C, h·k, w·k): output[n, c, y·k+i, x·k+j] = v[n, y, x, (c, i, j)]."""
    n, h, w, _ = v.shape
    return v.reshape(n, h, w, channels, k, k).permute(0, 3, 1, 4, 2, 5).reshape(n, channels, h * k, w * k)


class PatchDownscale(nn.Module):
    """out = repeat_channels(meanpool_k(x)) + Linear(C·k² -> out) per k×k patch (§2.4); out % in == 0."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 4):
        super().__init__()
        if out_channels % in_channels:
            raise ValueError(f"PatchDownscale: out_channels ({out_channels}) must be a multiple of "
                             f"in_channels ({in_channels}); use ConvNeXtStem otherwise")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.layers = nn.Linear(in_channels * kernel_size ** 2, out_channels)
        self.skip = SkipConnection(in_channels, out_channels, 1 / kernel_size if kernel_size > 1 else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d("x", x, self.in_channels)
        residual = self.layers(patches_to_rows(x, self.kernel_size)).permute(0, 3, 1, 2)
        return self.skip(x) + residual


class ConvNeXtStem(nn.Module):
    """Linear over k×k patches, no skip (§2.4); used where out % in != 0."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 4):
        super().__init__()
        self.in_channels, self.kernel_size = in_channels, kernel_size
        self.layers = nn.Linear(in_channels * kernel_size ** 2, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d("x", x, self.in_channels)
        return self.layers(patches_to_rows(x, self.kernel_size)).permute(0, 3, 1, 2)


class PatchUpscale(nn.Module):
    """out = Skip(in -> out, ×s) + ConvT_s,stride s(ReLU(Conv3x3(ReLU(x)))) (§2.4); in % out == 0."""

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int = 4):
        super().__init__()
        if in_channels % out_channels:
            raise ValueError(f"PatchUpscale: in_channels ({in_channels}) must be a multiple of "
                             f"out_channels ({out_channels})")
        self.skip = SkipConnection(in_channels, out_channels, scale_factor=scale_factor)
        self.residual = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=scale_factor, stride=scale_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.residual(x)
