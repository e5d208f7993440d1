"""Loss weights that decay with the number of calls (reference §15.4, §16.2).

Upstream keeps each call counter in a persistent float buffer ``num_updates`` so that the schedules
resume with a checkpoint; so do we. The decay is ``clip(0.1 ** (n / period - 1), lo, 1)``: 1 until
``n = period``, then ten times smaller every further period.

Reading a GPU buffer on every call would synchronise the device several times per step, so each
counter keeps a host copy and re-reads the buffer only when something else wrote it (a checkpoint
load, a broadcast, a move to another device), detected through the tensor's version counter.
"""
from __future__ import annotations

import torch
from torch import nn


def decay_factor(count: float, period: float, lo: float, hi: float = 1.0) -> float:
    """``max(lo, min(hi, 0.1 ** (count / period - 1)))`` in Python floats, as upstream computes it."""
    return max(lo, min(hi, 0.1 ** (count / period - 1)))


class CallCounter(nn.Module):
    """A persistent call counter ``num_updates`` (int64 scalar buffer) with a host-side mirror.

    Upstream stores a float; an integer buffer survives ``model.to(torch.bfloat16)`` (which casts
    floating buffers and would round counts above 256) and loads from upstream's float values.
    """

    def __init__(self, start: int = 0) -> None:
        super().__init__()
        self.register_buffer("num_updates", torch.tensor(int(start), dtype=torch.int64))
        self._host: float | None = None
        self._seen: tuple[int, int] | None = None

    def _stamp(self) -> tuple[int, int]:
        return id(self.num_updates), self.num_updates._version

    @property
    def count(self) -> float:
        """The current count (without advancing it)."""
        if self._host is None or self._seen != self._stamp():
            self._host = float(self.num_updates.item())
            self._seen = self._stamp()
        return self._host

    def advance(self) -> float:
        """Return the current count, then add one to it (host copy and buffer)."""
        n = self.count
        with torch.no_grad():
            self.num_updates.add_(1)
        self._host = n + 1.0
        self._seen = self._stamp()
        return n


class DecayingFactor(CallCounter):
    """``get()`` returns ``clip(0.1 ** (n / warmup_period - 1), min_factor, 1)`` (or 1 minus it when
    ``inverse``) and counts the call; ``forward(x)`` returns ``x * get()``."""

    def __init__(self, warmup_period: float = 2500.0, min_factor: float = 0.01, inverse: bool = False) -> None:
        super().__init__()
        self.warmup_period = float(warmup_period)
        self.min_factor = float(min_factor)
        self.inverse = inverse

    def get(self) -> float:
        factor = decay_factor(self.advance(), self.warmup_period, self.min_factor)
        return 1 - factor if self.inverse else factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.get()


class DecayingMSELoss(CallCounter):
    """``mean((pred - target)^2) * clip(0.1 ** (n / warmup_period - 1), min_factor, 1)``, counting calls."""

    def __init__(self, warmup_period: float = 2500.0, min_factor: float = 0.01) -> None:
        super().__init__()
        self.warmup_period = float(warmup_period)
        self.min_factor = float(min_factor)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"DecayingMSELoss: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                             "must have the same shape")
        factor = decay_factor(self.advance(), self.warmup_period, self.min_factor)
        return torch.mean((pred - target) ** 2) * factor


class GestaltLoss(CallCounter):
    """``mean|g - 0.5| * clip(0.1 ** (n / warmup_period - 1), 0, 1)``, pushing codes away from 0.5;
    exactly 0 from ``n = 30 * warmup_period`` on. Counts calls."""

    def __init__(self, warmup_period: float = 1000.0) -> None:
        super().__init__()
        self.warmup_period = float(warmup_period)

    def forward(self, gestalt: torch.Tensor) -> torch.Tensor:
        n = self.advance()
        if n >= 30 * self.warmup_period:
            return gestalt.new_zeros(())
        return torch.mean(torch.abs(gestalt - 0.5)) * decay_factor(n, self.warmup_period, 0.0)
