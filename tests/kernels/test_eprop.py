"""eprop_gate_l0rd: Triton (interpreted on the CPU) against the float64 reference, the reference against
autograd and upstream, and the copy-on-write keeping of the traces for the backward."""
from __future__ import annotations

import os

import pytest
import torch

from loci_fast.kernels import eprop_gate_l0rd, eprop_gate_l0rd_reference, use_backend
from loci_fast.kernels import eprop

from .helpers import TOL, assert_close, run_reference, run_triton

WEIGHTS = ("w_gx", "w_gh", "b_g", "w_rx", "w_rh", "b_r")
LEAVES = ("x", "h_last") + WEIGHTS


def _inputs(gen, n, hd, i):
    """Fresh random float64 inputs at upstream's scales: weights U(-b, b) as §9.3 (biases random, so
    some gates are closed), h_last in (-1, 1), traces and noise random, never zero."""
    def uni(*shape, b):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * b

    b_ih, b_hh = (6 / (i + hd)) ** 0.5, (3 / hd) ** 0.5
    t = {"x": torch.randn(n, i, generator=gen, dtype=torch.float64),
         "h_last": uni(n, hd, b=0.9),
         "w_gx": uni(hd, i, b=b_ih), "w_gh": uni(hd, hd, b=b_hh),
         "b_g": torch.randn(hd, generator=gen, dtype=torch.float64),
         "w_rx": uni(hd, i, b=b_ih), "w_rh": uni(hd, hd, b=b_hh),
         "b_r": torch.randn(hd, generator=gen, dtype=torch.float64)}
    shapes = ((n, hd, i), (n, hd, hd), (n, hd), (n, hd, i), (n, hd, hd), (n, hd))
    traces = tuple(torch.randn(*s, generator=gen, dtype=torch.float64) * 0.5 for s in shapes)
    noise = torch.randn(hd, generator=gen, dtype=torch.float64) * 0.1
    reg = float(torch.rand((), generator=gen, dtype=torch.float64)) * 0.5 + 0.05
    return t, traces, reg, noise


def _step(fn, t, traces, reg, noise, grad_out, run):
    """One step under ``run``: (h, openings, grads of the 8 leaves in LEAVES order)."""
    leaves = [t[k] for k in LEAVES]

    def fwd_bwd():
        h, openings = fn(*leaves, traces, reg, noise)
        return h, openings, torch.autograd.grad(h, leaves, grad_out.to(h.dtype))

    return run(fwd_bwd)


def _check(t64, traces64, reg, noise64, dtype, *, grad_out=None, prep=lambda name, t: t, device="cpu"):
    """Ours in ``dtype`` (inputs through ``prep``) against the float64 reference on the same rounded values:
    h, openings, all gradients and all six updated traces."""
    n, hd = t64["h_last"].shape
    gen = torch.Generator().manual_seed(n * 1000 + hd)
    grad_out = torch.randn(n, hd, generator=gen, dtype=torch.float64) if grad_out is None else grad_out
    ours = {k: prep(k, v.to(device=device, dtype=dtype).requires_grad_()) for k, v in t64.items()}
    # The reference runs on the same device (float64 on a GPU keeps the large gpu cases quick).
    ref = {k: v.to(dtype).to(device=device, dtype=torch.float64).requires_grad_() for k, v in t64.items()}
    # Clones: .to() of a tensor already in the dtype returns it, and both runs update in place.
    tr_ours = tuple(prep("trace", tr.to(device=device, dtype=dtype).clone()) for tr in traces64)
    tr_ref = tuple(tr.to(dtype).to(device=device, dtype=torch.float64).clone() for tr in traces64)
    h, op, grads = _step(eprop_gate_l0rd, ours, tr_ours, reg, noise64.to(device=device, dtype=dtype),
                         grad_out.to(device), run_triton)
    rh, rop, rgrads = _step(eprop_gate_l0rd_reference, ref, tr_ref, reg,
                            noise64.to(dtype).to(device=device, dtype=torch.float64), grad_out.to(device), run_reference)
    assert h.dtype == dtype and op.dtype == dtype and op.dim() == 0 and not op.requires_grad
    assert_close(h, rh, dtype, "h")
    assert_close(op, rop, dtype, "openings")
    for name, g, rg in zip(LEAVES, grads, rgrads):
        assert g.dtype == dtype
        assert_close(g, rg, dtype, f"grad {name}")
    for name, tr, rtr in zip(eprop.TRACE_NAMES, tr_ours, tr_ref):
        assert_close(tr, rtr, dtype, f"trace {name}")
    return rop.item()


