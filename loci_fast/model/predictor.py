"""``LatentPredictor`` (reference §10.2): the slot latents of the next frame from this frame's.

Each slot's [position 4, gestalt 3G+1, priority 1] is embedded into a C-wide token (padded with a
code read from the recurrent hidden state), passed through GateL0RD cells and slot self-attention,
and read back out. Position and priority come out raw; the gestalt comes out as a binary flip code Δ
applied as a soft XOR, g + Δ - 2gΔ. Every residual branch starts at α = 1e-12, so the predictor
starts as (nearly) the identity.

Upstream's structure is kept, names included (``input_embeding``, ``l0rds``, ...), so its state
dict loads key for key under ``predictor.``:

* one hidden state (B*O, C*heads) threads through all ``layers + 1`` cells within a step (§24.6a);
* each of the ``layers`` iterations runs the *whole* attention stack before its cell: 9 attention
  calls per step for 3 layers (§24.6c, compat flag ``predictor_repeat_attention_stack``).

The recurrent state (hidden vector and each cell's eligibility traces) is explicit: passed in,
returned (traces updated in place), never a module buffer.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from torch import nn

from loci_fast.blocks.gate_l0rd import EpropTraces, GateL0RD

from .binarize import Binarize
from .compat import resolve_compat

ALPHA_INIT = 1e-12  # every residual branch starts (nearly) closed
BOTTLENECK_SHIFT = 5.0  # sigmoid(· - 5) makes the flip code start small


def _alpha() -> nn.Parameter:
    return nn.Parameter(torch.zeros(1) + ALPHA_INIT)


class InputEmbedding(nn.Module):
    """Token per head: [x + α·MLP(x) (I values) ; σ(W_g h)·tanh(W_c h) (C - I values) from the hidden state]."""

    def __init__(self, num_inputs: int, num_hidden: int, heads: int) -> None:
        super().__init__()
        self.num_inputs, self.heads = num_inputs, heads
        self.embeding = nn.Sequential(nn.Linear(num_inputs, num_hidden * heads), nn.SiLU(),
                                      nn.Linear(num_hidden * heads, num_inputs * heads))
        self.alpha = _alpha()
        self.exchange_gate = nn.Sequential(nn.Linear(num_hidden * heads, (num_hidden - num_inputs) * heads),
                                           nn.Sigmoid())
        self.exchange_code = nn.Sequential(nn.Linear(num_hidden * heads, (num_hidden - num_inputs) * heads),
                                           nn.Tanh())

    def forward(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        n, h = x.shape[0], self.heads
        tokens = x.unsqueeze(1) + self.alpha * self.embeding(x).view(n, h, self.num_inputs)
        code = (self.exchange_gate(hidden) * self.exchange_code(hidden)).view(n, h, -1)
        return torch.cat([tokens, code], dim=2).reshape(n, -1)


class OutputEmbedding(nn.Module):
    """The first I values of each head: their mean over heads + α·MLP(all heads' crops)."""

    def __init__(self, num_hidden: int, num_outputs: int, heads: int) -> None:
        super().__init__()
        self.num_outputs, self.heads = num_outputs, heads
        self.embeding = nn.Sequential(nn.Linear(num_outputs * heads, num_hidden * heads), nn.SiLU(),
                                      nn.Linear(num_hidden * heads, num_outputs))
        self.alpha = _alpha()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crop = x.view(x.shape[0], self.heads, -1)[:, :, :self.num_outputs]
        return crop.mean(1) + self.alpha * self.embeding(crop.reshape(x.shape[0], -1))


class AlphaAttention(nn.Module):
    """x + α·MHA(x, x, x) across the O slots of each sample (tokens in batch layout (B*O, C))."""

    def __init__(self, num_hidden: int, num_slots: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.alpha = _alpha()
        self.attention = nn.MultiheadAttention(num_hidden, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.view(x.shape[0] // self.num_slots, self.num_slots, x.shape[1])
        seq = seq + self.alpha * self.attention(seq, seq, seq, need_weights=False)[0]
        return seq.reshape(x.shape)


class AlphaGateL0RD(nn.Module):
    """x + α·GateL0RD(x, h): returns (x + α·y, h_t, openings)."""

    def __init__(self, num_hidden: int, reg_lambda: float) -> None:
        super().__init__()
        self.alpha = _alpha()
        self.l0rd = GateL0RD(num_hidden, num_hidden, num_hidden, reg_lambda=reg_lambda)

    def forward(self, x, hidden, traces, gate_noise=None):
        y, hidden, openings = self.l0rd(x, hidden, traces, gate_noise)
        return x + self.alpha * y, hidden, openings


class GateL0RDTransformer(nn.Module):
    """Input embedding, cell 0, then per iteration attention and the next cell, output embedding."""

    def __init__(self, num_inputs: int, num_hidden: int, num_layers: int, num_slots: int, heads: int,
                 reg_lambda: float, *, repeat_attention_stack: bool = True) -> None:
        super().__init__()
        if num_inputs > num_hidden:
            raise ValueError(f"predictor channels ({num_hidden}) must be at least the slot latent size "
                             f"3*gestalt_size+6 = {num_inputs}")
        self.num_layers, self.width = num_layers, num_hidden * heads
        self.repeat_attention_stack = repeat_attention_stack
        self.input_embeding = InputEmbedding(num_inputs, num_hidden, heads)
        self.attention = nn.Sequential(*[AlphaAttention(num_hidden * heads, num_slots, heads)
                                         for _ in range(num_layers)])
        self.l0rds = nn.Sequential(*[AlphaGateL0RD(num_hidden * heads, reg_lambda) for _ in range(num_layers + 1)])
        self.output_embeding = OutputEmbedding(num_hidden, num_inputs, heads)

    def forward(self, x, hidden, traces, gate_noise=None):
        noise = list(gate_noise) if gate_noise is not None else [None] * len(self.l0rds)
        x, hidden, first = self.l0rds[0](self.input_embeding(x, hidden), hidden, traces[0], noise[0])
        openings = [first]
        for i in range(self.num_layers):
            x = self.attention(x) if self.repeat_attention_stack else self.attention[i](x)
            x, hidden, o = self.l0rds[i + 1](x, hidden, traces[i + 1], noise[i + 1])
            openings.append(o)
        return self.output_embeding(x), hidden, torch.stack(openings)


class InvertedBottleneck(nn.Module):
    """v + Linear(4c -> c)(SiLU(Linear(c -> 4c)(v)))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(channels, channels * 4), nn.SiLU(), nn.Linear(channels * 4, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class PredictorOutput(NamedTuple):
    position: torch.Tensor  # (B, O*4) next positions (raw)
    gestalt: torch.Tensor  # (B, O*(3G+1)) next gestalts (input XOR flip code)
    priority: torch.Tensor  # (B, O) next priorities (raw)
    hidden: torch.Tensor  # (B*O, C*heads) the new hidden state
    openings: torch.Tensor  # (layers + 1,) share of open gates per cell


class LatentPredictor(nn.Module):
    """``forward(position, gestalt, priority, hidden, traces, *, gate_noise=None, binarize_noise=None)``.

    Inputs in shared layout (B, O*4), (B, O*(3G+1)), (B, O); ``hidden`` (B*O, C*heads) and ``traces``
    (one :class:`EpropTraces` per cell, ``layers + 1`` of them, updated in place) from
    :meth:`initial_state` at a sequence start or the previous step. Returns :class:`PredictorOutput`.

    Draws, in order (§14.1 step 8): each cell's (C*heads,) std-0 gate noise, in every mode, then in
    training mode Binarize's ``randn_like`` (B*O, 3G+1). ``gate_noise`` (a sequence, one per cell) and
    ``binarize_noise`` replace them. Upstream's logged openings are ``openings.sum() / layers`` (§24.6b).
    """

    def __init__(self, gestalt_size: int, num_slots: int, heads: int = 1, layers: int = 3, num_hidden: int = 1024,
                 reg_lambda: float = 1e-8, *, repeat_attention_stack: bool = True) -> None:
        super().__init__()
        self.gestalt_size, self.num_slots = gestalt_size, num_slots
        self.predictor = GateL0RDTransformer(3 * gestalt_size + 6, num_hidden, layers, num_slots, heads, reg_lambda,
                                             repeat_attention_stack=repeat_attention_stack)
        self.gestalt_bottleneck = nn.Sequential(InvertedBottleneck(3 * gestalt_size + 1))
        self.binarize = Binarize()

    @classmethod
    def from_config(cls, model_cfg: Any) -> "LatentPredictor":
        """From the ``model`` section (upstream keys ``predictor.{heads,layers,channels,reg_lambda}``)."""
        p = model_cfg["predictor"]
        return cls(int(model_cfg["gestalt_size"]), int(model_cfg["num_slots"]), int(p["heads"]), int(p["layers"]),
                   int(p["channels"]), float(p["reg_lambda"]),
                   repeat_attention_stack=resolve_compat(model_cfg)["predictor_repeat_attention_stack"])

    @property
    def num_cells(self) -> int:
        return len(self.predictor.l0rds)

    @property
    def width(self) -> int:
        """C*heads, the size of the hidden state and of every cell."""
        return self.predictor.width

    def initial_state(self, batch_size: int, *, device=None, dtype: torch.dtype = torch.float32):
        """``(hidden (B*O, C*heads), [EpropTraces] * cells)`` of zeros, for a sequence start."""
        n, c = batch_size * self.num_slots, self.width
        return (torch.zeros(n, c, device=device, dtype=dtype),
                [EpropTraces.zeros(n, c, c, device=device, dtype=dtype) for _ in range(self.num_cells)])

    def forward(self, position: torch.Tensor, gestalt: torch.Tensor, priority: torch.Tensor, hidden: torch.Tensor,
                traces: Sequence[EpropTraces], *, gate_noise: Sequence[torch.Tensor] | None = None,
                binarize_noise: torch.Tensor | None = None) -> PredictorOutput:
        o, c = self.num_slots, 3 * self.gestalt_size + 1
        b = position.shape[0]
        for name, t, width in (("position", position, 4), ("gestalt", gestalt, c), ("priority", priority, 1)):
            if t.shape != (b, o * width):
                raise ValueError(f"LatentPredictor {name}: expected ({b}, {o * width}) = (B, num_slots * {width}), "
                                 f"received {tuple(t.shape)}")
        if len(traces) != self.num_cells:
            raise ValueError(f"LatentPredictor traces: expected {self.num_cells} (one per cell), received "
                             f"{len(traces)}; make them with initial_state(batch_size)")
        if gate_noise is not None and len(gate_noise) != self.num_cells:
            raise ValueError(f"LatentPredictor gate_noise: expected {self.num_cells} tensors (one per cell), "
                             f"received {len(gate_noise)}")
        g = gestalt.reshape(b * o, c)
        x = torch.cat([position.reshape(b * o, 4), g, priority.reshape(b * o, 1)], dim=1)
        out, hidden, openings = self.predictor(x, hidden, traces, gate_noise)
        flip = self.binarize(self.gestalt_bottleneck(out[:, 4:-1]) - BOTTLENECK_SHIFT, binarize_noise)
        g_next = g + flip - 2 * g * flip  # soft XOR: flips the code bits where flip = 1
        return PredictorOutput(out[:, :4].reshape(b, o * 4), g_next.reshape(b, o * c), out[:, -1].reshape(b, o),
                               hidden, openings)
