"""LatentPredictor (§10.2): structure (9 attention calls per step, one hidden state through all cells),
explicit recurrent state, draws and their injection, key layout, and (with LOCI_FAST_UPSTREAM) parity
with upstream's LatentEpropPredictor over 4 steps in one graph, in training and evaluation mode."""
import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch

from loci_fast.model.predictor import LatentPredictor
from tests.model.test_blocks import upstream_modules
from tests.model.upstream_draws import record_draws, rel_err, take

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = os.environ.get("LOCI_FAST_UPSTREAM")
G, O, B, C = 4, 3, 2, 24  # gestalt size, slots, batch, channels (>= 3G + 6 = 18)


def latents(gen, b=B, o=O, g=G):
    position = torch.randn(b, o * 4, generator=gen)
    gestalt = torch.rand(b, o * (3 * g + 1), generator=gen)
    priority = torch.randn(b, o, generator=gen)
    return position, gestalt, priority


def open_alphas(model, gen, value=0.4):
    """Move every residual branch off its 1e-12 start so each path changes the numbers."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.fill_(value * (1 + 0.2 * torch.rand(1, generator=gen).item()))


def test_structure_and_state(gen):
    torch.manual_seed(0)
    pred = LatentPredictor(G, O, heads=2, layers=3, num_hidden=C, reg_lambda=1e-3).eval()
    open_alphas(pred, gen)
    assert len(list(pred.buffers())) == 0  # no hidden state in the module
    calls = {"attention": 0, "cells": []}
    for a in pred.predictor.attention:
        a.register_forward_hook(lambda *_: calls.__setitem__("attention", calls["attention"] + 1))
    for i, cell in enumerate(pred.predictor.l0rds):
        cell.register_forward_hook(lambda m, args, out, i=i: calls["cells"].append((i, args[1], out[1])))
    hidden, traces = pred.initial_state(B)
    assert hidden.shape == (B * O, 2 * C) and len(traces) == 4 and traces[0].gx.shape == (B * O, 2 * C, 2 * C)
    p, g, pi = latents(gen)
    with torch.no_grad():
        out = pred(p, g, pi, hidden, traces)
    assert calls["attention"] == 9  # the whole stack before each of cells 1..3 (§24.6c)
    # one hidden state threads through the 4 cells; the last cell's h is the returned state
    seen = calls["cells"]
    assert [i for i, *_ in seen] == [0, 1, 2, 3]
    assert torch.equal(seen[0][1], hidden) and all(torch.equal(seen[k][1], seen[k - 1][2]) for k in range(1, 4))
    assert torch.equal(out.hidden, seen[3][2])
    assert out.position.shape == (B, O * 4) and out.gestalt.shape == g.shape and out.priority.shape == (B, O)
    assert out.openings.shape == (4,) and torch.all((out.openings > 0) & (out.openings <= 1))
    # updated in place (cell 0 saw the zero start state, so its recurrent-weight traces stay 0)
    assert all(t.abs().sum() > 0 for k, tr in enumerate(traces) for name, t in zip(tr._fields, tr)
               if k > 0 or name not in ("gh", "rh"))
    # eval: the flip code is binary, so a binary gestalt stays binary
    binary = (g > 0.5).float()
    with torch.no_grad():
        nxt = pred(p, binary, pi, *pred.initial_state(B)).gestalt
    assert set(nxt.unique().tolist()) <= {0.0, 1.0}
    # samples are independent, slots of one sample interact (attention)
    p2 = p.clone()
    p2[1, :4] += 1
    with torch.no_grad():
        o2 = pred(p2, g, pi, *pred.initial_state(B))
        o1 = pred(p, g, pi, *pred.initial_state(B))
    torch.testing.assert_close(o2.position[0], o1.position[0])
    assert not torch.allclose(o2.position[1, 4:], o1.position[1, 4:])
    # the hidden state carries over: a second step differs from a first step on the same input
    with torch.no_grad():
        again = pred(p, g, pi, o1.hidden, traces)
    assert not torch.allclose(again.position, o1.position)

    flat = LatentPredictor(G, O, heads=2, layers=3, num_hidden=C, repeat_attention_stack=False).eval()
    calls["attention"] = 0
    for a in flat.predictor.attention:
        a.register_forward_hook(lambda *_: calls.__setitem__("attention", calls["attention"] + 1))
    with torch.no_grad():
        flat(p, g, pi, *flat.initial_state(B))
    assert calls["attention"] == 3


def test_near_identity_at_init(gen):
    """All α start at 1e-12: position and priority pass through, the flip code is 0 on a binary code."""
    pred = LatentPredictor(G, O, num_hidden=C).eval()
    p, g, pi = latents(gen)
    g = (g > 0.5).float()
    with torch.no_grad():
        out = pred(p, g, pi, *pred.initial_state(B))
    torch.testing.assert_close(out.position, p, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.priority, pi, rtol=1e-6, atol=1e-6)
    assert torch.equal(out.gestalt, g)


def test_draws_in_order_and_injectable(gen):
    """Training mode: 4 normal (C*heads,) draws (one per cell) then one randn_like (B*O, 3G+1); the same
    values injected give the same result, and other injected values change it."""
    torch.manual_seed(1)
    pred = LatentPredictor(G, O, heads=1, layers=3, num_hidden=C, reg_lambda=1e-3).train()
    open_alphas(pred, gen)
    p, g, pi = latents(gen)
    with record_draws() as log:
        torch.manual_seed(5)
        drawn = pred(p, g, pi, *pred.initial_state(B))
    kinds = [(k, tuple(v.shape)) for k, v in log]
    assert kinds == [("normal", (C,))] * 4 + [("randn_like", (B * O, 3 * G + 1))]
    noises = [take(log, "normal") for _ in range(4)]
    binarize = take(log, "randn_like")
    state = torch.get_rng_state()
    injected = pred(p, g, pi, *pred.initial_state(B), gate_noise=noises, binarize_noise=binarize)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn when all draws are injected
    for a, b in zip(drawn[:3], injected[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = pred(p, g, pi, *pred.initial_state(B), gate_noise=noises, binarize_noise=binarize + 1)
    assert not torch.allclose(other.gestalt, injected.gestalt)
    pred.eval()
    with record_draws() as log, torch.no_grad():
        pred(p, g, pi, *pred.initial_state(B))
    assert [k for k, _ in log] == ["normal"] * 4  # eval: no Binarize draw, the gate draws stay


def test_config_keys_and_bad_arguments(gen):
    cfg = json.loads((REPO / "configs" / "loci-s.json").read_text())["model"]
    meta = torch.device("meta")
    with meta:
        full = LatentPredictor.from_config(cfg)
    assert full.width == 1024 and full.num_cells == 4 and full.predictor.repeat_attention_stack
    keys = set(full.state_dict())
    assert {"predictor.input_embeding.embeding.0.weight", "predictor.input_embeding.exchange_gate.0.weight",
            "predictor.input_embeding.exchange_code.0.bias", "predictor.attention.2.attention.in_proj_weight",
            "predictor.l0rds.3.l0rd.w_gh", "predictor.output_embeding.embeding.2.weight",
            "gestalt_bottleneck.0.layers.2.bias"} <= keys
    with meta:
        flat = LatentPredictor.from_config(dict(cfg, compat={"predictor_repeat_attention_stack": False}))
    assert not flat.predictor.repeat_attention_stack
    pred = LatentPredictor(G, O, num_hidden=C)
    p, g, pi = latents(gen)
    hidden, traces = pred.initial_state(B)
    with pytest.raises(ValueError, match="gestalt: expected"):
        pred(p, g[:, 1:], pi, hidden, traces)
    with pytest.raises(ValueError, match="traces: expected 4"):
        pred(p, g, pi, hidden, traces[:3])
    with pytest.raises(ValueError, match="gate_noise: expected 4"):
        pred(p, g, pi, hidden, traces, gate_noise=[torch.zeros(C)])
    with pytest.raises(ValueError, match="at least the slot latent size"):
        LatentPredictor(G, O, num_hidden=17)


# ---------------------------------------------------------------- upstream parity (optional)

def _upstream_predictor(import_upstream, heads, gen):
    mod = import_upstream("nn.predictor")
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        up = mod.LatentEpropPredictor(heads=heads, layers=3, reg_lambda=1e-3, num_slots=O, num_hidden=C,
                                      gestalt_size=G, batch_size=B)
    open_alphas(up, gen)
    ours = LatentPredictor(G, O, heads=heads, layers=3, num_hidden=C, reg_lambda=1e-3)
    ours.load_state_dict(up.state_dict(), strict=True)
    return up, ours


def _run_steps(model, inputs, train, draws=None, steps=4):
    """`steps` predictor steps in one graph, each fed the previous step's outputs; returns per-step
    outputs, hidden states, traces, the gradients of a loss over all steps, and upstream's draws."""
    model.train(train)
    p, g, pi = (t.clone().requires_grad_() for t in inputs)
    leaves = [p, g, pi]
    weights = [torch.linspace(-1, 1, t.numel()).view_as(t) for t in inputs]
    ours = isinstance(model, LatentPredictor)
    if ours:
        hidden, traces = model.initial_state(B)
    else:
        model.predictor.reset_state()
        for cell in model.predictor.l0rds:
            cell.l0rd.reset_state()
    outs, loss, recorded = [], 0.0, []
    for t in range(steps):
        if ours:
            step = draws[t]
            out = model(p, g, pi, hidden, traces, gate_noise=step["normal"], binarize_noise=step.get("randn_like"))
            p, g, pi, hidden = out.position, out.gestalt, out.priority, out.hidden
            trace_values = [v for tr in traces for v in tr]
        else:
            with record_draws() as log:
                p, g, pi = model(p, g, pi)
            step = {"normal": [take(log, "normal") for _ in range(4)]}
            if train:
                step["randn_like"] = take(log, "randn_like")
            assert not log, f"unexpected upstream draws {[k for k, _ in log]}"
            recorded.append(step)
            hidden = model.predictor.hidden
            trace_values = [getattr(c.l0rd, n) for c in model.predictor.l0rds
                            for n in ("e_w_gx", "e_w_gh", "e_b_g", "e_w_rx", "e_w_rh", "e_b_r")]
        outs.append([v.detach().clone() for v in (p, g, pi, hidden, *trace_values)])
        loss = loss + sum((w * v).sum() for w, v in zip(weights, (p, g, pi))) * (1 + t)
    grads = torch.autograd.grad(loss, list(model.parameters()) + leaves)
    return outs, grads, recorded


@pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("train", [True, False])
def test_upstream_parity(gen, heads, train):
    """Same weights, inputs and (recorded, injected) draws: every step's outputs, hidden state and the 24
    traces within 1e-5 relative, all parameter and input gradients of 4 steps within 1e-4 relative."""
    with upstream_modules(UPSTREAM) as import_upstream:
        up, ours = _upstream_predictor(import_upstream, heads, gen)
        inputs = latents(gen)
        up_outs, up_grads, draws = _run_steps(up, inputs, train)
        our_outs, our_grads, _ = _run_steps(ours, inputs, train, draws)
    for t, (a_step, u_step) in enumerate(zip(our_outs, up_outs)):
        for k, (a, u) in enumerate(zip(a_step, u_step)):
            assert rel_err(a, u) < 1e-5, f"step {t}, output {k}: {rel_err(a, u)}"
    names = [n for n, _ in ours.named_parameters()] + ["position", "gestalt", "priority"]
    for name, a, u in zip(names, our_grads, up_grads):
        assert rel_err(a, u) < 1e-4, f"gradient of {name}: {rel_err(a, u)}"
    assert any(u.abs().sum() > 0 for u in up_grads[:-3])


@pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
def test_upstream_same_rng_stream(gen):
    """Without injection, equal seeds give upstream's numbers: our draws are the same calls in the same order."""
    with upstream_modules(UPSTREAM) as import_upstream:
        up, ours = _upstream_predictor(import_upstream, 1, gen)
        up.train(), ours.train()
        p, g, pi = latents(gen)
        torch.manual_seed(21)
        with torch.no_grad():
            ref = up(p, g, pi)
        torch.manual_seed(21)
        with torch.no_grad():
            out = ours(p, g, pi, *ours.initial_state(B))
    for a, u in zip(out[:3], ref):
        assert rel_err(a, u) < 1e-5
