"""UpdateGate (§10.1): the blend, the ReTanh gates with their +3 start and noise draw, layout and keys,
and (with LOCI_FAST_UPSTREAM) parity with upstream's UpdateModule, injected noise, values and gradients."""
import json
import os
from pathlib import Path

import pytest
import torch

from loci_fast.model.update_gate import UpdateGate
from tests.model.test_blocks import upstream_modules
from tests.model.upstream_draws import record_draws, rel_err, take

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = os.environ.get("LOCI_FAST_UPSTREAM")
G, O, B = 4, 3, 2


def gate_inputs(gen, b=B, o=O, g=G):
    r = lambda *s: torch.randn(*s, generator=gen)
    cur = [r(b, o * 4), torch.rand(b, o * (3 * g + 1), generator=gen), r(b, o), torch.rand(b, o, generator=gen)]
    last = [r(b, o * 4), torch.rand(b, o * (3 * g + 1), generator=gen), r(b, o), torch.rand(b, o, generator=gen)]
    return cur + last


def test_blend_with_known_gates(gen):
    """Zero the last layer: the logits are its bias, so γ = relu(tanh(bias + 3)) is known."""
    gate = UpdateGate(G, 16, 3, O).eval()
    with torch.no_grad():
        gate.layers[-1].weight.zero_()
        gate.layers[-1].bias.copy_(torch.tensor([-2.5, -3.4]))
    pc, gc, pic, oc, pl, gl, pil, ol = gate_inputs(gen)
    out = gate(pc, gc, pic, oc, pl, gl, pil, ol)
    gp, gg = torch.tanh(torch.tensor(0.5)), torch.tensor(0.0)  # -3.4 + 3 < 0: the gestalt gate is shut
    torch.testing.assert_close(out.position_gate, gp.expand(B, O))
    torch.testing.assert_close(out.gestalt_gate, gg.expand(B, O))
    torch.testing.assert_close(out.position, gp * pc + (1 - gp) * pl)
    torch.testing.assert_close(out.gestalt, gl)  # closed gestalt gate keeps the last gestalt and priority
    torch.testing.assert_close(out.priority, pil)
    assert float(out.openings) == 0.5


def test_gates_start_open_noise_and_gradient(gen):
    torch.manual_seed(0)
    gate = UpdateGate(G, 16, 4, O, noise_level=0.1, reg_lambda=1e-2)
    assert [k for k in gate.state_dict()] == ["layers.0.weight", "layers.0.bias", "layers.1.1.weight",
                                              "layers.1.1.bias", "layers.2.1.weight", "layers.2.1.bias",
                                              "layers.4.weight", "layers.4.bias"]
    inputs = gate_inputs(gen)
    with torch.no_grad():
        out = gate.eval()(*inputs)
    assert torch.all(out.position_gate > 0.9) and torch.all(out.gestalt_gate > 0.9)  # +3: start open
    # training: the gate noise is randn_like (B*O, 2) x noise_level, drawn once, or injected
    gate.train()
    with record_draws() as log:
        drawn = gate(*inputs)
    assert [(k, tuple(v.shape)) for k, v in log] == [("randn_like", (B * O, 2))]
    noise = take(log, "randn_like")
    torch.testing.assert_close(gate(*inputs, noise=noise).position, drawn.position)
    shifted = gate(*inputs, noise=noise - 3.0)  # a large negative noise shuts gates
    assert shifted.position_gate.sum() < drawn.position_gate.sum()
    with record_draws() as log, torch.no_grad():
        gate.eval()(*inputs)
    assert log == []
    # gradients reach the MLP through the gates (with the L0 term) and the inputs through the blend
    gate.train()
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = gate(*leaves, noise=noise)
    (out.position.sum() + out.gestalt.sum() + out.priority.sum()).backward()
    assert gate.layers[0].weight.grad.abs().sum() > 0 and leaves[0].grad.abs().sum() > 0


def test_config_and_bad_arguments(gen):
    cfg = json.loads((REPO / "configs" / "loci-s.json").read_text())["model"]
    gate = UpdateGate.from_config(cfg)
    assert gate.gate.noise_level == 0.1 and gate.gate.reg_lambda == 1e-5
    assert gate.layers[0].in_features == 2 * (3 * 256 + 7) == 1550 and gate.layers[-1].out_features == 2
    assert set(gate.state_dict()) == {f"layers.{k}.{p}" for k in ("0", "1.1", "3") for p in ("weight", "bias")}
    small = UpdateGate(G, 8, 3, O)
    inputs = gate_inputs(gen)
    inputs[5] = inputs[5][:, :-1]
    with pytest.raises(ValueError, match="gestalt_last: expected"):
        small(*inputs)
    with pytest.raises(ValueError, match="num_layers"):
        UpdateGate(G, 8, 1, O)


@pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
@pytest.mark.parametrize("train", [True, False])
def test_upstream_parity(gen, train):
    with upstream_modules(UPSTREAM) as import_upstream:
        up = import_upstream("nn.predictor").UpdateModule(G, 16, 3, O, gate_noise_level=0.6, reg_lambda=1e-2)
        ours = UpdateGate(G, 16, 3, O, noise_level=0.6, reg_lambda=1e-2)
        ours.load_state_dict(up.state_dict(), strict=True)
        with torch.no_grad():  # logits near 0 so that some gates are shut
            up.layers[3].bias.fill_(-3.0), ours.layers[3].bias.fill_(-3.0)
        up.train(train), ours.train(train)
        inputs = gate_inputs(gen)
        lu, lo = [t.clone().requires_grad_() for t in inputs], [t.clone().requires_grad_() for t in inputs]
        with record_draws() as log:
            ref = up(*lu)
        noise = take(log, "randn_like") if train else None
        assert not log
        out = ours(*lo, noise=noise)
        for a, u in zip(out[:5], ref):
            assert rel_err(a, u) < 1e-5
        assert 0 < float(out.openings) < 1 and float(out.openings) == up.layers[-1].openings
        w = [torch.linspace(-1, 1, t.numel()).view_as(t) for t in ref]
        gu = torch.autograd.grad(sum((a * b).sum() for a, b in zip(w, ref)), list(up.parameters()) + lu)
        go = torch.autograd.grad(sum((a * b).sum() for a, b in zip(w, out[:5])), list(ours.parameters()) + lo)
        for a, u in zip(go, gu):
            assert rel_err(a, u) < 1e-4
