"""The GateL0RD cell with e-prop eligibility traces (reference §9.3).

The cell holds weights only. Its recurrent state, the hidden vector and the six eligibility traces,
is passed in and returned (the traces are updated in place), so a caller can detach, checkpoint and
restore it; see :class:`EpropTraces`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from loci_fast.kernels import eprop_gate_l0rd  # the fused op; LOCI_FAST_KERNELS picks Triton or the reference


class EpropTraces(NamedTuple):
    """The six eligibility traces of one cell for N sequences: the tuple ``eprop_gate_l0rd`` updates."""

    gx: torch.Tensor  # (N, Hd, I)  gate, input weights
    gh: torch.Tensor  # (N, Hd, Hd) gate, recurrent weights
    bg: torch.Tensor  # (N, Hd)     gate bias
    rx: torch.Tensor  # (N, Hd, I)  candidate, input weights
    rh: torch.Tensor  # (N, Hd, Hd) candidate, recurrent weights
    br: torch.Tensor  # (N, Hd)     candidate bias

    @classmethod
    def zeros(cls, batch: int, num_inputs: int, num_hidden: int, *, device=None,
              dtype: torch.dtype = torch.float32) -> "EpropTraces":
        """Zero traces, as at a sequence start."""
        z = lambda *shape: torch.zeros(batch, *shape, device=device, dtype=dtype)
        return cls(z(num_hidden, num_inputs), z(num_hidden, num_hidden), z(num_hidden),
                   z(num_hidden, num_inputs), z(num_hidden, num_hidden), z(num_hidden))

    def clone(self) -> "EpropTraces":
        """A copy that later in-place updates of these traces leave untouched."""
        return EpropTraces(*(t.clone() for t in self))


class GateL0RD(nn.Module):
    """GateL0RD cell, e-prop backward: ``forward(x, h_last, traces, gate_noise=None) -> (y, h, openings)``.

    Gate g = relu(tanh(x W_gxᵀ + h W_ghᵀ + b_g + n)), candidate r = tanh(x W_rxᵀ + h W_rhᵀ + b_r),
    h_t = g·r + (1 - g)·h_last; output y = σ(x W_oxᵀ + h_t W_ohᵀ + b_o)·tanh(x W_pxᵀ + h_t W_phᵀ + b_p)
    (from the *new* h_t). The gate noise n (Hd,), one value per hidden unit shared over the batch,
    is ``torch.normal(0, gate_noise_level, (Hd,))``, drawn on every call in every mode (also at std 0,
    as upstream, §14.1) unless ``gate_noise`` is given. ``reg_lambda`` weights the L0 gate penalty in
    the backward. Parameter names and init order are upstream's (``w_gx``, ..., ``b_o``).
    """

    def __init__(self, num_inputs: int, num_hidden: int, num_outputs: int, reg_lambda: float = 0.0,
                 gate_noise_level: float = 0.0) -> None:
        super().__init__()
        self.num_inputs, self.num_hidden, self.num_outputs = num_inputs, num_hidden, num_outputs
        self.reg_lambda = float(reg_lambda)
        self.gate_noise_level = float(gate_noise_level)
        i, hd, o = num_inputs, num_hidden, num_outputs
        empty = lambda *shape: nn.Parameter(torch.empty(*shape))  # noqa: E731
        self.w_gx, self.w_gh, self.b_g = empty(hd, i), empty(hd, hd), empty(hd)  # gate
        self.w_rx, self.w_rh, self.b_r = empty(hd, i), empty(hd, hd), empty(hd)  # candidate
        self.w_px, self.w_ph, self.b_p = empty(o, i), empty(o, hd), empty(o)  # output projection
        self.w_ox, self.w_oh, self.b_o = empty(o, i), empty(o, hd), empty(o)  # output gate
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform init with upstream's bounds and order (so equal seeds give equal weights), zero biases."""
        i, hd, o = self.num_inputs, self.num_hidden, self.num_outputs
        bounds = [(self.w_gx, 6 / (i + hd)), (self.w_gh, 3 / hd), (self.w_rx, 6 / (i + hd)), (self.w_rh, 3 / hd),
                  (self.w_px, 6 / (i + o)), (self.w_ph, 6 / (hd + o)), (self.w_ox, 6 / (i + o)),
                  (self.w_oh, 6 / (hd + o))]
        with torch.no_grad():
            for w, b2 in bounds:
                nn.init.uniform_(w, -math.sqrt(b2), math.sqrt(b2))
            for b in (self.b_g, self.b_r, self.b_p, self.b_o):
                b.zero_()

    def initial_state(self, batch: int, *, device=None, dtype: torch.dtype = torch.float32):
        """``(h (batch, Hd), traces)`` of zeros, as at a sequence start."""
        return (torch.zeros(batch, self.num_hidden, device=device, dtype=dtype),
                EpropTraces.zeros(batch, self.num_inputs, self.num_hidden, device=device, dtype=dtype))

    def draw_gate_noise(self) -> torch.Tensor:
        """The (Hd,) gate noise, drawn as upstream draws it (global RNG, float32, on the weights' device),
        then cast to the weights' dtype."""
        noise = torch.normal(mean=0.0, std=self.gate_noise_level, size=(self.num_hidden,), device=self.b_g.device)
        return noise.to(self.b_g.dtype)

    def _check(self, x: torch.Tensor, h_last: torch.Tensor, traces, gate_noise: torch.Tensor) -> None:
        n, i, hd = x.shape[0], self.num_inputs, self.num_hidden
        if x.dim() != 2 or x.shape[1] != i:
            raise ValueError(f"GateL0RD x: expected (N, {i}), received {tuple(x.shape)}")
        if h_last.shape != (n, hd):
            raise ValueError(f"GateL0RD h_last: expected ({n}, {hd}), received {tuple(h_last.shape)}")
        if len(traces) != 6:
            raise ValueError(f"GateL0RD traces: expected 6 tensors (EpropTraces), received {len(traces)}")
        shapes = ((n, hd, i), (n, hd, hd), (n, hd), (n, hd, i), (n, hd, hd), (n, hd))
        for name, t, want in zip(EpropTraces._fields, traces, shapes):
            if tuple(t.shape) != want:
                raise ValueError(f"GateL0RD traces.{name}: expected {want}, received {tuple(t.shape)}; "
                                 "make them with GateL0RD.initial_state(N) at the sequence start")
        if gate_noise.shape != (hd,):
            raise ValueError(f"GateL0RD gate_noise: expected ({hd},), received {tuple(gate_noise.shape)}")

    def forward(self, x: torch.Tensor, h_last: torch.Tensor, traces: EpropTraces,
                gate_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if gate_noise is None:
            gate_noise = self.draw_gate_noise()
        self._check(x, h_last, traces, gate_noise)
        h, openings = eprop_gate_l0rd(x, h_last, self.w_gx, self.w_gh, self.b_g, self.w_rx, self.w_rh, self.b_r,
                                      traces, self.reg_lambda, gate_noise)
        p = torch.tanh(x.mm(self.w_px.t()) + h.mm(self.w_ph.t()) + self.b_p)
        o = torch.sigmoid(x.mm(self.w_ox.t()) + h.mm(self.w_oh.t()) + self.b_o)
        return o * p, h, openings

    def extra_repr(self) -> str:
        return (f"num_inputs={self.num_inputs}, num_hidden={self.num_hidden}, num_outputs={self.num_outputs}, "
                f"reg_lambda={self.reg_lambda}, gate_noise_level={self.gate_noise_level}")
