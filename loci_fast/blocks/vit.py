"""Transformer blocks of the background module (reference §5): token MLP, self/cross attention,
attention pooling, and the learnt position code of a patch grid.

Tokens are (B, N, C). Parameter names follow upstream ``nn/vit.py`` (``norm1``, ``attention``,
``mlp.weight1`` ...), so converted checkpoints map one to one. Attention is
``nn.MultiheadAttention`` (batch-first, bias, no dropout), which runs scaled-dot-product attention
when no weights are requested.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

#: upstream's head count: min(1, C // 64) is 1 for every C >= 64 (§24.4; the intent was probably max)
UPSTREAM_HEADS = 1


def _check_tokens(name: str, x: torch.Tensor, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected tokens of shape (B, N, {channels}), received {got}")


def _token_mlp(x, w1, b1, w2, b2):
    return F.linear(F.silu(F.linear(x, w1, b1)), w2, b2)


class TokenMLP(nn.Module):
    """Token-wise y = W2·SiLU(W1·x + b1) + b2 with hidden = 4·out (upstream's ViT bottleneck).

    Xavier-uniform weights, zero biases. ``checkpoint=True`` recomputes the hidden layer in backward
    (upstream's memory saving, here through ``torch.utils.checkpoint``); the numbers are the same.
    """

    def __init__(self, in_features: int, out_features: int, *, checkpoint: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.checkpoint = in_features, out_features, checkpoint
        self.weight1 = nn.Parameter(torch.empty(4 * out_features, in_features))
        self.bias1 = nn.Parameter(torch.zeros(4 * out_features))
        self.weight2 = nn.Parameter(torch.empty(out_features, 4 * out_features))
        self.bias2 = nn.Parameter(torch.zeros(out_features))
        nn.init.xavier_uniform_(self.weight1)
        nn.init.xavier_uniform_(self.weight2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_tokens("TokenMLP input", x, self.in_features)
        args = (x, self.weight1, self.bias1, self.weight2, self.bias2)
        if self.checkpoint and torch.is_grad_enabled():
            return _checkpoint(_token_mlp, *args, use_reentrant=False)
        return _token_mlp(*args)


def _attention(channels: int, heads: int) -> nn.MultiheadAttention:
    if heads < 1 or channels % heads:
        raise ValueError(f"attention heads: {heads} must be >= 1 and divide the channels ({channels})")
    return nn.MultiheadAttention(channels, heads, dropout=0.0, batch_first=True)


class AttentionLayer(nn.Module):
    """Pre-norm self-attention block: x + MHA(LN1 x), then + TokenMLP(LN2 x)."""

    def __init__(self, channels: int, heads: int = UPSTREAM_HEADS):
        super().__init__()
        self.channels = channels
        self.norm1 = nn.LayerNorm(channels)
        self.attention = _attention(channels, heads)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = TokenMLP(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_tokens("AttentionLayer input", x, self.channels)
        n = self.norm1(x)
        x = x + self.attention(n, n, n, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttentionLayer(nn.Module):
    """x + MHA(LN1 x, context, context) (the context is not normalised), then + TokenMLP(LN2 x)."""

    def __init__(self, channels: int, heads: int = UPSTREAM_HEADS):
        super().__init__()
        self.channels = channels
        self.norm1 = nn.LayerNorm(channels)
        self.cross_attention = _attention(channels, heads)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = TokenMLP(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        _check_tokens("CrossAttentionLayer input", x, self.channels)
        _check_tokens("CrossAttentionLayer context", context, self.channels)
        x = x + self.cross_attention(self.norm1(x), context, context, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class AttentionSum(nn.Module):
    """(B, N, C) -> (B, C): σ(α)·mean_tokens(x) + (1 - σ(α))·MHA(q, LN x, LN x).

    The query (1, 1, C) is learnt, N(0, 1) at init and not normalised; α starts at 0 (a 50/50 mix).
    The mean is over the raw tokens.
    """

    def __init__(self, channels: int, heads: int = UPSTREAM_HEADS):
        super().__init__()
        self.channels = channels
        self.query = nn.Parameter(torch.randn(1, 1, channels))
        self.norm1 = nn.LayerNorm(channels)
        self.alpha = nn.Parameter(torch.zeros(1))
        self.attention = _attention(channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_tokens("AttentionSum input", x, self.channels)
        n = self.norm1(x)
        q = self.query.expand(x.shape[0], 1, self.channels)
        pooled = self.attention(q, n, n, need_weights=False)[0][:, 0]
        a = torch.sigmoid(self.alpha)
        return x.mean(1) * a + pooled * (1 - a)


def position_mlp(out_features: int, hidden: int) -> nn.Sequential:
    """MLP(2 -> hidden -> hidden -> hidden -> out) with SiLU between the linears (none after the last)."""
    return nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_features))


def token_grid(h: int, w: int, *, device=None, dtype=None) -> torch.Tensor:
    """(h·w, 2) patch-grid coordinates in row-major token order, columns (x, y), each linspace(-1, 1)."""
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, h, device=device, dtype=dtype),
                            torch.linspace(-1, 1, w, device=device, dtype=dtype), indexing="ij")
    return torch.stack((gx.reshape(-1), gy.reshape(-1)), dim=1)
