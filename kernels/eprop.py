"""One step of the GateL0RD cell with e-prop eligibility traces (reference/loci-segmented.md §9.1), fused in Triton.

``eprop_gate_l0rd(x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, traces, reg, gate_noise)``:

    g = relu(tanh(x W_gxᵀ + h_last W_ghᵀ + b_g + gate_noise)),  r = tanh(x W_rxᵀ + h_last W_rhᵀ + b_r)
    h = g r + (1 - g) h_last,  openings = mean(1[g > 0])

and, in place, the six eligibility traces (e_gx, e_gh, e_bg, e_rx, e_rh, e_br), per sample n, hidden
unit j and input i (u = x for the *x traces, u = h_last for the *h traces, u = 1 for the biases):

    e_g[n, j, i] <- e_g[n, j, i] (1 - g) + g' Δ u[n, i],   e_r[n, j, i] <- e_r[n, j, i] (1 - g) + r' g u[n, i]

with g' = (1 - g²) 1[g > 0], r' = 1 - r², Δ = r - h_last. The backward is upstream's hybrid gradient
(δ = dL/dh): dW_g = Σ_n δ e_g + λ 1[g > 0] g' u, dW_r = Σ_n δ e_r with the traces *after* this step's
update, dx = ((δΔ + λ1[g>0]) g') W_gx + (δ g r') W_rx and dh_last = δ (1 - g) + (same) W_gh + (δ g r') W_rh,
so earlier steps of a truncated-BPTT chunk count through both the traces and BPTT, as upstream.
The gate noise is drawn by the caller (one (Hd,) normal draw per call, §14.1 order) and passed in.

Triton design (N = slot batch, Hd hidden, I inputs):
* forward: ``_eprop_gates_kernel`` (one program per block of hidden units and samples) computes both
  pre-activations with ``tl.dot`` over [x, h_last], writes g, r (kept in fp32 for the backward), h and
  updates the two bias traces; ``_eprop_trace_fwd_kernel`` (launched once for the x traces, once for the
  h traces) streams each (n, j-tile, i-tile) of e_g and e_r once: read, decay, add the rank-1 term,
  write back in place. No temporaries of trace size.
* backward: ``_eprop_trace_bwd_kernel`` (once for x, once for h) owns one (j-tile, i-tile) of dW_g and dW_r
  and loops over the batch, so every trace element is read exactly once and the batch sum needs no
  atomics (deterministic); the L0 term is added in the same loop, the bias gradients by the first
  i-tile. When there are few tiles for the SMs (N = 128, Hd = I = 512) the batch is split into parts
  of >= 16 samples whose fp32 partials a fixed-order sum adds (``batch_splits``).
  ``_eprop_input_grad_kernel`` computes dx and dh_last (``tl.dot``, K = Hd) with the carry term.
* fp32 accumulation (fp64 for fp64 inputs); ``tl.dot`` on fp32 tiles with input_precision "ieee",
  on the half-precision operands themselves for fp16/bf16 (tensor cores).
* sm_90 (ptxas of triton 3.7.1 and 3.6.0, fp32/bf16/fp16 at the benchmark shapes): 64-128
  registers, no spills, no stack (``test_compiles_for_sm90_without_spills``).

What the backward keeps of step t's traces (the memory question). The backward of step t needs the
traces e_t right after its own update; the next step's forward overwrites them in place before this
backward runs (a chunk of K steps runs K forwards, then one backward). Recomputing e_t from e_{t+1}
means dividing by 1 - g, which is 0 in floating point wherever tanh saturates: not exact. So a copy
of e_t is needed exactly when a later forward overwrites the traces before step t's backward, and
the copy can be taken by that later forward, in the same pass that updates them (it reads e_t
anyway): copy-on-write. Each step registers a small holder (keyed by the trace buffers) with the
trace versions after its update; the next forward on the same buffers writes the old values into a
fresh copy only if that holder is still alive (its graph exists), has not run its backward, and the
versions still match. The backward uses the copy, or the live buffers when their version is still
its own, and frees the copy. The last step of every chunk thus keeps no trace copy at all; weights,
x and h_last are kept by reference (autograd checks their versions); g and r are kept (2 N Hd).
Saved bytes per step, fp32, N = 16, Hd = I = 1024 (the formulas ``saved_bytes_upstream`` and
``saved_bytes_ours``, checked against the ``ctx`` tensors in the tests): upstream clones 285.9 MB
(268.6 MB of traces, 16.8 MB of weights, 0.5 MB of (N, Hd) vectors); ours keeps 0.13 MB on the last
step of a chunk and 268.7 MB on the others, so a K = 2 chunk (upstream's schedule) keeps 268.8 MB
against 571.7 MB (47 %; at N = 128, Hd = I = 512: 538 MB against 1087 MB). K - 1 copies a chunk is the
least an exact backward can keep: for an arbitrary δ_t, Σ_n δ_t e_t determines e_t, and e_t cannot be
recovered from e_{t+1} where the gates saturate. A trace modified in place by anything else between a
step's forward and its backward (e.g. ``reset_state``) makes that backward raise instead of silently
using wrong traces.
"""
from __future__ import annotations

