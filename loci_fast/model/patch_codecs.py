"""Patch codecs: an MLP that embeds s×s patches, and an MLP that expands pixels into s×s patches.

Reference §3. Upstream recomputes the hidden layer in a hand-written backward to save memory;
here plain autograd is the default and ``checkpoint=True`` gives the same saving through
``torch.utils.checkpoint``. Parameter names (weight1, bias1, weight2, bias2) follow upstream.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .convnext import SkipConnection, _check_4d, _mlp_rows, patches_to_rows, rows_to_patches


def _run_mlp(module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    args = (rows, module.weight1, module.bias1, module.weight2, module.bias2)
    if module.checkpoint and torch.is_grad_enabled():
        return _checkpoint(_mlp_rows, *args, use_reentrant=False)
    return _mlp_rows(*args)


class PatchDownscaleMLP(nn.Module):
    """(N, in, H, W) -> (N, out, H/s, W/s): y = W2·SiLU(W1·patch + b1) + b2 per s×s patch (§3.1).

    Patches are flattened in (c, row, col) order; hidden = max(in, out)·expand_ratio. With
    ``residual`` the mean-pooled input, channels repeated, is added (needs out % in == 0).
    """

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int = 4, scale_factor: int = 16,
                 residual: bool = False, *, checkpoint: bool = False):
        super().__init__()
        if residual and out_channels % in_channels:
            raise ValueError(f"PatchDownscaleMLP: residual=True needs out_channels ({out_channels}) to be a "
                             f"multiple of in_channels ({in_channels})")
        hidden = max(in_channels, out_channels) * expand_ratio
        self.in_channels, self.out_channels = in_channels, out_channels
        self.scale_factor, self.residual, self.checkpoint = scale_factor, residual, checkpoint
        self.weight1 = nn.Parameter(torch.empty(hidden, in_channels * scale_factor ** 2))
        self.bias1 = nn.Parameter(torch.zeros(hidden))
        self.weight2 = nn.Parameter(torch.empty(out_channels, hidden))
        self.bias2 = nn.Parameter(torch.zeros(out_channels))
        nn.init.xavier_uniform_(self.weight1)
        nn.init.xavier_uniform_(self.weight2)
        self.skip = SkipConnection(in_channels, out_channels, 1 / scale_factor) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d("x", x, self.in_channels)
        out = _run_mlp(self, patches_to_rows(x, self.scale_factor)).permute(0, 3, 1, 2)
        return out + self.skip(x) if self.skip is not None else out


class UpscaleMLP(nn.Module):
    """(N, in, H, W) -> (N, out, H·s, W·s): a per-pixel MLP whose out·s² outputs fill an s×s patch (§3.2).

    h = SiLU(W1·x + b1) with hidden = max(in, out)·expand_ratio; v = W2·h + b2 is laid out
    pixel-shuffle style: output[n, c, y·s+i, x·s+j] = v[n, y, x, (c, i, j)]. Only upstream's
    kernel_size = 1 variant (the one every model uses) exists.
    """

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int = 16, expand_ratio: int = 4,
                 *, checkpoint: bool = False):
        super().__init__()
        hidden = int(max(in_channels, out_channels) * expand_ratio)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.scale_factor, self.checkpoint = scale_factor, checkpoint
        self.weight1 = nn.Parameter(torch.empty(hidden, in_channels))
        self.bias1 = nn.Parameter(torch.zeros(hidden))
        self.weight2 = nn.Parameter(torch.empty(out_channels * scale_factor ** 2, hidden))
        self.bias2 = nn.Parameter(torch.zeros(out_channels * scale_factor ** 2))
        nn.init.xavier_uniform_(self.weight1)
        nn.init.xavier_uniform_(self.weight2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d("x", x, self.in_channels)
        v = _run_mlp(self, x.permute(0, 2, 3, 1))
        return rows_to_patches(v, self.out_channels, self.scale_factor)
