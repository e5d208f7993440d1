"""The e-prop GateL0RD step as one custom autograd function (reference §9.1), plain PyTorch.

``eprop_gate_l0rd`` is the only call site the cell uses; the fused op ``K.eprop_gate_l0rd`` has the
same signature and replaces it at integration.
"""
from __future__ import annotations

from typing import Sequence

import torch


class EpropGateL0rdFunction(torch.autograd.Function):
    """Forward: gates, new hidden state, in-place trace update. Backward: upstream's e-prop gradient.

    The weight gradients contract δ = dL/dh_t with this step's (already updated) traces, so earlier
    steps of a chunk reach the weights through the traces *and*, via dh_{t-1}, through BPTT, as
    upstream does (§9.1; not a bug to fix silently).
    """

    @staticmethod
    def forward(ctx, x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, traces, reg, gate_noise, grad_enabled):
        e_gx, e_gh, e_bg, e_rx, e_rh, e_br = traces
        g = torch.relu(torch.tanh(x.mm(w_gx.t()) + h_last.mm(w_gh.t()) + b_g + gate_noise))
        r = torch.tanh(x.mm(w_rx.t()) + h_last.mm(w_rh.t()) + b_r)
        h = g * r + (1 - g) * h_last

        open_ = torch.ceil(g).clamp(0, 1)  # Heaviside step H_g
        dg = (1 - g ** 2) * open_
        dr = 1 - r ** 2
        delta = r - h_last

        # e <- e·(1 - g) + (local derivative)_j · (input)_i, in place, without a full-size temporary
        keep = (1 - g).unsqueeze(2)
        gate_j, cand_j = (dg * delta).unsqueeze(2), (dr * g).unsqueeze(2)
        x_i, h_i = x.unsqueeze(1), h_last.unsqueeze(1)
        e_gx.mul_(keep).addcmul_(gate_j, x_i)
        e_gh.mul_(keep).addcmul_(gate_j, h_i)
        e_bg.mul_(1 - g).add_(dg * delta)
        e_rx.mul_(keep).addcmul_(cand_j, x_i)
        e_rh.mul_(keep).addcmul_(cand_j, h_i)
        e_br.mul_(1 - g).add_(dr * g)

        openings = open_.mean()
        ctx.mark_non_differentiable(openings)
        ctx.reg = float(reg)
        if grad_enabled and any(ctx.needs_input_grad[:8]):
            # the next step updates the traces in place, so backward needs this step's values copied
            # (not under no_grad, where needs_input_grad still reads True)
            ctx.save_for_backward(x, h_last, w_gx, w_gh, w_rx, w_rh, g, dg, dr, delta, open_,
                                  *(e.clone() for e in traces))
        return h, openings

    @staticmethod
    def backward(ctx, dh, _unused_openings_grad):
        (x, h_last, w_gx, w_gh, w_rx, w_rh, g, dg, dr, delta, open_,
         e_gx, e_gh, e_bg, e_rx, e_rh, e_br) = ctx.saved_tensors
        need = ctx.needs_input_grad
        l0 = ctx.reg * open_  # λ·H_g: gradient of the L0 surrogate λ·Σ g over open gates
        d_gate = (dh * delta + l0) * dg  # dL/da_g
        d_cand = dh * g * dr  # dL/da_r
        l0_gate = l0 * dg

        def contract(trace):  # Σ_n δ_nj e_nji
            return torch.einsum("nj,nji->ji", dh, trace)

        dx = d_gate.mm(w_gx) + d_cand.mm(w_rx) if need[0] else None
        dh_last = dh * (1 - g) + d_gate.mm(w_gh) + d_cand.mm(w_rh) if need[1] else None
        dw_gx = contract(e_gx) + l0_gate.t().mm(x) if need[2] else None
        dw_gh = contract(e_gh) + l0_gate.t().mm(h_last) if need[3] else None
        db_g = (dh * e_bg + l0_gate).sum(0) if need[4] else None
        dw_rx = contract(e_rx) if need[5] else None
        dw_rh = contract(e_rh) if need[6] else None
        db_r = (dh * e_br).sum(0) if need[7] else None
        return dx, dh_last, dw_gx, dw_gh, db_g, dw_rx, dw_rh, db_r, None, None, None, None


def eprop_gate_l0rd(x: torch.Tensor, h_last: torch.Tensor, w_gx: torch.Tensor, w_gh: torch.Tensor,
                    b_g: torch.Tensor, w_rx: torch.Tensor, w_rh: torch.Tensor, b_r: torch.Tensor,
                    traces: Sequence[torch.Tensor], reg: float, gate_noise: torch.Tensor):
    """One GateL0RD step with e-prop traces -> ``(h_t (N, Hd), openings (0-dim, mean of H_g))``.

    x (N, I), h_last (N, Hd); gate weights w_gx (Hd, I), w_gh (Hd, Hd), b_g (Hd,); candidate
    weights w_rx, w_rh, b_r alike; ``traces`` = (e_gx (N, Hd, I), e_gh (N, Hd, Hd), e_bg (N, Hd),
    e_rx, e_rh, e_br), updated in place on every call (also under no_grad); ``reg`` = λ of the L0
    gate penalty; ``gate_noise`` (Hd,) is added to the gate pre-activation (drawn by the caller).
    """
    return EpropGateL0rdFunction.apply(x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, tuple(traces), reg,
                                       gate_noise, torch.is_grad_enabled())