import math
import threading
import weakref

import torch

from . import dispatch
from ._common import cdiv, jit, plan_for_gpu, sm_count, tl, triton

__all__ = ["eprop_gate_l0rd", "eprop_gate_l0rd_reference", "saved_bytes_upstream", "saved_bytes_ours"]

TRACE_NAMES = ("e_gx", "e_gh", "e_bg", "e_rx", "e_rh", "e_br")


# ---------------------------------------------------------------- reference

def _decay_add_(trace: torch.Tensor, decay: torch.Tensor, term: torch.Tensor) -> None:
    """``trace <- trace * decay + term`` in place, rounding as the out-of-place expression does (no
    fused multiply-add), with one trace-sized temporary (``term``) instead of three."""
    if trace.dtype in dispatch.HALF_DTYPES:
        trace.copy_(trace.float().mul_(decay).add_(term))
    else:
        trace.mul_(decay).add_(term)


class _EpropReferenceFunction(torch.autograd.Function):
    """§9.1 in plain PyTorch: the traces cloned after the update, as upstream (fp32 compute for fp16/bf16)."""

    @staticmethod
    def forward(ctx, x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, gate_noise, reg: float, traces):
        up = dispatch.upcast
        xc, hc = up(x), up(h_last)
        g = torch.relu(torch.tanh(xc @ up(w_gx).t() + hc @ up(w_gh).t() + up(b_g) + up(gate_noise)))
        r = torch.tanh(xc @ up(w_rx).t() + hc @ up(w_rh).t() + up(b_r))
        h = g * r + (1 - g) * hc
        open_ = (g > 0).to(g.dtype)                      # H_g
        dg, dr, delta = (1 - g * g) * open_, 1 - r * r, r - hc
        decay = (1 - g).unsqueeze(2)
        e_gx, e_gh, e_bg, e_rx, e_rh, e_br = traces
        _decay_add_(e_gx, decay, (dg * delta).unsqueeze(2) * xc.unsqueeze(1))
        _decay_add_(e_gh, decay, (dg * delta).unsqueeze(2) * hc.unsqueeze(1))
        _decay_add_(e_bg, 1 - g, dg * delta)
        _decay_add_(e_rx, decay, (dr * g).unsqueeze(2) * xc.unsqueeze(1))
        _decay_add_(e_rh, decay, (dr * g).unsqueeze(2) * hc.unsqueeze(1))
        _decay_add_(e_br, 1 - g, dr * g)
        ctx.reg = reg
        ctx.save_for_backward(x, h_last, w_gx, w_gh, w_rx, w_rh, g, r, *(t.clone() for t in traces))
        openings = open_.mean().to(x.dtype)
        ctx.mark_non_differentiable(openings)
        return h.to(x.dtype), openings

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, _):
        x, h_last, w_gx, w_gh, w_rx, w_rh, g, r, *traces = ctx.saved_tensors
        up = dispatch.upcast
        xc, hc, d = up(x), up(h_last), up(dh)
        e_gx, e_gh, e_bg, e_rx, e_rh, e_br = (up(t) for t in traces)
        open_ = (g > 0).to(g.dtype)
        dg, dr, delta = (1 - g * g) * open_, 1 - r * r, r - hc
        l0 = ctx.reg * open_ * dg                        # λ H_g g'
        dj = d.unsqueeze(2)
        dw_gx = (dj * e_gx).sum(0) + l0.t() @ xc
        dw_gh = (dj * e_gh).sum(0) + l0.t() @ hc
        db_g = (d * e_bg + l0).sum(0)
        dw_rx, dw_rh, db_r = (dj * e_rx).sum(0), (dj * e_rh).sum(0), (d * e_br).sum(0)
        u = (d * delta + ctx.reg * open_) * dg
        v = d * g * dr
        dx = u @ up(w_gx) + v @ up(w_rx)
        dh_last = d * (1 - g) + u @ up(w_gh) + v @ up(w_rh)
        dt = x.dtype
        return (dx.to(dt), dh_last.to(dt), dw_gx.to(dt), dw_gh.to(dt), db_g.to(dt), dw_rx.to(dt),
                dw_rh.to(dt), db_r.to(dt), None, None, None)


def eprop_gate_l0rd_reference(x: torch.Tensor, h_last: torch.Tensor, w_gx: torch.Tensor, w_gh: torch.Tensor,
                              b_g: torch.Tensor, w_rx: torch.Tensor, w_rh: torch.Tensor, b_r: torch.Tensor,
                              traces: tuple[torch.Tensor, ...], reg: float, gate_noise: torch.Tensor):
    """One e-prop GateL0RD step in plain PyTorch, exactly §9.1 (the oracle; any float dtype).

    Same arguments, checks and results as :func:`eprop_gate_l0rd`; fp16/bf16 compute in fp32. Like
    upstream it keeps a clone of every trace for the backward.
    """
    _check_args(x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, traces, reg, gate_noise)
    return _EpropReferenceFunction.apply(x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, gate_noise,
                                         float(reg), tuple(traces))