# ---------------------------------------------------------------- values, gradients, traces

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, hd, i", [(3, 5, 7), (2, 19, 33), (5, 70, 9)])
def test_matches_reference(gen, n, hd, i, dtype):
    """Odd sizes (Hd, I not powers of two); 70 spans two interpreter tiles of the hidden units."""
    openings = _check(*_inputs(gen, n, hd, i), dtype)
    assert 0.0 < openings < 1.0  # open and closed gates both occur, so both branches are tested


def test_small_tiles_many_programs(gen, monkeypatch):
    """Forced small blocks: several tiles along every axis, partial tiles, a batch over two GEMM blocks."""
    monkeypatch.setattr(eprop, "trace_blocks", lambda hd, u, interpret, backward=False: (8, 8, 4))
    monkeypatch.setattr(eprop, "gemm_blocks", lambda n, hd, interpret: (16, 16, 16))
    _check(*_inputs(gen, 17, 20, 19), torch.float32)


def test_batch_split_backward(gen, monkeypatch):
    """The backward's batch sum in several parts (as for N = 128 on a GPU), partials summed after."""
    monkeypatch.setattr(eprop, "_sm_count", lambda t: 64)
    assert eprop.batch_splits(34, programs=1, sms=64, tile_elems=35) == 2
    _check(*_inputs(gen, 34, 5, 7), torch.float32)
    _check(*_inputs(gen, 33, 5, 7), torch.float64)  # a last part of one sample


