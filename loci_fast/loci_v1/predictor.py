"""The original Loci's predictor (reference loci.md §2.6): a GateL0RD transformer over the slots of
each sample (tile embedding, alpha-gated slot attention and e-prop GateL0RD layers, mean un-embedding),
then the position/gestalt/priority heads and the CATER snitch tracker."""
from __future__ import annotations

import torch
from torch import nn

from loci_fast.blocks.gate_l0rd import EpropTraces, GateL0RD

from .noise import StepNoise, binarize, given_or_drawn
from .residual import ResidualBlock
from .tracker import CaterSnitchTracker


def _mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Linear(n_in, n_out), nn.ReLU(), nn.Linear(n_out, n_out))


class InputEmbedding(nn.Module):
    """x tiled hidden/in times + α·MLP(x), α = 1e-12."""

    def __init__(self, num_inputs: int, num_hidden: int) -> None:
        super().__init__()
        self.repeats = num_hidden // num_inputs
        self.embeding = _mlp(num_inputs, num_hidden)  # upstream's spelling, kept for the state dict
        self.alpha = nn.Parameter(torch.zeros(1) + 1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, self.repeats) + self.alpha * self.embeding(x)


class OutputEmbedding(nn.Module):
    """Mean of the hidden/out consecutive tiles + α·MLP(x), α = 1e-12."""

    def __init__(self, num_hidden: int, num_outputs: int) -> None:
        super().__init__()
        self.repeats, self.num_outputs = num_hidden // num_outputs, num_outputs
        self.embeding = _mlp(num_hidden, num_outputs)
        self.alpha = nn.Parameter(torch.zeros(1) + 1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x.view(x.shape[0], self.repeats, self.num_outputs).mean(dim=1)
        return skip + self.alpha * self.embeding(x)


class AlphaAttention(nn.Module):
    """x + α·MultiheadAttention(x, x, x) over the O slots of each sample, α = 1e-12."""

    def __init__(self, num_hidden: int, num_objects: int, heads: int) -> None:
        super().__init__()
        self.num_objects = num_objects
        self.alpha = nn.Parameter(torch.zeros(1) + 1e-12)
        self.attention = nn.MultiheadAttention(num_hidden, heads, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.view(-1, self.num_objects, x.shape[1])
        s = s + self.alpha * self.attention(s, s, s, need_weights=False)[0]
        return s.reshape(x.shape)


class AlphaGateL0RD(nn.Module):
    """x + α·GateL0RD(x), α = 1e-12; the cell's hidden state and traces are passed in and returned."""

    def __init__(self, num_hidden: int, reg_lambda: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1) + 1e-12)
        self.l0rd = GateL0RD(num_hidden, num_hidden, num_hidden, reg_lambda=reg_lambda)

    def forward(self, x, h_last, traces, gate_noise):
        y, h, openings = self.l0rd(x, h_last, traces, gate_noise)
        return x + self.alpha * y, h, openings


class GateL0RDTransformer(nn.Module):
    """``layers``: InputEmbedding, then (AlphaAttention, AlphaGateL0RD) × depth, then OutputEmbedding
    (upstream's ``EpropGateL0rdTransformer`` indices)."""

    def __init__(self, channels: int, num_objects: int, heads: int, depth: int, reg_lambda: float) -> None:
        super().__init__()
        hidden = channels * heads
        mods: list[nn.Module] = [InputEmbedding(channels, hidden)]
        for _ in range(depth):
            mods += [AlphaAttention(hidden, num_objects, heads), AlphaGateL0RD(hidden, reg_lambda)]
        mods.append(OutputEmbedding(hidden, channels))
        self.layers = nn.ModuleList(mods)

    @property
    def cells(self) -> list[GateL0RD]:
        """The GateL0RD cells in order."""
        return [m.l0rd for m in self.layers if isinstance(m, AlphaGateL0RD)]

    def forward(self, x, hidden, traces, gate_noise):
        """Returns ``(y, new hidden per cell, openings per cell)``."""
        new_h, openings, k = [], [], 0
        for m in self.layers:
            if isinstance(m, AlphaGateL0RD):
                x, h, op = m(x, hidden[k], traces[k], gate_noise[k])
                new_h.append(h)
                openings.append(op)
                k += 1
            else:
                x = m(x)
        return x, tuple(new_h), tuple(openings)


class LociV1Predictor(nn.Module):
    """Next-frame slot state: ``forward(P, G, Q, hidden, traces, noise) -> (P', G', Q', snitch, hidden', openings)``.

    P' = (row, col, s·std_alpha); G' = binarise(σ(bottleneck(g))); Q' = ((p·O + 0.1ε)·priority_factor +
    index·index_factor)·25; snitch (B, 2) from the raw (row, col) and the raw remainder (None without a
    tracker). ``use_noise`` False skips the three noise draws (compat ``noise_in_eval`` off in eval mode).
    """

    def __init__(self, num_objects: int, gestalt_size: int, heads: int, layers: int, reg_lambda: float,
                 tracker: bool = True) -> None:
        super().__init__()
        self.num_objects, self.gestalt_size = num_objects, gestalt_size
        self.std_alpha = nn.Parameter(torch.zeros(1) + 1e-16)
        self.predictor = GateL0RDTransformer(gestalt_size + 4, num_objects, heads, layers, reg_lambda)
        self.tracker = CaterSnitchTracker(gestalt_size + 2, num_objects) if tracker else None
        self.bottleneck = nn.Sequential(nn.Unflatten(1, (gestalt_size, 1, 1)),
                                        ResidualBlock(gestalt_size, gestalt_size, kernel_size=1), nn.Sigmoid())
        self.priority_encoder = PriorityEncoder(num_objects)

    def forward(self, position, gestalt, priority, hidden, traces: tuple[EpropTraces, ...],
                noise: StepNoise | None = None, use_noise: bool = True):
        noise = noise or StepNoise()
        b, o, g = position.shape[0], self.num_objects, self.gestalt_size
        rows = b * o
        x = torch.cat((position.reshape(rows, 3), gestalt.reshape(rows, g), priority.reshape(rows, 1)), dim=1)
        cells = self.predictor.cells
        if noise.gate is not None and len(noise.gate) != len(cells):
            raise ValueError(f"StepNoise.gate: expected {len(cells)} tensors (one per GateL0RD layer), "
                             f"received {len(noise.gate)}")
        # a None entry is drawn by its cell just before that layer runs, as upstream does
        gate_noise = list(noise.gate) if noise.gate is not None else [None] * len(cells)
        out, hidden, openings = self.predictor(x, hidden, traces, gate_noise)
        xy, std, gest, prio = out[:, :2], out[:, 2:3], out[:, 3:-1], out[:, -1:]
        snitch = None
        if self.tracker is not None:
            snitch = self.tracker(xy, out[:, 2:], noise.tracker, use_noise)
        position = torch.cat((xy, std * self.std_alpha), dim=1).reshape(b, o * 3)
        gest = self.bottleneck(gest)
        eps = given_or_drawn(noise.bottleneck, "bottleneck", tuple(gest.shape),
                             lambda: torch.randn_like(gest)) if use_noise else None
        gestalt = binarize(gest, eps).reshape(b, o * g)
        eps = given_or_drawn(noise.priority, "priority", (rows, 1),
                             lambda: torch.randn_like(prio)) if use_noise else None
        priority = self.priority_encoder(prio, eps)
        return position, gestalt, priority, snitch, hidden, openings


class PriorityEncoder(nn.Module):
    """(B·O, 1) raw priority -> (B, O): ((p·O + 0.1·ε)·priority_factor + slot index·index_factor)·25."""

    def __init__(self, num_objects: int) -> None:
        super().__init__()
        self.num_objects = num_objects
        self.index_factor = nn.Parameter(torch.ones(1))
        self.priority_factor = nn.Parameter(torch.ones(1))

    def forward(self, priority: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        o = self.num_objects
        p = priority * o if eps is None else priority * o + eps * 0.1
        p = p * self.priority_factor
        index = torch.arange(o, device=p.device).to(p.dtype).repeat(p.shape[0] // o).view(-1, 1)
        p = p + index * self.index_factor
        return p.view(-1, o) * 25
