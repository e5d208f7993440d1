"""GateL0RD cell (§9.3), its e-prop function (§9.1) and ReTanh (§9.2): the maths against float64
oracles written from the spec, e-prop = exact gradient where it must be, traces as explicit state,
bad arguments, and (with LOCI_FAST_UPSTREAM) parity with upstream's modules including their draws."""
import os

import pytest
import torch

from loci_fast.kernels import eprop_gate_l0rd
from loci_fast.blocks.gate_l0rd import EpropTraces, GateL0RD
from loci_fast.blocks.retanh import ReTanh, retanh
from tests.model.test_blocks import upstream_modules
from tests.model.upstream_draws import record_draws, rel_err, take

UPSTREAM = os.environ.get("LOCI_FAST_UPSTREAM")
needs_upstream = pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")


def weights(gen, i, hd, dtype=torch.float64, bias=0.3):
    r = lambda *s: (torch.randn(*s, generator=gen, dtype=dtype) / s[-1] ** 0.5)
    return [r(hd, i), r(hd, hd), bias + 0.5 * torch.randn(hd, generator=gen, dtype=dtype),
            r(hd, i), r(hd, hd), 0.5 * torch.randn(hd, generator=gen, dtype=dtype)]


def oracle_step(x, h, w, traces, noise):
    """§9.1 written out per index (float64): new h, new traces, openings, and the quantities backward uses."""
    w_gx, w_gh, b_g, w_rx, w_rh, b_r = w
    g = torch.relu(torch.tanh(x @ w_gx.T + h @ w_gh.T + b_g + noise))
    r = torch.tanh(x @ w_rx.T + h @ w_rh.T + b_r)
    hg = (g > 0).to(x.dtype)
    dg, dr, delta = (1 - g * g) * hg, 1 - r * r, r - h
    e_gx, e_gh, e_bg, e_rx, e_rh, e_br = traces
    new = (
        e_gx * (1 - g)[..., None] + torch.einsum("nj,ni->nji", dg * delta, x),
        e_gh * (1 - g)[..., None] + torch.einsum("nj,ni->nji", dg * delta, h),
        e_bg * (1 - g) + dg * delta,
        e_rx * (1 - g)[..., None] + torch.einsum("nj,ni->nji", dr * g, x),
        e_rh * (1 - g)[..., None] + torch.einsum("nj,ni->nji", dr * g, h),
        e_br * (1 - g) + dr * g,
    )
    return g * r + (1 - g) * h, new, hg.mean(), dict(g=g, hg=hg, dg=dg, dr=dr, delta=delta, x=x, h=h)


def oracle_backward(delta_h, saved, traces, w, reg):
    """§9.1 backward: parameter gradients of one step and (dx, dh_last)."""
    s = saved
    w_gx, w_gh, _, w_rx, w_rh, _ = w
    l0 = reg * s["hg"]
    e_gx, e_gh, e_bg, e_rx, e_rh, e_br = traces
    grads = [
        torch.einsum("nj,nji->ji", delta_h, e_gx) + torch.einsum("nj,ni->ji", l0 * s["dg"], s["x"]),
        torch.einsum("nj,nji->ji", delta_h, e_gh) + torch.einsum("nj,ni->ji", l0 * s["dg"], s["h"]),
        (delta_h * e_bg + l0 * s["dg"]).sum(0),
        torch.einsum("nj,nji->ji", delta_h, e_rx),
        torch.einsum("nj,nji->ji", delta_h, e_rh),
        (delta_h * e_br).sum(0),
    ]
    d_gate = (delta_h * s["delta"] + l0) * s["dg"]
    d_cand = delta_h * s["g"] * s["dr"]
    dx = d_gate @ w_gx + d_cand @ w_rx
    dh = delta_h * (1 - s["g"]) + d_gate @ w_gh + d_cand @ w_rh
    return grads, dx, dh


