"""ObjectDiscovery (§11): the float32 permanence counter and κ, the running visibility in each κ
regime, slot re-initialisation, the draws and their injection, and (with LOCI_FAST_UPSTREAM) parity
with upstream's module over a sequence of calls, values and gradients."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from loci_fast.model.object_discovery import ObjectDiscovery
from tests.model.test_blocks import upstream_modules
from tests.model.upstream_draws import record_draws, rel_err, take

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = os.environ.get("LOCI_FAST_UPSTREAM")
G, O, B, H, W = 2, 3, 2, 6, 8


def call_inputs(gen, b=B, o=O, g=G, with_state=True):
    error = torch.rand(b, 1, H, W, generator=gen)
    mask = torch.softmax(3 * torch.randn(b, o + 1, H, W, generator=gen), 1)
    mask = mask * (0.5 + 0.5 * torch.rand(b, o + 1, 1, 1, generator=gen))  # some slots' max below 0.8
    if not with_state:
        return error, mask, None, None, None
    return (error, mask, torch.randn(b, o * 4, generator=gen), torch.rand(b, o * (3 * g + 1), generator=gen),
            torch.randn(b, o, generator=gen))


def test_counter_float32_and_kappa_schedule():
    """From the default start -1: κ < 0 before call 10 000 and > 0 from it on (float32 accumulation),
    and the counter freezes after 100 059 calls, when tanh rounds to 1.0 (§11, §24.17)."""
    od = ObjectDiscovery(O, G)
    expected = np.float32(-1.0)
    kappas = []
    for _ in range(10_000):
        kappas.append(od.permanence())
        expected = np.float32(expected + np.float32(1e-4))
    assert od.init.init.dtype == torch.float32 and od.init.init.item() == float(expected)
    assert 5e-5 < expected < 6e-5
    assert kappas[9_998].item() < 0 < kappas[9_999].item()
    od.init.init.fill_(9.0)  # skip ahead: count calls to the freeze from a float32 9.0
    counter, calls = np.float32(9.0), 0
    while torch.tanh(torch.tensor(counter)).item() < 1:
        counter, calls = np.float32(counter + np.float32(1e-4)), calls + 1
    for _ in range(calls):
        od.permanence()
    assert od.init.init.item() == float(counter) and torch.tanh(od.init.init).item() == 1.0
    assert od.permanence().item() == 1.0 and od.init.init.item() == float(counter)  # frozen
    half = ObjectDiscovery(O, G, object_permanence_strength=0.5)
    half.init.init.fill_(0.6)  # tanh(0.6) > 0.5: κ = the configured strength, counter frozen
    assert half.permanence().item() == 0.5 and half.init.init.item() == pytest.approx(0.6)


@pytest.mark.parametrize("counter,strength,regime", [(-0.5, 1.0, "replace"), (0.3, 1.0, "fade"),
                                                     (9.5, 1.0, "max"), (0.3, 0.0, "replace")])
def test_visibility_regimes(gen, counter, strength, regime):
    """κ ≤ 0: the memory is this mask's max; 0 < κ < 1: the max fades where the mask is below 0.8;
    κ = 1: the running max (counter -0.5 -> κ < 0; 0.3 -> κ = tanh(0.3001); 9.5 -> frozen κ = 1; a
    strength 0 below tanh(counter) -> κ = 0)."""
    od = ObjectDiscovery(O, G, object_permanence_strength=strength)
    od.init.init.fill_(counter)
    error, mask, p, g, pi = call_inputs(gen)
    mask = mask * torch.tensor([1.0, 0.5, 0.75, 1.0]).view(1, O + 1, 1, 1)  # some slots seen below 0.8
    last = torch.rand(B, O, generator=gen) * 0.4 + 0.6
    out = od(error, mask, p, g, pi, last)
    seen = mask[:, :O].amax(dim=(2, 3))
    if regime == "replace":
        expect = seen
    elif regime == "max":
        expect = torch.maximum(last, seen)
    else:
        kappa = torch.tanh(torch.tensor([counter], dtype=torch.float32) + 1e-4)
        expect = torch.maximum(last, seen) - torch.relu((0.8 - seen) * (1 - kappa))
        assert not torch.allclose(expect, torch.maximum(last, seen))  # the fading term acts
    torch.testing.assert_close(out.visibility, expect)
    torch.testing.assert_close(out.slot_reset, (expect > 0.8).float())


def test_reinitialisation_and_draws(gen):
    od = ObjectDiscovery(O, G)
    od.init.init.fill_(9.5)
    error, mask, p, g, pi = call_inputs(gen)
    visibility = torch.tensor([[0.9, 0.1, 0.95], [0.0, 0.85, 0.2]])
    mask = mask * 0.5  # seen <= 0.5: visibility stays the given memory (κ = 1 keeps the maximum)
    with record_draws() as log:
        out = od(error, mask, p, g, pi, visibility)
    assert [(k, tuple(v.shape)) for k, v in log] == [("rand_like", (B, 1, H, W)), ("multinomial", (B, O))]
    take(log, "rand_like")
    idx = take(log, "multinomial")
    keep = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    torch.testing.assert_close(out.slot_reset, keep)
    k = keep.view(B, O, 1)
    torch.testing.assert_close(out.gestalt.view(B, O, -1), g.view(B, O, -1) * k)
    torch.testing.assert_close(out.priority, pi * keep - 5 * (1 - keep))
    new = torch.stack([(idx % W) / (W / 2) - 1, (idx // W) / (H / 2) - 1, torch.full((B, O), 5.0),
                       torch.full((B, O), -5.0)], -1)
    torch.testing.assert_close(out.position.view(B, O, 4), p.view(B, O, 4) * k + new * (1 - k))
    # injected indices give the same result without drawing
    state = torch.get_rng_state()
    again = od(error, mask, p, g, pi, visibility, sampled_indices=idx)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(again.position, out.position)
    # sampling follows the error map: a single hot pixel takes every sample; a flat map below 0.1
    # samples from the injected uniform noise instead
    hot = torch.zeros(B, 1, H, W)
    hot[0, 0, 4, 5], hot[1, 0, 1, 7] = 1.0, 0.5
    start = od(hot, None, None, None, None, None)
    torch.testing.assert_close(start.position.view(B, O, 4)[0, :, :2], torch.tensor([[5 / 4 - 1, 4 / 3 - 1]] * O))
    torch.testing.assert_close(start.position.view(B, O, 4)[1, :, :2], torch.tensor([[7 / 4 - 1, 1 / 3 - 1]] * O))
    assert torch.all(start.slot_reset == 0) and torch.all(start.gestalt == 0) and torch.all(start.priority == -5)
    flat = torch.full((B, 1, H, W), 0.05)
    noise = torch.zeros(B, 1, H, W)
    noise[:, 0, 2, 3] = 1.0
    drawn = od(flat, None, None, None, None, None, uniform_noise=noise)
    torch.testing.assert_close(drawn.position.view(B, O, 4)[:, :, :2],
                               torch.tensor([3 / 4 - 1, 2 / 3 - 1]).expand(B, O, 2))
    # gradients: latents of kept slots, depth and std through re-initialised ones
    leaves = [t.clone().requires_grad_() for t in (p, g, pi)]
    out = od(error, mask, *leaves, visibility, sampled_indices=idx)
    (out.position.sum() + out.gestalt.sum() + out.priority.sum()).backward()
    torch.testing.assert_close(leaves[0].grad.view(B, O, 4), k.expand(B, O, 4))
    assert od.depth.grad.item() == 3 and od.std.grad.item() == 3  # three re-initialised slots


def test_config_and_bad_arguments(gen):
    cfg = json.loads((REPO / "configs" / "loci-s.json").read_text())["model"]
    od = ObjectDiscovery.from_config(cfg)
    assert od.num_slots == 16 and od.gestalt_size == 256 and od.init.init.item() == -1.0
    assert set(od.state_dict()) == {"std", "depth", "threshold", "init.init"}  # upstream's keys
    with pytest.raises(ValueError, match="object_permanence_strength"):
        ObjectDiscovery(O, G, object_permanence_strength=1.5)
    with pytest.raises(ValueError, match="entity_pretraining_steps"):
        ObjectDiscovery(O, G, entity_pretraining_steps=2e4)
    error, mask, p, g, pi = call_inputs(gen)
    with pytest.raises(ValueError, match="mask_last: expected"):
        od = ObjectDiscovery(O, G)
        od(error, mask[:, :O], p, g, pi)
    with pytest.raises(ValueError, match="gestalt: expected"):
        od(error, mask, p, g[:, 1:], pi)
    with pytest.raises(ValueError, match="sampled_indices: expected"):
        od(error, mask, p, g, pi, sampled_indices=torch.zeros(B, O + 1, dtype=torch.long))


@pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
@pytest.mark.parametrize("counter,strength", [(None, 1.0), (0.2, 1.0), (9.5, 1.0), (0.2, 0.6)])
def test_upstream_parity(gen, counter, strength):
    """A sequence start and 3 further calls with upstream's draws injected: latents, slot_reset, the
    running visibility and the counter equal upstream's; gradients within 1e-4 relative."""
    with upstream_modules(UPSTREAM) as import_upstream:
        up = import_upstream("nn.object_discovery").ObjectDiscovery(O, 3 * G + 1, strength, 1e4)
        ours = ObjectDiscovery(O, G, strength, 1e4)
        if counter is not None:
            up.init.init.fill_(counter)
        ours.load_state_dict(up.state_dict(), strict=True)
        with torch.no_grad():
            for m in (up, ours):
                m.std.fill_(0.13), m.depth.fill_(0.7)
        visibility, resets = None, []
        for call in range(4):
            error, mask, p, g, pi = call_inputs(gen)
            if call == 0:
                mask = p = g = pi = None
            elif call == 2:
                error = error * 0.05  # below the floor: uniform noise is used
            leaves_u = [None if t is None else t.clone().requires_grad_() for t in (p, g, pi)]
            leaves_o = [None if t is None else t.clone().requires_grad_() for t in (p, g, pi)]
            with record_draws() as log:
                ref = up(error, mask, *leaves_u)
            uniform, idx = take(log, "rand_like"), take(log, "multinomial")
            assert not log
            out = ours(error, mask, *leaves_o, visibility, uniform_noise=uniform, sampled_indices=idx)
            visibility = out.visibility
            for a, u in zip(out[:4], ref):
                assert rel_err(a, u) < 1e-6
            resets.append(out.slot_reset)
            assert torch.equal(visibility.reshape(-1, 1), up.last_mask)
            assert torch.equal(ours.init.init, up.init.init)
            w = [torch.linspace(-1, 2, t.numel()).view_as(t) for t in ref[:3]]
            params_u, params_o = [up.std, up.depth], [ours.std, ours.depth]
            lu = params_u + [t for t in leaves_u if t is not None]
            lo = params_o + [t for t in leaves_o if t is not None]
            gu = torch.autograd.grad(sum((a * b).sum() for a, b in zip(w, ref[:3])), lu)
            go = torch.autograd.grad(sum((a * b).sum() for a, b in zip(w, out[:3])), lo)
            for a, u in zip(go, gu):
                assert rel_err(a, u) < 1e-4
        kept = torch.stack(resets[1:])
        assert 0 < kept.mean() < 1  # kept and re-initialised slots both occur
        start = torch.tensor([-1.0 if counter is None else counter])
        moved = 4 if counter != 9.5 and not (counter == 0.2 and strength < torch.tanh(start).item()) else 0
        assert (ours.init.init - start).item() == pytest.approx(moved * 1e-4, abs=1e-6)