# ---------------------------------------------------------------- saved memory

def saved_bytes_upstream(n: int, hidden: int, inputs: int, elem: int = 4) -> int:
    """Bytes upstream's ``EpropGateL0rdFunction`` clones into ``ctx`` per step.

    g, g', g' (as (N, Hd, 1)), r', H_g, Δ and h_last (N·Hd each), x (N·I), λ (1), the four weight
    matrices and the six traces after the update.
    """
    weights = 2 * hidden * inputs + 2 * hidden * hidden
    traces = n * weights + 2 * n * hidden
    return elem * (7 * n * hidden + n * inputs + 1 + weights + traces)


def saved_bytes_ours(n: int, hidden: int, inputs: int, elem: int = 4, last_of_chunk: bool = True) -> int:
    """Bytes the fused op allocates to keep for a step's backward (x, h_last and the weights are
    referenced, not copied): g and r in fp32, plus a trace copy unless the step is the last one
    before the backward (see the module docstring)."""
    kept = 4 * 2 * n * hidden if elem <= 4 else elem * 2 * n * hidden
    if not last_of_chunk:
        kept += elem * n * (2 * hidden * inputs + 2 * hidden * hidden + 2 * hidden)
    return kept


# ---------------------------------------------------------------- Triton kernels

if triton is not None:

    @jit
    def _tanh(a):
        """tanh that keeps the sign of tiny arguments (relu(tanh) decides the gate's openness)."""
        t = tl.exp(-2.0 * tl.abs(a))
        big = (1.0 - t) / (1.0 + t)
        a2 = a * a
        # |a| < 1/16: the series to a^7 (next term < 3e-13 relative), where 1 - t cancels.
        small = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0))))
        return tl.where(tl.abs(a) < 0.0625, small, tl.where(a < 0, -big, big))

    @jit
    def _eprop_gates_kernel(x_ptr, h_ptr, wgx_ptr, wgh_ptr, bg_ptr, wrx_ptr, wrh_ptr, br_ptr, noise_ptr,
                      g_ptr, r_ptr, hout_ptr, ebg_ptr, ebr_ptr, obg_ptr, obr_ptr, N, I, HD,
                      SAVE_OLD: tl.constexpr, ACC: tl.constexpr, OP: tl.constexpr, PREC: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
        # OP: the dot operand dtype, ACC for fp32/fp64, the storage dtype for fp16/bf16 (the products
        # of two half values are exact in the fp32 accumulator, and tensor cores take them).
        j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        j_ok, n_ok = j < HD, n < N
        acc_g = tl.zeros((BLOCK_N, BLOCK_J), dtype=ACC)
        acc_r = tl.zeros((BLOCK_N, BLOCK_J), dtype=ACC)
        # Pre-activations over the x part (K = I), then over the h part (K = Hd).
        for k0 in range(0, I, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < I
            u = tl.load(x_ptr + n[:, None] * I + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            w_off = j[None, :] * I + k[:, None]          # W[j, k] as a (K, J) tile
            w_ok = k_ok[:, None] & j_ok[None, :]
            acc_g = tl.dot(u.to(OP), tl.load(wgx_ptr + w_off, mask=w_ok, other=0.0).to(OP), acc_g,
                           input_precision=PREC, out_dtype=ACC)
            acc_r = tl.dot(u.to(OP), tl.load(wrx_ptr + w_off, mask=w_ok, other=0.0).to(OP), acc_r,
                           input_precision=PREC, out_dtype=ACC)
        for k0 in range(0, HD, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < HD
            u = tl.load(h_ptr + n[:, None] * HD + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            w_off = j[None, :] * HD + k[:, None]
            w_ok = k_ok[:, None] & j_ok[None, :]
            acc_g = tl.dot(u.to(OP), tl.load(wgh_ptr + w_off, mask=w_ok, other=0.0).to(OP), acc_g,
                           input_precision=PREC, out_dtype=ACC)
            acc_r = tl.dot(u.to(OP), tl.load(wrh_ptr + w_off, mask=w_ok, other=0.0).to(OP), acc_r,
                           input_precision=PREC, out_dtype=ACC)
        bias_g = (tl.load(bg_ptr + j, mask=j_ok, other=0.0).to(ACC)
                  + tl.load(noise_ptr + j, mask=j_ok, other=0.0).to(ACC))
        g = tl.maximum(_tanh(acc_g + bias_g[None, :]), 0.0)
        r = _tanh(acc_r + tl.load(br_ptr + j, mask=j_ok, other=0.0).to(ACC)[None, :])
        ok = n_ok[:, None] & j_ok[None, :]
        off = n[:, None] * HD + j[None, :]
        h_last = tl.load(h_ptr + off, mask=ok, other=0.0).to(ACC)
        tl.store(g_ptr + off, g, mask=ok)
        tl.store(r_ptr + off, r, mask=ok)
        tl.store(hout_ptr + off, g * r + (1.0 - g) * h_last, mask=ok)
        # Bias traces (u = 1).
        dg = tl.where(g > 0, 1.0 - g * g, 0.0)
        e_bg = tl.load(ebg_ptr + off, mask=ok, other=0.0)
        e_br = tl.load(ebr_ptr + off, mask=ok, other=0.0)
        if SAVE_OLD:
            tl.store(obg_ptr + off, e_bg, mask=ok)
            tl.store(obr_ptr + off, e_br, mask=ok)
        tl.store(ebg_ptr + off, e_bg.to(ACC) * (1.0 - g) + dg * (r - h_last), mask=ok)
        tl.store(ebr_ptr + off, e_br.to(ACC) * (1.0 - g) + (1.0 - r * r) * g, mask=ok)

    @jit
    def _eprop_trace_fwd_kernel(u_ptr, g_ptr, r_ptr, h_ptr, eg_ptr, er_ptr, og_ptr, or_ptr, HD, U, j_blocks, u_blocks,
                          SAVE_OLD: tl.constexpr, ACC: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_U: tl.constexpr):
        pid = tl.program_id(0)
        ub = pid % u_blocks                              # input tiles innermost: contiguous memory
        jb = (pid // u_blocks) % j_blocks
        n = pid // (u_blocks * j_blocks)
        j = jb * BLOCK_J + tl.arange(0, BLOCK_J)
        i = ub * BLOCK_U + tl.arange(0, BLOCK_U)
        j_ok, i_ok = j < HD, i < U
        vec = n * HD + j
        g = tl.load(g_ptr + vec, mask=j_ok, other=0.0)
        r = tl.load(r_ptr + vec, mask=j_ok, other=0.0)
        h_last = tl.load(h_ptr + vec, mask=j_ok, other=0.0).to(ACC)
        c_g = tl.where(g > 0, 1.0 - g * g, 0.0) * (r - h_last)   # g' Δ
        c_r = (1.0 - r * r) * g                                   # r' g
        u = tl.load(u_ptr + n * U + i, mask=i_ok, other=0.0).to(ACC)
        # The tile's first row as a 64-bit scalar offset (N Hd U may exceed 2**31), 32-bit within the tile.
        row0 = (n * HD + jb * BLOCK_J).to(tl.int64) * U
        eg_ptr += row0
        er_ptr += row0
        og_ptr += row0
        or_ptr += row0
        off = tl.arange(0, BLOCK_J)[:, None] * U + i[None, :]
        ok = j_ok[:, None] & i_ok[None, :]
        e_g = tl.load(eg_ptr + off, mask=ok, other=0.0)
        e_r = tl.load(er_ptr + off, mask=ok, other=0.0)
        if SAVE_OLD:
            tl.store(og_ptr + off, e_g, mask=ok)
            tl.store(or_ptr + off, e_r, mask=ok)
        keep = (1.0 - g)[:, None]
        tl.store(eg_ptr + off, e_g.to(ACC) * keep + c_g[:, None] * u[None, :], mask=ok)
        tl.store(er_ptr + off, e_r.to(ACC) * keep + c_r[:, None] * u[None, :], mask=ok)

    @jit
    def _eprop_trace_bwd_kernel(d_ptr, g_ptr, u_ptr, eg_ptr, er_ptr, ebg_ptr, ebr_ptr, dwg_ptr, dwr_ptr, dbg_ptr, dbr_ptr,
                          reg_ptr, N, HD, U, u_blocks, N_PER, BIAS: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_J: tl.constexpr, BLOCK_U: tl.constexpr):
        pid = tl.program_id(0)
        split = tl.program_id(1)                         # samples [split N_PER, (split + 1) N_PER)
        ub = pid % u_blocks
        jb = pid // u_blocks
        j = jb * BLOCK_J + tl.arange(0, BLOCK_J)
        i = ub * BLOCK_U + tl.arange(0, BLOCK_U)
        j_ok, i_ok = j < HD, i < U
        ok = j_ok[:, None] & i_ok[None, :]
        tile = j[:, None] * U + i[None, :]               # < Hd U: 32-bit
        acc_g = tl.zeros((BLOCK_J, BLOCK_U), dtype=ACC)
        acc_r = tl.zeros((BLOCK_J, BLOCK_U), dtype=ACC)
        reg = tl.load(reg_ptr)
        # Scalar 64-bit pointers to sample n's traces (N Hd U may exceed 2**31).
        first = (split * N_PER).to(tl.int64) * HD * U
        eg_p, er_p = eg_ptr + first, er_ptr + first
        # This split's whole batch sum in this program: each trace element read once, no atomics.
        for k in range(N_PER):
            n = split * N_PER + k
            valid = n < N
            d = tl.load(d_ptr + n * HD + j, mask=j_ok & valid, other=0.0).to(ACC)
            g = tl.load(g_ptr + n * HD + j, mask=j_ok & valid, other=0.0)
            l0 = tl.where(g > 0, reg * (1.0 - g * g), 0.0)       # λ H_g g'
            u = tl.load(u_ptr + n * U + i, mask=i_ok & valid, other=0.0).to(ACC)
            e_g = tl.load(eg_p + tile, mask=ok & valid, other=0.0).to(ACC)
            e_r = tl.load(er_p + tile, mask=ok & valid, other=0.0).to(ACC)
            eg_p += HD * U
            er_p += HD * U
            acc_g += d[:, None] * e_g + l0[:, None] * u[None, :]
            acc_r += d[:, None] * e_r
        tl.store(dwg_ptr + split * HD * U + tile, acc_g, mask=ok)   # this split's partial sum
        tl.store(dwr_ptr + split * HD * U + tile, acc_r, mask=ok)
        if BIAS:
            if (ub == 0) & (split == 0):
                db_g = tl.zeros((BLOCK_J,), dtype=ACC)
                db_r = tl.zeros((BLOCK_J,), dtype=ACC)
                for n in range(N):
                    vec = n * HD + j
                    d = tl.load(d_ptr + vec, mask=j_ok, other=0.0).to(ACC)
                    g = tl.load(g_ptr + vec, mask=j_ok, other=0.0)
                    db_g += d * tl.load(ebg_ptr + vec, mask=j_ok, other=0.0).to(ACC) \
                        + tl.where(g > 0, reg * (1.0 - g * g), 0.0)
                    db_r += d * tl.load(ebr_ptr + vec, mask=j_ok, other=0.0).to(ACC)
                tl.store(dbg_ptr + j, db_g, mask=j_ok)
                tl.store(dbr_ptr + j, db_r, mask=j_ok)

    @jit
    def _eprop_input_grad_kernel(d_ptr, g_ptr, r_ptr, h_ptr, wg_ptr, wr_ptr, out_ptr, reg_ptr, N, HD, U,
                           CARRY: tl.constexpr, ACC: tl.constexpr, OP: tl.constexpr, PREC: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_J: tl.constexpr):
        """out = ((δΔ + λH_g) g') W_g + (δ g r') W_r (+ δ (1 - g) when CARRY: the dh_last carry).

        For fp16/bf16 (OP) the fp32 coefficients are rounded to the storage dtype for the tensor-core
        dot: a relative error of the order of the output's own rounding.
        """
        i = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        i_ok, n_ok = i < U, n < N
        acc = tl.zeros((BLOCK_N, BLOCK_U), dtype=ACC)
        reg = tl.load(reg_ptr)
        for j0 in range(0, HD, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            j_ok = j < HD
            vok = n_ok[:, None] & j_ok[None, :]
            vec = n[:, None] * HD + j[None, :]
            d = tl.load(d_ptr + vec, mask=vok, other=0.0).to(ACC)
            g = tl.load(g_ptr + vec, mask=vok, other=0.0)
            r = tl.load(r_ptr + vec, mask=vok, other=0.0)
            h_last = tl.load(h_ptr + vec, mask=vok, other=0.0).to(ACC)
            a_g = tl.where(g > 0, (d * (r - h_last) + reg) * (1.0 - g * g), 0.0)
            a_r = d * g * (1.0 - r * r)
            w_off = j[:, None] * U + i[None, :]
            w_ok = j_ok[:, None] & i_ok[None, :]
            acc = tl.dot(a_g.to(OP), tl.load(wg_ptr + w_off, mask=w_ok, other=0.0).to(OP), acc,
                         input_precision=PREC, out_dtype=ACC)
            acc = tl.dot(a_r.to(OP), tl.load(wr_ptr + w_off, mask=w_ok, other=0.0).to(OP), acc,
                         input_precision=PREC, out_dtype=ACC)
        ok = n_ok[:, None] & i_ok[None, :]
        off = n[:, None] * U + i[None, :]
        if CARRY:  # U == HD here
            d = tl.load(d_ptr + off, mask=ok, other=0.0).to(ACC)
            acc += d * (1.0 - tl.load(g_ptr + off, mask=ok, other=0.0))
        tl.store(out_ptr + off, acc, mask=ok)


# ---------------------------------------------------------------- launch shapes

def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _clamp_pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, _pow2(n)))


def trace_blocks(hidden: int, inputs: int, interpret: bool, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_J, BLOCK_U, num_warps) of the trace kernels.

    On a GPU 1024 elements per tile (8 values a thread per tile with 4 warps): the forward keeps two
    tiles and their 64-bit addresses live, the backward two accumulators and two loaded tiles; at
    2048 ptxas for sm_90 needs 253-255 registers and spills in the backward. The interpreter costs
    ~1.5 ms per program whatever its size, so there one program takes up to 64 x 64.
    """
    if interpret:
        return _clamp_pow2(hidden, 1, 64), _clamp_pow2(inputs, 1, 64), 4
    block_u = _clamp_pow2(inputs, 16, 128 if not backward else 64)
    return _clamp_pow2(hidden, 1, 1024 // block_u), block_u, 4


def gemm_blocks(n: int, hidden: int, interpret: bool) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_J, BLOCK_K) of the two small GEMM kernels (the input-gradient kernel uses
    BLOCK_J output columns and BLOCK_K as its reduction block); every ``tl.dot`` dimension is >= 16
    (sm_90 needs it; the interpreter would accept less). On a GPU 16 output columns a program for
    parallelism at Hd = 512..1024, and at most 32 samples x 32 K a block: fp32 "ieee" dots run on
    FMA units with the operands in registers, and 64 x 64 blocks spill for sm_90."""
    if interpret:
        return _clamp_pow2(n, 16, 64), _clamp_pow2(hidden, 16, 64), 64
    return _clamp_pow2(n, 16, 32), 16, 32


def batch_splits(n: int, programs: int, sms: int, tile_elems: int) -> int:
    """How many parts the backward's batch sum is split into: enough (program, part) pairs for about
    four programs per SM, each part at least 16 samples (the partials add 1/16 of the traces' bytes
    at most), and the partial offsets within 32 bits."""
    want = -(-4 * sms // programs)
    return max(1, min(n // 16, want, (2 ** 31 - 1) // max(tile_elems, 1)))


def _sm_count(t: torch.Tensor) -> int:
    if not plan_for_gpu(t):
        return 1  # the interpreter: one program per tile is the cheapest
    return sm_count(t.device)


def _sum_splits(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(splits, Hd, U) partials -> (Hd, U) in ``dtype``; a view when there is one split (deterministic)."""
    if part.shape[0] == 1:
        return part[0]
    out = dispatch.empty(part.shape[1:], dtype=dtype, device=part.device)
    if dtype == part.dtype:
        torch.sum(part, dim=0, out=out)
    else:
        out.copy_(part.sum(dim=0))
    return out


# ---------------------------------------------------------------- Triton path

def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _op(dtype: torch.dtype):
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}.get(dtype, _acc(dtype))


def _versions(traces) -> tuple[int, ...]:
    return tuple(t._version for t in traces)


def _key(traces) -> tuple:
    return (traces[0].device,) + tuple(t.data_ptr() for t in traces)


class _TraceState:
    """What one step's backward needs of the traces: the live buffers at ``versions``, or a copy."""

    __slots__ = ("traces", "versions", "copy", "done", "__weakref__")

    def __init__(self, traces, versions):
        self.traces, self.versions, self.copy, self.done = traces, versions, None, False

    def pending(self) -> bool:
        return not self.done and self.copy is None and _versions(self.traces) == self.versions


_pending: dict[tuple, weakref.ref] = {}   # trace buffers -> state of the latest step that updated them
_lock = threading.Lock()


def _forward_triton(x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, gate_noise, traces, old):
    n, i = x.shape
    hd = h_last.shape[1]
    interp = not plan_for_gpu(x)
    acc, prec = _acc(x.dtype), "ieee"  # fp32/fp64 tiles: tf32 would cost ~1e-3 relative error
    keep_dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    g = dispatch.empty((n, hd), dtype=keep_dt, device=x.device)
    r = dispatch.empty((n, hd), dtype=keep_dt, device=x.device)
    h = dispatch.empty((n, hd), dtype=x.dtype, device=x.device)
    e_gx, e_gh, e_bg, e_rx, e_rh, e_br = traces
    o = old if old is not None else traces  # never written when SAVE_OLD is off
    bn, bj, bk = gemm_blocks(n, hd, interp)
    _eprop_gates_kernel[(cdiv(hd, bj), cdiv(n, bn))](
        x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, gate_noise, g, r, h, e_bg, e_br, o[2], o[5], n, i, hd,
        SAVE_OLD=old is not None, ACC=acc, OP=_op(x.dtype), PREC=prec, BLOCK_N=bn, BLOCK_J=bj, BLOCK_K=bk,
        num_warps=4)
    for u, e_g, e_r, o_g, o_r in ((x, e_gx, e_rx, o[0], o[3]), (h_last, e_gh, e_rh, o[1], o[4])):
        size = u.shape[1]
        bj, bu, warps = trace_blocks(hd, size, interp)
        j_blocks, u_blocks = cdiv(hd, bj), cdiv(size, bu)
        _eprop_trace_fwd_kernel[(n * j_blocks * u_blocks,)](
            u, g, r, h_last, e_g, e_r, o_g, o_r, hd, size, j_blocks, u_blocks,
            SAVE_OLD=old is not None, ACC=acc, BLOCK_J=bj, BLOCK_U=bu, num_warps=warps)
    return h, g, r


def _backward_triton(dh, x, h_last, w_gx, w_gh, w_rx, w_rh, g, r, traces, reg: float, needs):
    n, i = x.shape
    hd = h_last.shape[1]
    interp = not plan_for_gpu(x)
    acc, prec = _acc(x.dtype), "ieee"  # fp32/fp64 tiles: tf32 would cost ~1e-3 relative error
    dev, dt = x.device, x.dtype
    need_x, need_h, need_wgx, need_wgh, need_bg, need_wrx, need_wrh, need_br = needs
    e_gx, e_gh, e_bg, e_rx, e_rh, e_br = traces
    # λ as a one-element tensor: a python float argument would reach the kernels as fp32.
    reg_t = torch.full((1,), reg, dtype=g.dtype, device=dev)
    grads = dict.fromkeys(("x", "h", "w_gx", "w_gh", "b_g", "w_rx", "w_rh", "b_r"))
    need_b = need_bg or need_br
    if need_b:
        grads["b_g"] = dispatch.empty((hd,), dtype=dt, device=dev)
        grads["b_r"] = dispatch.empty((hd,), dtype=dt, device=dev)
    for key, u, e_g, e_r, need in (("x", x, e_gx, e_rx, need_wgx or need_wrx),
                                   ("h", h_last, e_gh, e_rh, need_wgh or need_wrh)):
        bias_here = need_b and key == "x"  # the x launch also writes the bias gradients
        if not (need or bias_here):
            continue
        size = u.shape[1]
        bj, bu, warps = trace_blocks(hd, size, interp, backward=True)
        u_blocks = cdiv(size, bu)
        programs = cdiv(hd, bj) * u_blocks
        splits = batch_splits(n, programs, _sm_count(x), hd * size)
        n_per = cdiv(n, splits)
        # One split: the kernel writes the gradients. Several: per-split partials, summed below.
        part_dt = dt if splits == 1 else g.dtype
        dw_g = dispatch.empty((splits, hd, size), dtype=part_dt, device=dev)
        dw_r = dispatch.empty((splits, hd, size), dtype=part_dt, device=dev)
        db_g, db_r = (grads["b_g"], grads["b_r"]) if bias_here else (dw_g, dw_r)
        _eprop_trace_bwd_kernel[(programs, splits)](
            dh, g, u, e_g, e_r, e_bg, e_br, dw_g, dw_r, db_g, db_r, reg_t, n, hd, size, u_blocks, n_per,
            BIAS=bias_here, ACC=acc, BLOCK_J=bj, BLOCK_U=bu, num_warps=warps)
        grads["w_g" + key], grads["w_r" + key] = (_sum_splits(t, dt) for t in (dw_g, dw_r))
    bn, bu, bk = gemm_blocks(n, hd, interp)
    for key, w_g, w_r, need in (("x", w_gx, w_rx, need_x), ("h", w_gh, w_rh, need_h)):
        if not need:
            continue
        size = w_g.shape[1]
        out = dispatch.empty((n, size), dtype=dt, device=dev)
        _eprop_input_grad_kernel[(cdiv(size, bu), cdiv(n, bn))](
            dh, g, r, h_last, w_g, w_r, out, reg_t, n, hd, size, CARRY=key == "h", ACC=acc, OP=_op(dt),
            PREC=prec, BLOCK_N=bn, BLOCK_U=bu, BLOCK_J=bk, num_warps=4)
        grads[key] = out
    return grads


class _EpropFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, gate_noise, reg: float, traces, work,
                record: bool):
        x, h_last, w_gx, w_gh, w_rx, w_rh = (t.contiguous() for t in (x, h_last, w_gx, w_gh, w_rx, w_rh))
        b_g, b_r, gate_noise = b_g.contiguous(), b_r.contiguous(), gate_noise.contiguous()
        key = _key(work)
        with _lock:
            ref = _pending.pop(key, None)
            prev = ref() if ref is not None else None
            # Copy-on-write: the previous step on these traces still needs them for its backward.
            old = None
            if prev is not None and prev.pending():
                old = tuple(dispatch.empty(t.shape, dtype=t.dtype, device=t.device) for t in work)
            h, g, r = _forward_triton(x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, gate_noise, work, old)
            for t in work:
                torch.autograd.graph.increment_version(t)  # the kernels wrote them behind autograd's back
            if old is not None:
                prev.copy = old
            state = None  # without a graph there is no backward to keep anything for
            if record:
                state = _TraceState(work, _versions(work))
                _pending[key] = weakref.ref(state)
                if len(_pending) > 256:  # forget trace buffers whose last step's graph is gone
                    for k in [k for k, r in _pending.items() if r() is None]:
                        del _pending[k]
        for dst, src in zip(traces, work):
            if dst is not src:  # non-contiguous trace: updated on a contiguous copy, written back
                dst.copy_(src)
        ctx.state, ctx.reg = state, reg
        ctx.save_for_backward(x, h_last, w_gx, w_gh, w_rx, w_rh, g, r)
        openings = (g > 0).to(x.dtype).mean()
        ctx.mark_non_differentiable(openings)
        return h, openings

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, _):
        x, h_last, w_gx, w_gh, w_rx, w_rh, g, r = ctx.saved_tensors
        state = ctx.state
        with _lock:
            if state.copy is not None:
                traces = state.copy
            elif _versions(state.traces) == state.versions:
                traces = state.traces
            else:
                raise RuntimeError(
                    "eprop_gate_l0rd: the eligibility traces were modified in place (e.g. reset_state(), or "
                    "a second backward after a later step) between this step's forward and its backward; "
                    "run the backward before changing the traces")
        needs = ctx.needs_input_grad[:8]
        grads = _backward_triton(dh.contiguous(), x, h_last, w_gx, w_gh, w_rx, w_rh, g, r, traces, ctx.reg, needs)
        with _lock:
            state.copy, state.done = None, True  # the copy is freed; no later forward copies for this step
        out = [grads[k] if need else None
               for k, need in zip(("x", "h", "w_gx", "w_gh", "b_g", "w_rx", "w_rh", "b_r"), needs)]
        return (*out, None, None, None, None, None)


# ---------------------------------------------------------------- public op

def _check_args(x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, traces, reg, gate_noise) -> None:
    dispatch.check_tensor("x", x, shape=(None, None))
    n, i = x.shape
    if n < 1 or i < 1:
        raise ValueError(f"x: expected shape (N >= 1, I >= 1), received {tuple(x.shape)}")
    dispatch.check_tensor("h_last", h_last, shape=(n, None))
    hd = h_last.shape[1]
    if hd < 1:
        raise ValueError(f"h_last: expected shape ({n}, Hd >= 1), received {tuple(h_last.shape)}")
    for name, t, shape in (("w_gx", w_gx, (hd, i)), ("w_gh", w_gh, (hd, hd)), ("b_g", b_g, (hd,)),
                           ("w_rx", w_rx, (hd, i)), ("w_rh", w_rh, (hd, hd)), ("b_r", b_r, (hd,)),
                           ("gate_noise", gate_noise, (hd,))):
        dispatch.check_tensor(name, t, shape=shape)
    if not isinstance(traces, (tuple, list)) or len(traces) != 6:
        got = type(traces).__name__ + (f" of length {len(traces)}" if isinstance(traces, (tuple, list)) else "")
        raise ValueError(f"traces: expected a tuple of 6 tensors ({', '.join(TRACE_NAMES)}), received {got}")
    shapes = ((n, hd, i), (n, hd, hd), (n, hd), (n, hd, i), (n, hd, hd), (n, hd))
    for k, (name, t, shape) in enumerate(zip(TRACE_NAMES, traces, shapes)):
        dispatch.check_tensor(f"traces[{k}] ({name})", t, shape=shape)
    dispatch.check_same("x", x, h_last=h_last, w_gx=w_gx, w_gh=w_gh, b_g=b_g, w_rx=w_rx, w_rh=w_rh, b_r=b_r,
                        gate_noise=gate_noise,
                        **{f"traces[{k}] ({name})": t for k, (name, t) in enumerate(zip(TRACE_NAMES, traces))})
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not math.isfinite(reg):
        raise ValueError(f"reg: expected a finite python number (the L0 weight λ), received {reg!r}")


def eprop_gate_l0rd(x: torch.Tensor, h_last: torch.Tensor, w_gx: torch.Tensor, w_gh: torch.Tensor,
                    b_g: torch.Tensor, w_rx: torch.Tensor, w_rh: torch.Tensor, b_r: torch.Tensor,
                    traces: tuple[torch.Tensor, ...], reg: float, gate_noise: torch.Tensor):
    """One GateL0RD step with e-prop eligibility traces (§9.1); the traces are updated in place.

    Args:
        x: input (N, I).
        h_last: previous hidden state (N, Hd).
        w_gx, w_gh, b_g: gate weights (Hd, I), (Hd, Hd) and bias (Hd,).
        w_rx, w_rh, b_r: candidate weights (Hd, I), (Hd, Hd) and bias (Hd,).
        traces: (e_gx (N, Hd, I), e_gh (N, Hd, Hd), e_bg (N, Hd), e_rx (N, Hd, I), e_rh (N, Hd, Hd),
            e_br (N, Hd)), updated in place on every call (also under ``no_grad``). Pass the same
            buffers every step (a module's): a step's backward then keeps a copy of them only if a
            later step overwrote them first (module docstring).
        reg: λ, the weight of the L0 surrogate (a python number).
        gate_noise: (Hd,) noise added to the gate pre-activation, drawn by the caller.
    Returns:
        (h (N, Hd), openings: 0-dim mean of 1[g > 0], not differentiable). h is differentiable in x,
        h_last and the six weights/biases with upstream's hybrid e-prop/BPTT gradient. All tensors
        share one dtype and device; fp16/bf16 compute in fp32.
    Raises:
        ValueError naming the argument on a wrong type, shape, dtype or device.
        RuntimeError (Triton path, in backward) when the traces were changed by something else
        between a step's forward and its backward.
    """
    _check_args(x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, traces, reg, gate_noise)
    tensors = (x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, gate_noise, *traces)
    if not dispatch.use_triton(*tensors):
        return eprop_gate_l0rd_reference(x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, traces, reg, gate_noise)
    work = tuple(t if t.is_contiguous() else t.contiguous() for t in traces)
    # A step whose graph is recorded may need its traces kept for its backward (copy-on-write).
    record = torch.is_grad_enabled() and any(t.requires_grad for t in tensors[:8])
    return _EpropFunction.apply(x, h_last, w_gx, w_gh, b_g, w_rx, w_rh, b_r, gate_noise, float(reg),
                                tuple(traces), work, record)