@pytest.mark.parametrize("n,i,hd", [(3, 5, 7), (1, 4, 4)])
def test_three_step_recursion_against_oracle(gen, n, i, hd):
    """Values, traces and all gradients of a 3-step chain in one autograd graph (the hybrid e-prop/BPTT
    gradient: each step's weights see that step's traces, dh_{t-1} carries BPTT) against the oracle."""
    reg = 0.03
    w = weights(gen, i, hd)
    leaves = [t.clone().requires_grad_() for t in w]
    xs = [torch.randn(n, i, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3)]
    h0 = torch.randn(n, hd, generator=gen, dtype=torch.float64).requires_grad_()
    noises = [0.2 * torch.randn(hd, generator=gen, dtype=torch.float64) for _ in range(3)]
    upstream_weights = [torch.randn(n, hd, generator=gen, dtype=torch.float64) for _ in range(3)]
    traces = EpropTraces(*(torch.randn(*t.shape, generator=gen, dtype=torch.float64) * 0.1
                           for t in EpropTraces.zeros(n, i, hd, dtype=torch.float64)))
    oracle_traces = [t.clone() for t in traces]

    h, loss, hs, saves = h0, 0.0, [], []
    for t in range(3):
        h, openings = eprop_gate_l0rd(xs[t], h, *leaves, traces, reg, noises[t])
        oh, oracle_traces_new, o_open, saved = oracle_step(xs[t].detach(), (hs[-1] if hs else h0).detach(), w,
                                                            oracle_traces, noises[t])
        torch.testing.assert_close(h, oh, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(openings, o_open)
        for ours, ref in zip(traces, oracle_traces_new):
            torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)  # updated in place
        saves.append((saved, oracle_traces_new))
        oracle_traces = [t.clone() for t in oracle_traces_new]
        hs.append(oh)
        loss = loss + (upstream_weights[t] * h).sum()
    grads = torch.autograd.grad(loss, leaves + xs + [h0])

    # oracle backward: walk the chain from the end, δ_t = direct term + what step t+1 sends back
    expect = [torch.zeros_like(t) for t in w]
    dxs, carry = [None] * 3, torch.zeros(n, hd, dtype=torch.float64)
    for t in reversed(range(3)):
        saved, tr = saves[t]
        g, dx, carry = oracle_backward(upstream_weights[t] + carry, saved, tr, w, reg)
        expect = [a + b for a, b in zip(expect, g)]
        dxs[t] = dx
    for ours, ref in zip(grads, expect + dxs + [carry]):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_single_step_from_zero_traces_is_the_exact_gradient(gen):
    """With zero traces, one step's e-prop gradient is the true gradient of L + λ·Σ g (independent check:
    plain autograd through the written-out forward)."""
    n, i, hd, reg = 4, 6, 5, 0.07
    w = [t.requires_grad_() for t in weights(gen, i, hd)]
    x = torch.randn(n, i, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(n, hd, generator=gen, dtype=torch.float64, requires_grad=True)
    noise = 0.1 * torch.randn(hd, generator=gen, dtype=torch.float64)
    c = torch.randn(n, hd, generator=gen, dtype=torch.float64)
    traces = EpropTraces.zeros(n, i, hd, dtype=torch.float64)
    h, _ = eprop_gate_l0rd(x, h0, *w, traces, reg, noise)
    ours = torch.autograd.grad((c * h).sum(), w + [x, h0])
    g = torch.relu(torch.tanh(x @ w[0].T + h0 @ w[1].T + w[2] + noise))
    r = torch.tanh(x @ w[3].T + h0 @ w[4].T + w[5])
    exact = torch.autograd.grad((c * (g * r + (1 - g) * h0)).sum() + reg * g.sum(), w + [x, h0])
    assert (g == 0).any() and (g > 0).any()  # both gate regimes are exercised
    for a, b in zip(ours, exact):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_cell_output_noise_and_state(gen):
    torch.manual_seed(3)
    cell = GateL0RD(5, 6, 4, reg_lambda=1e-3, gate_noise_level=0.5)
    x = torch.randn(3, 5, generator=gen)
    h0, traces = cell.initial_state(3)
    assert h0.shape == (3, 6) and [t.shape for t in traces] == [(3, 6, 5), (3, 6, 6), (3, 6), (3, 6, 5), (3, 6, 6),
                                                                (3, 6)]
    # the output reads the new h; the injected noise acts as a shift of b_g
    noise = torch.randn(6, generator=gen)
    y, h, openings = cell(x, h0, cell.initial_state(3)[1], gate_noise=noise)
    p = torch.tanh(x @ cell.w_px.T + h @ cell.w_ph.T + cell.b_p)
    o = torch.sigmoid(x @ cell.w_ox.T + h @ cell.w_oh.T + cell.b_o)
    torch.testing.assert_close(y, o * p)
    with torch.no_grad():
        cell.b_g += noise
    torch.testing.assert_close(cell(x, h0, cell.initial_state(3)[1], gate_noise=torch.zeros(6))[1], h)
    # without injection: one normal (Hd,) draw with std gate_noise_level per call, in eval mode too
    cell.eval()
    torch.manual_seed(11)
    drawn = torch.normal(0.0, 0.5, size=(6,))
    torch.manual_seed(11)
    with torch.no_grad():
        _, h_drawn, _ = cell(x, h0, cell.initial_state(3)[1])
        _, h_inj, _ = cell(x, h0, cell.initial_state(3)[1], gate_noise=drawn)
    torch.testing.assert_close(h_drawn, h_inj)
    # traces update in place under no_grad as well, and only the passed-in ones
    mine, other = cell.initial_state(3)[1], cell.initial_state(3)[1]
    with torch.no_grad():
        cell(x, torch.randn(3, 6, generator=gen), mine, gate_noise=noise)
    assert all(t.abs().sum() > 0 for t in mine)
    assert all(t.abs().sum() == 0 for t in other)
    assert not cell.state_dict().keys() - {f"{a}_{b}" for a in "wb" for b in ("gx", "gh", "g", "rx", "rh", "r",
                                                                                 "px", "ph", "p", "ox", "oh", "o")}
    assert len(list(cell.buffers())) == 0  # no hidden state in the module


def test_bad_arguments(gen):
    cell = GateL0RD(5, 6, 4)
    x = torch.randn(3, 5, generator=gen)
    h0, traces = cell.initial_state(3)
    with pytest.raises(ValueError, match="x: expected"):
        cell(torch.randn(3, 4), h0, traces)
    with pytest.raises(ValueError, match="h_last: expected"):
        cell(x, torch.zeros(2, 6), traces)
    with pytest.raises(ValueError, match="traces.gh: expected"):
        cell(x, h0, traces._replace(gh=torch.zeros(3, 6, 5)))
    with pytest.raises(ValueError, match=r"traces.gx: expected \(3, 6, 5\), received \(2, 6, 5\)"):
        cell(x, h0, cell.initial_state(2)[1])
    with pytest.raises(ValueError, match="traces: expected 6"):
        cell(x, h0, traces[:5])
    with pytest.raises(ValueError, match="gate_noise: expected"):
        cell(x, h0, traces, gate_noise=torch.zeros(5))
    with pytest.raises(ValueError, match="noise: expected shape"):
        ReTanh(0.1, 0.1).train()(x, noise=torch.zeros(3, 4))


def test_retanh(gen):
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    g, openings = retanh(x, 0.2)
    torch.testing.assert_close(g, torch.relu(torch.tanh(x)))
    torch.testing.assert_close(openings, (x > 0).double().mean())
    (dx,) = torch.autograd.grad((c * g).sum(), x)
    # the gradient of (c·g + 0.2·g) on open gates, 0 on closed ones
    torch.testing.assert_close(dx, (c + 0.2) * (1 - torch.tanh(x) ** 2) * (x > 0))
    mod = ReTanh(0.0, noise_level=0.5)
    noise = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(mod.train()(x, noise)[0], torch.relu(torch.tanh(x + 0.5 * noise)))
    torch.manual_seed(5)
    drawn = torch.randn_like(x)
    torch.manual_seed(5)
    torch.testing.assert_close(mod(x)[0], mod(x, drawn)[0])
    state = torch.get_rng_state()
    torch.testing.assert_close(mod.eval()(x)[0], g)  # no noise and no draw in eval
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------- upstream parity (optional)

@needs_upstream
@pytest.mark.parametrize("n,i,hd,o", [(4, 6, 8, 5), (2, 9, 9, 9)])
def test_upstream_cell_parity(gen, n, i, hd, o):
    """Upstream's EpropGateL0rd, same weights, 4 steps in one graph, its gate-noise draws (std 0.3)
    recorded and injected: outputs, h, traces, openings within 1e-5 relative, gradients within 1e-4."""
    with upstream_modules(UPSTREAM) as import_upstream:
        up = import_upstream("nn.eprop_gate_l0rd").EpropGateL0rd(i, hd, o, batch_size=n, reg_lambda=1e-3,
                                                                 gate_noise_level=0.3)
        ours = GateL0RD(i, hd, o, reg_lambda=1e-3, gate_noise_level=0.3)
        ours.load_state_dict(up.state_dict(), strict=True)
        with torch.no_grad():  # biases away from zero so both gate regimes occur
            for a, b in ((up.b_g, ours.b_g), (up.b_o, ours.b_o)):
                v = 0.5 * torch.randn(a.shape, generator=gen)
                a.copy_(v), b.copy_(v)
        xs = [torch.randn(n, i, generator=gen) for _ in range(4)]
        h0 = torch.randn(n, hd, generator=gen)
        cs = [torch.randn(n, o, generator=gen) for _ in range(4)]
        ch = torch.randn(n, hd, generator=gen)

        def run(model):
            """4 steps in one graph -> per-step (y, h, openings, traces), the gradients, the gate noises."""
            x_leaves = [x.clone().requires_grad_() for x in xs]
            h_leaf = h0.clone().requires_grad_()
            h, traces, outs, noises, loss = h_leaf, ours.initial_state(n)[1], [], [], 0.0
            for t in range(4):
                if model is up:
                    with record_draws("normal") as log:
                        y, h = up(x_leaves[t], h)
                    noises.append(take(log, "normal"))
                    assert noises[-1].abs().sum() > 0 and not log  # one (Hd,) draw per call, nothing else
                    openings, trace_values = up.openings, [up.e_w_gx, up.e_w_gh, up.e_b_g, up.e_w_rx, up.e_w_rh,
                                                           up.e_b_r]
                else:
                    y, h, openings = ours(x_leaves[t], h, traces, gate_noise=up_noises[t])
                    trace_values = traces
                outs.append((y, h, float(openings.detach()), [v.detach().clone() for v in trace_values]))
                loss = loss + (cs[t] * y).sum() + (ch * h).sum() * 0.1
            return outs, torch.autograd.grad(loss, list(model.parameters()) + x_leaves + [h_leaf]), noises

        up_outs, up_grads, up_noises = run(up)
        outs, grads, _ = run(ours)
        for (y, h, op, tr), (uy, uh, uop, utr) in zip(outs, up_outs):
            assert rel_err(y, uy) < 1e-5 and rel_err(h, uh) < 1e-5 and op == uop
            assert all(rel_err(a, b) < 1e-5 for a, b in zip(tr, utr))
        assert 0 < up_outs[-1][2] < 1
        for a, b in zip(grads, up_grads):
            assert rel_err(a, b) < 1e-4


@needs_upstream
def test_upstream_retanh_parity(gen):
    with upstream_modules(UPSTREAM) as import_upstream:
        up = import_upstream("nn.eprop_gate_l0rd").ReTanh(1e-2, 0.4).train()
        ours = ReTanh(1e-2, 0.4).train()
        x = torch.randn(16, 2, generator=gen) + 0.3
        c = torch.randn(16, 2, generator=gen)
        xu, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        with record_draws("randn_like") as log:
            gu = up(xu)
        go, openings = ours(xo, noise=take(log, "randn_like"))
        assert rel_err(go, gu) < 1e-6 and float(openings) == up.openings
        (du,), (do,) = torch.autograd.grad((c * gu).sum(), xu), torch.autograd.grad((c * go).sum(), xo)
        assert rel_err(do, du) < 1e-5


def test_saves_trace_copies_only_when_a_graph_is_built(gen):
    """Backward needs this step's traces (the next step overwrites them): the reference saves copies
    with grad on, nothing under no_grad (evaluation must not pay the memory). The Triton path copies
    only when a later step overwrites them (tests/kernels/test_eprop.py)."""
    from loci_fast.kernels import use_backend

    with use_backend("reference"):
        _check_saved_copies(gen)


def _check_saved_copies(gen):
    cell = GateL0RD(5, 6, 6)
    x = torch.randn(3, 5, generator=gen)
    h0, traces = cell.initial_state(3)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        with torch.no_grad():
            cell(x, h0, traces, gate_noise=torch.zeros(6))
        assert saved == []
        cell(x, h0, traces, gate_noise=torch.zeros(6))
    assert saved.count((3, 6, 5)) >= 2 and saved.count((3, 6, 6)) >= 2
