"""Ranger = Lookahead(RAdam) with upstream's quirks: skipped first steps, lazy slow weights, eps."""
import copy

import pytest
import torch

from loci_fast.train.ranger import Ranger


def _params(gen, n=5):
    return [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64))]


def _run(opt, params, grads):
    for g in grads:
        params[0].grad = g.clone()
        opt.step()


def test_first_five_steps_do_not_move_the_weights(gen):
    params = _params(gen)
    start = params[0].detach().clone()
    opt = Ranger(params, lr=1e-2, weight_decay=0.1)
    grads = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(6)]
    _run(opt, params, grads[:5])
    assert torch.equal(params[0].detach(), start)  # N_sma < 5: no update, no decay
    _run(opt, params, grads[5:])
    assert not torch.equal(params[0].detach(), start)


def test_step_six_matches_the_radam_formula(gen):
    params = _params(gen)
    p0 = params[0].detach().clone()
    lr, wd, b1, b2 = 1e-2, 0.05, 0.9, 0.999
    opt = Ranger(params, lr=lr, weight_decay=wd, betas=(b1, b2), k=1000)
    grads = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(6)]
    _run(opt, params, grads)
    m = torch.zeros(5, dtype=torch.float64)
    v = torch.zeros(5, dtype=torch.float64)
    for g in grads:
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
    t = 6
    n_max = 2 / (1 - b2) - 1
    n_sma = n_max - 2 * t * b2**t / (1 - b2**t)
    assert n_sma >= 5
    size = ((1 - b2**t) * (n_sma - 4) / (n_max - 4) * (n_sma - 2) / n_sma * n_max / (n_max - 2)) ** 0.5
    size /= 1 - b1**t
    expected = p0.float().double() * (1 - wd * lr) - size * lr * m / (v.sqrt() + 1e-16)
    # The update runs in fp32 (as upstream), so compare at fp32 precision.
    torch.testing.assert_close(params[0].detach(), expected, rtol=1e-6, atol=1e-7)


def test_lookahead_pulls_fast_weights_half_way_back_every_k_steps(gen):
    params = _params(gen)
    grads = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(12)]
    opt = Ranger(params, lr=1e-2, k=6)
    _run(opt, params, grads[:6])
    slow6 = params[0].detach().clone()  # the first sync copies the fast weights: a no-op
    # The same trajectory without Lookahead from step 6 on gives the fast weights at step 12.
    twin = [torch.nn.Parameter(slow6.clone())]
    plain = Ranger(twin, lr=1e-2, k=10**9)
    plain.load_state_dict(copy.deepcopy(opt.state_dict()))
    plain.param_groups[0]["lookahead_k"] = 10**9
    _run(opt, params, grads[6:])
    _run(plain, twin, grads[6:])
    expected = slow6 + 0.5 * (twin[0].detach() - slow6)
    torch.testing.assert_close(params[0].detach(), expected, rtol=0, atol=1e-12)


def test_state_dict_round_trip_continues_identically(gen):
    params = _params(gen)
    grads = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(14)]
    opt = Ranger(params, lr=1e-2, weight_decay=1e-3)
    _run(opt, params, grads[:8])
    saved_params, saved_state = params[0].detach().clone(), copy.deepcopy(opt.state_dict())
    _run(opt, params, grads[8:])
    resumed = [torch.nn.Parameter(saved_params)]
    opt2 = Ranger(resumed, lr=1e-2, weight_decay=1e-3)
    opt2.load_state_dict(saved_state)
    _run(opt2, resumed, grads[8:])
    assert torch.equal(resumed[0].detach(), params[0].detach())
    assert "slow_buffer" in saved_state["state"][0]


def test_parameters_without_gradient_are_left_alone(gen):
    a, b = _params(gen), _params(gen)
    b_start = b[0].detach().clone()
    opt = Ranger(a + b, lr=1e-2, weight_decay=0.5)
    for _ in range(12):
        a[0].grad = torch.randn(5, generator=gen, dtype=torch.float64)
        opt.step()
    assert torch.equal(b[0].detach(), b_start)


@pytest.mark.parametrize("kwargs", [dict(lr=-1), dict(eps=-1), dict(betas=(1.0, 0.9)),
                                    dict(alpha=2.0), dict(k=0)])
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError, match="Ranger"):
        Ranger([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_mixed_dtypes_and_step_counts_update_as_if_each_parameter_were_alone(gen):
    # The foreach buckets (step, device, dtype) must not leak state between parameters.
    def make():
        return [torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(i)).to(dt))
                for i, dt in enumerate((torch.float32, torch.bfloat16, torch.float32, torch.float64))]

    together, alone = make(), make()
    opt = Ranger(together, lr=1e-2, weight_decay=0.1, k=4)
    singles = [Ranger([p], lr=1e-2, weight_decay=0.1, k=4) for p in alone]
    for it in range(15):
        grads = [torch.randn(4, 3, generator=gen).to(p.dtype) for p in together]
        for i, (a, b, g) in enumerate(zip(together, alone, grads)):
            late = i == 2 and it < 7  # this one has no gradient for the first 7 steps
            a.grad, b.grad = (None, None) if late else (g.clone(), g.clone())
        opt.step()
        for s in singles:
            s.step()
    for a, b in zip(together, alone):
        assert a.dtype == b.dtype and torch.equal(a.detach(), b.detach())
    assert opt.state[together[2]]["step"] == 8 and opt.state[together[0]]["step"] == 15
