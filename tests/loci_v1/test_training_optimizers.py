"""LociV1Optimizer: upstream's five optimizers in one (loci.md §3.2 item 4, §3.4).

The Adam group is torch.optim.Adam bit for bit; the RAdam groups follow the spec's formula (no move for a
parameter's first 5 steps, then lr·r_t·m/(√v + eps) with √v not bias-corrected), checked against a float64
transcription; the per-iteration schedule steps exactly the groups upstream steps; parameters without a
gradient keep their state; the update counter travels in the state dict.
"""
import math

import pytest
import torch

from loci_fast.loci_v1 import LociV1
from loci_fast.loci_v1.optimizers import GROUPS, LociV1Optimizer, radam_step_size
from tests.loci_v1.configs import tiny


def _opt(model, **kw):
    return LociV1Optimizer.for_model(model, learning_rate=1e-3, background_learning_rate=2e-3, **kw)


def _fill_grads(model, gen):
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model, before):
    groups = {"initial_states": "init", "encoder": "encoder", "decoder": "decoder", "predictor": "predictor",
              "background": "background"}
    return {groups[n.split(".")[0]] for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_groups_learning_rates_and_coverage():
    model = LociV1.from_config(tiny(1))
    opt = _opt(model)
    assert [g["name"] for g in opt.param_groups] == list(GROUPS)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([3e-2, 1e-3, 1e-3, 1e-3, 2e-3])
    assert opt.group("init")["betas"] == (0.9, 0.99) and opt.group("encoder")["betas"] == (0.9, 0.999)
    assert all(g["eps"] == 1e-16 for g in opt.param_groups)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # every parameter once


def test_adam_group_is_torch_adam_bitwise(gen):
    model = LociV1.from_config(tiny(1))
    twin = [p.detach().clone().requires_grad_(True) for p in model.initial_states.parameters()]
    ref = torch.optim.Adam(twin, lr=3e-2, betas=(0.9, 0.99), eps=1e-16)
    opt = _opt(model)
    for _ in range(4):
        for p, q in zip(model.initial_states.parameters(), twin):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt.plan(first_of_sequence=True)
        opt.step()
        ref.step()
        assert opt.stepped == ("init",)
        for p, q in zip(model.initial_states.parameters(), twin):
            assert torch.equal(p, q)


def _radam_f64(p, grads, lr, beta1=0.9, beta2=0.999, eps=1e-16):
    """The spec's RAdam (loci.md §3.4) in float64, one parameter."""
    p, m, v = p.double().clone(), torch.zeros_like(p, dtype=torch.float64), torch.zeros_like(p, dtype=torch.float64)
    n_max = 2 / (1 - beta2) - 1
    for t, g in enumerate(grads, 1):
        g = g.double()
        v = beta2 * v + (1 - beta2) * g * g
        m = beta1 * m + (1 - beta1) * g
        n_t = n_max - 2 * t * beta2 ** t / (1 - beta2 ** t)
        if n_t >= 5:
            r = math.sqrt((1 - beta2 ** t) * (n_t - 4) / (n_max - 4) * (n_t - 2) / n_t * n_max / (n_max - 2))
            p = p - lr * r / (1 - beta1 ** t) * m / (v.sqrt() + eps)
    return p


def test_radam_groups_follow_the_spec_and_wait_five_steps(gen):
    model = LociV1.from_config(tiny(1))
    opt = _opt(model, entity_pretraining_steps=0)
    p = model.encoder.get_parameter(next(n for n, q in model.encoder.named_parameters() if q.dim() == 4))
    start = p.detach().clone()
    grads = []
    for k in range(8):
        _fill_grads(model, gen)
        grads.append(p.grad.clone())
        opt.plan(first_of_sequence=False)
        opt.step()
        assert opt.stepped == ("encoder", "decoder", "predictor", "background")
        if k < 5:
            assert torch.equal(p, start), k  # moments advance, the weight does not
    assert not torch.equal(p, start)
    expected = _radam_f64(start, grads, 1e-3)
    # the update within 1e-4 relative (the float32 weight itself rounds at ~1e-9, the update is ~1e-4)
    assert (p.double() - expected).abs().max() <= 1e-4 * (expected - start.double()).abs().max()
    assert radam_step_size(5, 0.9, 0.999) is None and radam_step_size(6, 0.9, 0.999) > 0
    assert opt.state[p]["step"] == 8 and opt.num_updates == 8


@pytest.mark.parametrize("alpha, entity, first, bg_only, expected", [
    (0.0, 30000, True, False, {"init"}),
    (0.0, 30000, False, False, {"encoder", "decoder", "predictor"}),  # background waits (gate shut)
    (0.0, 0, False, False, {"encoder", "decoder", "predictor", "background"}),
    (1.0, 30000, False, False, {"encoder", "decoder", "predictor", "background"}),  # the gate is open
    (0.0, 30000, False, True, {"background"}),  # the first iteration of a run
])
def test_schedule_steps_upstreams_groups(alpha, entity, first, bg_only, expected, gen):
    model = LociV1.from_config(tiny(1))
    with torch.no_grad():
        model.background.alpha.fill_(alpha)
    opt = _opt(model, entity_pretraining_steps=entity)
    for _ in range(6):  # past RAdam's five silent steps
        _fill_grads(model, gen)
        opt.plan(first_of_sequence=first, background_only=bg_only)
        opt.step()
    before = _snapshot(model)
    _fill_grads(model, gen)
    opt.plan(first_of_sequence=first, background_only=bg_only)
    opt.step()
    assert set(opt.stepped) == expected
    assert _changed(model, before) == expected


def test_background_joins_after_entity_pretraining_steps(gen):
    model = LociV1.from_config(tiny(1))
    opt = _opt(model, entity_pretraining_steps=3)
    stepped = []
    for _ in range(5):
        _fill_grads(model, gen)
        opt.plan(first_of_sequence=False)
        opt.step()
        stepped.append("background" in opt.stepped)
    assert stepped == [False, False, False, True, True]  # upstream: num_updates >= 3 before the step


def test_none_gradients_are_skipped_step_count_included(gen):
    model = LociV1.from_config(tiny(1))
    opt = _opt(model)
    _fill_grads(model, gen)
    model.background.mask.grad = None
    opt.plan(first_of_sequence=False, background_only=True)
    opt.step()
    assert model.background.mask not in opt.state and opt.state[model.background.alpha]["step"] == 1


def test_step_without_plan_raises_and_state_round_trips(gen):
    model = LociV1.from_config(tiny(1))
    opt = _opt(model)
    with pytest.raises(RuntimeError, match="plan"):
        opt.step()
    for first in (True, False, False):
        _fill_grads(model, gen)
        opt.plan(first_of_sequence=first)
        opt.step()
    other = _opt(LociV1.from_config(tiny(1)))
    other.load_state_dict(opt.state_dict())
    assert other.num_updates == 3
    assert [g["name"] for g in other.param_groups] == list(GROUPS)
    with pytest.raises(ValueError, match="groups"):
        LociV1Optimizer([{"name": "encoder", "params": list(model.encoder.parameters())}])


def test_init_whole_sequence_steps_once_with_the_summed_gradient(gen):
    """compat init_first_iteration_gradient false (§11.10): the seeder's Adam sees the whole video."""
    model = LociV1.from_config(tiny(1))
    opt = _opt(model, init_whole_sequence=True)
    init = list(model.initial_states.parameters())
    twin = [p.detach().clone().requires_grad_(True) for p in init]
    ref = torch.optim.Adam(twin, lr=3e-2, betas=(0.9, 0.99), eps=1e-16)
    total = [torch.zeros_like(p) for p in init]
    before = _snapshot(model)
    stepped = []
    for k in range(4):
        _fill_grads(model, gen)
        for s, p in zip(total, init):
            s += p.grad
        opt.plan(first_of_sequence=k == 0, last_of_sequence=k == 3)
        opt.step()
        stepped.append(opt.stepped)
        if k < 3:
            assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith("initial_"))
    assert stepped[0] == () and "init" not in stepped[1] and stepped[3][0] == "init"
    for q, s in zip(twin, total):
        q.grad = s
    ref.step()
    for p, q in zip(init, twin):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-9)
    assert all("grad_sum" not in opt.state[p] for p in init)  # the next video starts afresh