def test_gpu_launch_shapes():
    """GPU blocks: powers of two, every tl.dot dimension >= 16 (sm_90), trace tiles within 1024
    elements, and enough programs for the SMs at the benchmark shapes."""
    for n in (1, 7, 16, 32, 128):
        for hd in (5, 300, 512, 1024):
            bn, bj, bk = eprop.gemm_blocks(n, hd, interpret=False)
            assert min(bn, bj, bk) >= 16 and all(b & (b - 1) == 0 for b in (bn, bj, bk))
            for u in (3, 300, 1000, 1024):
                for backward in (False, True):
                    tj, tu, _ = eprop.trace_blocks(hd, u, interpret=False, backward=backward)
                    assert tj * tu <= 1024 and all(b & (b - 1) == 0 for b in (tj, tu))
    for n, hd in ((16, 1024), (128, 512)):
        tj, tu, _ = eprop.trace_blocks(hd, hd, interpret=False, backward=True)
        programs = (hd // tj) * (hd // tu)
        assert programs * eprop.batch_splits(n, programs, 132, hd * hd) >= 4 * 132


def test_non_contiguous_inputs_and_traces(gen):
    """Same values in strided storage: transposed-back matrices, strided vectors, strided traces."""
    def noncontig(name, t):
        if t.dim() >= 2:
            out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        else:
            out = torch.stack([t, t], dim=-1)[..., 0]
        if name != "trace":
            out = out.detach().requires_grad_()
        assert not out.is_contiguous()
        return out

    _check(*_inputs(gen, 3, 6, 5), torch.float32, prep=noncontig)


def test_zero_reg_and_no_noise_are_inputs_not_constants(gen):
    """λ and the gate noise really enter: changing each changes what it should (and only that)."""
    t, traces, reg, noise = _inputs(gen, 3, 6, 5)
    t = {k: v.float().requires_grad_() for k, v in t.items()}
    noise, gout = noise.float(), torch.randn(3, 6, generator=gen)

    def run(reg_, noise_):
        return _step(eprop_gate_l0rd, t, tuple(tr.float().clone() for tr in traces), reg_, noise_, gout, run_triton)

    h0, _, g0 = run(0.0, noise)
    h1, _, g1 = run(reg, noise)
    assert torch.equal(h0, h1)                                        # λ changes no value
    assert (g1[LEAVES.index("w_gx")] - g0[LEAVES.index("w_gx")]).abs().max() > 1e-3
    assert torch.equal(g1[LEAVES.index("w_rx")], g0[LEAVES.index("w_rx")])  # ... and no candidate grad
    h2, _, _ = run(0.0, noise + 0.5)
    assert (h2 - h0).abs().max() > 1e-3


@pytest.mark.parametrize("wanted", [("x",), ("h_last",), ("w_gh", "b_r"), ("w_rx",), ("b_g",)])
def test_partial_gradients(gen, wanted):
    """Only some leaves take gradients (e.g. a frozen layer): those are right, the others stay None."""
    t64, traces, reg, noise = _inputs(gen, 3, 5, 4)
    gout = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    out = []
    for fn, dt, run in ((eprop_gate_l0rd, torch.float32, run_triton),
                        (eprop_gate_l0rd_reference, torch.float64, run_reference)):
        t = {k: v.float().to(dt).requires_grad_(k in wanted) for k, v in t64.items()}
        trs = tuple(tr.float().to(dt).clone() for tr in traces)

        def fwd_bwd(fn=fn, t=t, trs=trs, dt=dt):
            h, _ = fn(*[t[k] for k in LEAVES], trs, reg, noise.float().to(dt))
            return torch.autograd.grad(h, [t[k] for k in wanted], gout.to(dt))

        out.append(run(fwd_bwd))
    for name, g, rg in zip(wanted, *out):
        assert_close(g, rg, torch.float32, f"grad {name}")


def test_gradients_are_exact_from_zero_traces(gen):
    """Independent oracle: with zero traces (the state after reset_state) and λ = 0, one step's hybrid
    gradient is the true gradient of h, so autograd's gradcheck applies to both implementations."""
    t, _, _, noise = _inputs(gen, 2, 3, 4)
    shapes = ((2, 3, 4), (2, 3, 3), (2, 3), (2, 3, 4), (2, 3, 3), (2, 3))

    def make(fn):
        def step(*leaves):
            traces = tuple(torch.zeros(s, dtype=torch.float64) for s in shapes)
            return fn(*leaves, traces, 0.0, noise)[0]
        return step

    leaves = tuple(t[k].clone().requires_grad_() for k in LEAVES)
    assert torch.autograd.gradcheck(make(eprop_gate_l0rd_reference), leaves)
    with use_backend("triton"):  # fast mode: random projections, few interpreted launches
        assert torch.autograd.gradcheck(make(eprop_gate_l0rd), leaves, fast_mode=True)


def test_gradient_differs_from_bptt_with_old_traces(gen):
    """With non-zero incoming traces the weight gradient is the e-prop one (δ·e_t), not autograd's:
    the hybrid gradient is reproduced, not silently 'fixed'."""
    t, traces, _, noise = _inputs(gen, 2, 4, 3)
    w = {k: v.clone().requires_grad_() for k, v in t.items()}
    h, _ = eprop_gate_l0rd_reference(*[w[k] for k in LEAVES], tuple(tr.clone() for tr in traces), 0.0, noise)
    (ours,) = torch.autograd.grad(h.sum(), [w["w_gx"]])
    p = {k: v.clone().requires_grad_() for k, v in t.items()}  # the cell in plain autograd
    g = torch.relu(torch.tanh(p["x"] @ p["w_gx"].t() + p["h_last"] @ p["w_gh"].t() + p["b_g"] + noise))
    r = torch.tanh(p["x"] @ p["w_rx"].t() + p["h_last"] @ p["w_rh"].t() + p["b_r"])
    (true,) = torch.autograd.grad((g * r + (1 - g) * p["h_last"]).sum(), [p["w_gx"]])
    expect = true + (traces[0] * (1 - g.detach()).unsqueeze(2)).sum(0)  # + the decayed old trace
    assert torch.allclose(ours, expect, atol=1e-12)


# ---------------------------------------------------------------- recursion and the kept traces

def _run_steps(fn, t, traces, reg, noises, xs, grad_outs, backend):
    """Steps chained through h inside one autograd graph (the traces shared and updated in place),
    then one backward of Σ_t <grad_out_t, h_t>; returns the h's and the grads of x_t, h_0, weights."""
    with use_backend(backend), torch.enable_grad():
        h = t["h_last"]
        hs = []
        for x, noise in zip(xs, noises):
            h, _ = fn(x, h, *[t[k] for k in WEIGHTS], traces, reg, noise)
            hs.append(h)
        loss = sum((o * g.to(o.dtype)).sum() for o, g in zip(hs, grad_outs))
        grads = torch.autograd.grad(loss, [*xs, t["h_last"], *[t[k] for k in WEIGHTS]])
    return hs, grads


@pytest.mark.parametrize("steps", [2, 3])
def test_recursion_in_one_graph(gen, steps):
    """A K-step chunk (K = 2 is upstream's schedule) inside one graph: the backward of every earlier step
    needs its own traces although later forwards overwrote them (copy-on-write), and the hybrid
    gradient counts earlier steps through both the traces and BPTT."""
    n, hd, i = 3, 6, 5
    t64, traces64, reg, _ = _inputs(gen, n, hd, i)
    xs64 = [torch.randn(n, i, generator=gen, dtype=torch.float64) for _ in range(steps)]
    noises = [torch.randn(hd, generator=gen, dtype=torch.float64) * 0.1 for _ in range(steps)]
    gouts = [torch.randn(n, hd, generator=gen, dtype=torch.float64) for _ in range(steps)]
    results = []
    for fn, backend, dt in ((eprop_gate_l0rd, "triton", torch.float32),
                            (eprop_gate_l0rd_reference, "reference", torch.float64)):
        t = {k: v.to(torch.float32).to(dt).requires_grad_() for k, v in t64.items()}
        xs = [x.to(torch.float32).to(dt).requires_grad_() for x in xs64]
        traces = tuple(tr.to(torch.float32).to(dt).clone() for tr in traces64)
        hs, grads = _run_steps(fn, t, traces, reg, [z.to(torch.float32).to(dt) for z in noises], xs, gouts, backend)
        results.append((hs, grads, traces))
    (hs, grads, traces), (rhs, rgrads, rtraces) = results
    for k, (h, rh) in enumerate(zip(hs, rhs)):
        assert_close(h, rh, torch.float32, f"h_{k}")
    names = [f"x_{k}" for k in range(steps)] + ["h_0", *WEIGHTS]
    for name, g, rg in zip(names, grads, rgrads):
        assert_close(g, rg, torch.float32, f"grad {name}")
    for name, tr, rtr in zip(eprop.TRACE_NAMES, traces, rtraces):
        assert_close(tr, rtr, torch.float32, f"trace {name}")


def _saved_bytes(h: torch.Tensor, inputs) -> int:
    """Bytes a step keeps for its backward: saved tensors that are not the caller's own tensors, plus
    the trace copy taken for it."""
    own = {t.data_ptr() for t in inputs}
    kept = sum(t.numel() * t.element_size() for t in h.grad_fn.saved_tensors if t.data_ptr() not in own)
    state = getattr(h.grad_fn, "state", None)
    if state is not None and state.copy is not None:
        kept += sum(t.numel() * t.element_size() for t in state.copy)
    return kept


def test_copy_on_write_keeps_only_what_a_backward_needs(gen):
    """The last step keeps no trace copy; an earlier step gets one from the next forward, freed by its backward."""
    n, hd, i = 2, 5, 4
    t, traces, reg, noise = _inputs(gen, n, hd, i)
    t = {k: v.float().requires_grad_() for k, v in t.items()}
    traces = tuple(tr.float() for tr in traces)
    inputs = [*t.values(), noise.float()]
    with use_backend("triton"):
        h1, _ = eprop_gate_l0rd(*[t[k] for k in LEAVES], traces, reg, noise.float())
        assert h1.grad_fn.state.copy is None
        assert _saved_bytes(h1, inputs) == eprop.saved_bytes_ours(n, hd, i, 4, last_of_chunk=True)
        before = tuple(tr.clone() for tr in traces)
        h2, _ = eprop_gate_l0rd(t["x"], h1, *[t[k] for k in WEIGHTS], traces, reg, noise.float())
        copy = h1.grad_fn.state.copy
        assert copy is not None and all(torch.equal(c, b) for c, b in zip(copy, before))
        assert _saved_bytes(h1, inputs) == eprop.saved_bytes_ours(n, hd, i, 4, last_of_chunk=False)
        assert h2.grad_fn.state.copy is None
        h2.sum().backward()
    assert h1.grad_fn.state.copy is None and h1.grad_fn.state.done


def test_no_grad_step_still_copies_for_a_pending_backward(gen):
    """A later step under no_grad (e.g. a logging pass) still overwrites the traces: the pending step's
    backward must see its own traces, as with upstream's clones."""
    n, hd, i = 2, 5, 4
    t64, traces64, reg, noise = _inputs(gen, n, hd, i)
    x2 = torch.randn(n, i, generator=gen, dtype=torch.float64)
    out = []
    for fn, backend in ((eprop_gate_l0rd, "triton"), (eprop_gate_l0rd_reference, "reference")):
        t = {k: v.clone().requires_grad_() for k, v in t64.items()}
        traces = tuple(tr.clone() for tr in traces64)
        with use_backend(backend):
            h, _ = fn(*[t[k] for k in LEAVES], traces, reg, noise)
            with torch.no_grad():
                fn(x2, h, *[t[k] for k in WEIGHTS], traces, reg, noise)
            out.append(torch.autograd.grad(h.sum(), [t[k] for k in LEAVES]))
    for name, g, rg in zip(LEAVES, *out):
        assert_close(g, rg, torch.float64, f"grad {name}")


def test_inference_mode(gen):
    """Under inference_mode (traces created there have no version counter) the traces still update."""
    t, traces, reg, noise = _inputs(gen, 2, 4, 3)
    with torch.inference_mode():
        ours = tuple(tr.float().clone() for tr in traces)
        ref = tuple(tr.float().clone() for tr in traces)
        args = [t[k].float() for k in LEAVES]
        h = run_triton(eprop_gate_l0rd, *args, ours, reg, noise.float())[0]
        rh = eprop_gate_l0rd_reference(*args, ref, reg, noise.float())[0]
    assert_close(h, rh, torch.float32, "h")
    for name, a, b in zip(eprop.TRACE_NAMES, ours, ref):
        assert_close(a, b, torch.float32, f"trace {name}")


def test_traces_changed_by_someone_else_raise(gen):
    """reset_state() (zeroing the traces) between a step's forward and its backward: an error, not a
    silently wrong gradient."""
    t, traces, reg, noise = _inputs(gen, 2, 4, 3)
    t = {k: v.clone().requires_grad_() for k, v in t.items()}
    with use_backend("triton"):
        h, _ = eprop_gate_l0rd(*[t[k] for k in LEAVES], traces, reg, noise)
        for tr in traces:
            tr.zero_()
        with pytest.raises(RuntimeError, match="traces were modified in place"):
            h.sum().backward()


# ---------------------------------------------------------------- dispatch

def test_backend_switching(gen, monkeypatch):
    t, traces, reg, noise = _inputs(gen, 2, 4, 3)
    t = {k: v.float() for k, v in t.items()}
    calls = []
    real = eprop._forward_triton
    monkeypatch.setattr(eprop, "_forward_triton", lambda *a: calls.append(1) or real(*a))

    def run():
        trs = tuple(tr.float().clone() for tr in traces)
        return eprop_gate_l0rd(*[t[k] for k in LEAVES], trs, reg, noise.float())[0], trs

    expected = eprop_gate_l0rd_reference(*[t[k] for k in LEAVES], tuple(tr.float().clone() for tr in traces),
                                         reg, noise.float())[0]
    for backend in ("reference", "auto"):  # CPU tensors: auto means the reference
        with use_backend(backend):
            assert torch.equal(run()[0], expected)
    assert calls == []
    with use_backend("triton"):
        assert_close(run()[0], expected, torch.float32, "triton")
    assert calls == [1]


# ---------------------------------------------------------------- bad arguments

def _bad_cases():
    n, hd, i = 2, 3, 4
    ok = dict(x=torch.randn(n, i), h_last=torch.randn(n, hd), w_gx=torch.randn(hd, i), w_gh=torch.randn(hd, hd),
              b_g=torch.randn(hd), w_rx=torch.randn(hd, i), w_rh=torch.randn(hd, hd), b_r=torch.randn(hd),
              traces=(torch.randn(n, hd, i), torch.randn(n, hd, hd), torch.randn(n, hd),
                      torch.randn(n, hd, i), torch.randn(n, hd, hd), torch.randn(n, hd)),
              reg=0.1, gate_noise=torch.randn(hd))

    def bad(arg, words, **change):
        return arg, words, {**ok, **change}

    def trace(k, t):
        trs = list(ok["traces"])
        trs[k] = t
        return tuple(trs)

    return [
        bad("x", "shape", x=torch.randn(n, i, 1)),
        bad("x", "torch.Tensor", x=[[1.0]]),
        bad("x", "floating", x=torch.ones(n, i, dtype=torch.long)),
        bad("x", "N >= 1", x=torch.randn(0, i), h_last=torch.randn(0, hd)),
        bad("h_last", "(2, *)", h_last=torch.randn(n + 1, hd)),
        bad("h_last", "Hd >= 1", h_last=torch.randn(n, 0)),
        bad("w_gx", "(3, 4)", w_gx=torch.randn(hd, i + 1)),
        bad("w_gh", "(3, 3)", w_gh=torch.randn(hd, hd + 1)),
        bad("b_g", "(3)", b_g=torch.randn(hd + 1)),
        bad("w_rx", "(3, 4)", w_rx=torch.randn(i, hd)),
        bad("w_rh", "(3, 3)", w_rh=torch.randn(hd, 1)),
        bad("b_r", "(3)", b_r=torch.randn(1, hd)),
        bad("gate_noise", "(3)", gate_noise=torch.randn(())),
        bad("traces", "tuple of 6", traces=ok["traces"][:5]),
        bad("traces", "tuple of 6", traces=torch.randn(n, hd, i)),
        bad("traces[0] (e_gx)", "(2, 3, 4)", traces=trace(0, torch.randn(n, hd, i + 1))),
        bad("traces[1] (e_gh)", "(2, 3, 3)", traces=trace(1, torch.randn(n, hd, i))),
        bad("traces[2] (e_bg)", "(2, 3)", traces=trace(2, torch.randn(n, hd, 1))),
        bad("traces[3] (e_rx)", "(2, 3, 4)", traces=trace(3, torch.randn(n + 1, hd, i))),
        bad("traces[4] (e_rh)", "(2, 3, 3)", traces=trace(4, torch.randn(n, 1, hd))),
        bad("traces[5] (e_br)", "(2, 3)", traces=trace(5, torch.randn(hd))),
        bad("traces[4] (e_rh)", "float32", traces=trace(4, torch.randn(n, hd, hd, dtype=torch.float64))),
        bad("traces[0] (e_gx)", "device", traces=trace(0, torch.randn(n, hd, i, device="meta"))),
        bad("w_gh", "float32", w_gh=torch.randn(hd, hd, dtype=torch.float64)),
        bad("b_r", "float32", b_r=torch.randn(hd).half()),
        bad("gate_noise", "device", gate_noise=torch.randn(hd, device="meta")),
        bad("reg", "finite python number", reg=torch.tensor(0.1)),
        bad("reg", "finite python number", reg=float("nan")),
        bad("reg", "finite python number", reg=True),
    ]


@pytest.mark.parametrize("fn", [eprop_gate_l0rd, eprop_gate_l0rd_reference], ids=["op", "reference"])
@pytest.mark.parametrize("arg, words, kwargs", _bad_cases())
def test_bad_arguments(fn, arg, words, kwargs):
    with pytest.raises(ValueError) as err:
        fn(**kwargs)
    msg = str(err.value)
    assert msg.startswith(f"{arg}:"), msg
    assert words in msg, msg


# ---------------------------------------------------------------- upstream parity

@pytest.mark.skipif(not os.environ.get("LOCI_FAST_UPSTREAM"), reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
def test_upstream_parity(gen):
    """Our reference against upstream's EpropGateL0rdFunction, 3 steps chained in one graph (float64):
    h, openings, the updated traces and every gradient; upstream's noise draw recorded and injected.
    Also measures upstream's saved ctx bytes against ``saved_bytes_upstream``."""
    from tests.model.test_blocks import upstream_modules

    n, hd, i, steps, std = 3, 6, 5, 3, 0.2
    t64, traces64, reg, _ = _inputs(gen, n, hd, i)
    xs64 = [torch.randn(n, i, generator=gen, dtype=torch.float64) for _ in range(steps)]
    gouts = [torch.randn(n, hd, generator=gen, dtype=torch.float64) for _ in range(steps)]
    with upstream_modules(os.environ["LOCI_FAST_UPSTREAM"]) as import_upstream:
        Upstream = import_upstream("nn.eprop_gate_l0rd").EpropGateL0rdFunction
        runs = []
        for ours in (False, True):
            t = {k: v.clone().requires_grad_() for k, v in t64.items()}
            xs = [x.clone().requires_grad_() for x in xs64]
            traces = tuple(tr.clone() for tr in traces64)
            torch.manual_seed(1234)  # the same global RNG state for both: upstream draws inside
            h, hs, opens, saved = t["h_last"], [], [], []
            for x in xs:
                if ours:
                    # Upstream's own draw (default dtype, as it writes it), recorded and injected.
                    noise = torch.normal(mean=0, std=torch.tensor(std, dtype=torch.float64), size=(hd,)).double()
                    h, op = eprop_gate_l0rd_reference(x, h, *[t[k] for k in WEIGHTS], traces, reg, noise)
                else:
                    args = (*traces, torch.tensor(reg, dtype=torch.float64).view(1, 1),
                            torch.tensor(std, dtype=torch.float64))
                    h, op = Upstream.apply(x, h, *[t[k] for k in WEIGHTS], args)
                    saved.append(sum(s.numel() * s.element_size() for s in h.grad_fn.saved_tensors))
                hs.append(h)
                opens.append(op.item())
            loss = sum((o * g).sum() for o, g in zip(hs, gouts))
            grads = torch.autograd.grad(loss, [*xs, t["h_last"], *[t[k] for k in WEIGHTS]])
            runs.append((hs, opens, traces, grads, saved))
    (uhs, uop, utr, ugr, usaved), (hs, op, tr, gr, _) = runs
    assert op == uop
    for a, b in zip(hs + list(tr) + list(gr), uhs + list(utr) + list(ugr)):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= TOL[torch.float64] * max(b.abs().max().item(), 1.0)
    assert usaved == [eprop.saved_bytes_upstream(n, hd, i, 8)] * steps


# ---------------------------------------------------------------- bench cases

def test_bench_cases():
    """The suite's shapes on a GPU, the minimal bytes, and a cpu-gate case that passes the runner's gate."""
    from loci_fast.bench import eprop as bench
    from loci_fast.bench.runner import check_case

    gpu = bench.cases(quick=False, device=torch.device("cuda"))
    assert [(c.shape["N"], c.shape["Hd"], c.shape["I"]) for c in gpu] == [(16, 1024, 1024), (128, 512, 512)]
    quick = bench.cases(True, torch.device("cuda"))
    assert [(c.shape["N"], c.shape["Hd"], c.shape["I"]) for c in quick] == [(16, 1024, 1024)]
    n, hd, i = 16, 1024, 1024
    trace = n * hd * (2 * i + 2 * hd + 2)
    weights = 2 * hd * (i + hd) + 2 * hd
    # Forward: read x, h_last, weights, noise and the traces; write h and the traces.
    assert gpu[0].bytes_fwd(4) == 4 * (n * i + n * hd + weights + hd + 2 * trace + n * hd)
    cpu = bench.cases(quick=True, device=torch.device("cpu"))
    assert all(c.shape["Hd"] <= 32 for c in cpu)
    gate = check_case(cpu[0], torch.float32, torch.device("cpu"))
    assert gate["ok"] and {"out0", "grad_x", "grad_h_last", "grad_w_gx", "grad_b_r"} <= set(gate["errors"]), gate


# ---------------------------------------------------------------- GPU (large shapes, half precision)

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n, hd, i", [(16, 1024, 1024), (128, 512, 512), (7, 300, 1000)])
def test_gpu_shapes(gen, n, hd, i, dtype):
    _check(*_inputs(gen, n, hd, i), dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_recursion(gen, dtype):
    n, hd, i = 16, 256, 200
    t64, traces64, reg, _ = _inputs(gen, n, hd, i)
    xs64 = [torch.randn(n, i, generator=gen, dtype=torch.float64) for _ in range(3)]
    noises = [torch.randn(hd, generator=gen, dtype=torch.float64) * 0.1 for _ in range(3)]
    gouts = [torch.randn(n, hd, generator=gen, dtype=torch.float64) for _ in range(3)]
    out = []
    for fn, backend, dt, dev in ((eprop_gate_l0rd, "triton", dtype, "cuda"),
                                 (eprop_gate_l0rd_reference, "reference", torch.float64, "cuda")):
        t = {k: v.to(dtype).to(device=dev, dtype=dt).requires_grad_() for k, v in t64.items()}
        xs = [x.to(dtype).to(device=dev, dtype=dt).requires_grad_() for x in xs64]
        traces = tuple(tr.to(dtype).to(device=dev, dtype=dt).clone() for tr in traces64)
        out.append(_run_steps(fn, t, traces, reg, [z.to(dtype).to(device=dev, dtype=dt) for z in noises], xs,
                              [g.to(dev) for g in gouts], backend))
    for a, b in zip(out[0][0] + list(out[0][1]), out[1][0] + list(out[1][1])):
        assert_close(a, b, dtype, "recursion")
