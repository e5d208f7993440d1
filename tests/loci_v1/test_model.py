"""The original Loci's model without an upstream checkout: shapes over several frames at both levels,
injected draws and upstream's draw order, the explicit state (clone, detach, state-dict round trip),
the noise compat flag, the regulariser warm-up, gradient paths, and package isolation."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loci_fast.loci_v1 import LociV1, LociV1State, StepNoise
from loci_fast.loci_v1.geometry import gaussian_maps, prioritize
from tests.loci_v1.configs import frame_size, tiny
from tests.loci_v1.upstream_v1 import record_draws

REPO = Path(__file__).resolve().parents[2]


def model(level=1, warmup=2, **changes) -> LociV1:
    torch.manual_seed(0)
    m = LociV1.from_config(tiny(level, **changes), teacher_forcing=warmup)
    with torch.no_grad():  # open the alpha gates so every branch matters
        for name, p in m.named_parameters():
            if name.split(".")[-1] in ("alpha", "mask_alpha", "object_alpha", "std_alpha", "init"):
                p.fill_(0.5)
    return m


def inputs(m: LociV1, gen, frames=4):
    cfg = tiny(m.level)
    h, w = frame_size(cfg)
    b = cfg["batch_size"]
    return torch.rand(frames, b, 3, h, w, generator=gen), torch.rand(b, 3, h, w, generator=gen)


def noise_for(m: LociV1, b: int, gen) -> StepNoise:
    o, g = m.num_objects, m.gestalt_size
    hd = m.cells[0].num_hidden
    return StepNoise(init_gestalt=torch.randn(b * o, g, generator=gen), init_candidates=torch.rand(b * o * 10, 2, generator=gen),
                     gate=[torch.zeros(hd) for _ in m.cells], tracker=torch.randn(b, o, 1, generator=gen),
                     bottleneck=torch.randn(b * o, g, 1, 1, generator=gen), priority=torch.randn(b * o, 1, generator=gen))


def run(m, frames, bg, noises, state=None):
    outs, err = [], None
    for t, frame in enumerate(frames):
        out, state = m.step(frame, bg, state, err, noises[t])
        err = (out.output - frame).abs().mean(1, keepdim=True).detach()
        outs.append(out)
    return outs, state


@pytest.mark.parametrize("level", [1, 2])
def test_shapes_over_frames(level, gen):
    m = model(level)
    frames, bg = inputs(m, gen)
    b, o, g = frames.shape[1], m.num_objects, m.gestalt_size
    h, w = frames.shape[-2:]
    outs, state = run(m, frames, bg, [None] * len(frames))
    for out in outs:
        assert out.output.shape == (b, 3, h, w) and out.mask.shape == (b, o + 1, h, w)
        assert out.rgb.shape == (b, 3 * (o + 1), h, w) and out.background.shape == (b, 3, h, w)
        assert out.position.shape == (b, 3 * o) and out.gestalt.shape == (b, g * o) and out.priority.shape == (b, o)
        assert out.snitch.shape == (b, 2) and len(out.openings) == 2
        assert torch.allclose(out.mask.sum(1), torch.ones(b, h, w), atol=1e-5)
        assert torch.isfinite(out.output).all()
    assert state.reg_calls == len(frames) and state.mask.shape == (b, o + 1, h, w)


def test_draw_order_is_upstreams(gen):
    """randn (gestalts), rand (candidates), one normal per GateL0RD layer, then three randn_like."""
    m = model()
    frames, bg = inputs(m, gen, 1)
    with record_draws() as log:
        m.step(frames[0], bg)
    assert [k for k, _ in log] == ["randn", "rand", "normal", "normal", "randn_like", "randn_like", "randn_like"]
    b, o, g = frames.shape[1], m.num_objects, m.gestalt_size
    assert [tuple(v.shape) for _, v in log] == [(b * o, g), (b * o * 10, 2), (24,), (24,), (b, o, 1),
                                                 (b * o, g, 1, 1), (b * o, 1)]


def test_injected_draws_decide_the_outputs(gen):
    m = model()
    frames, bg = inputs(m, gen)
    noises = [noise_for(m, frames.shape[1], gen) for _ in frames]
    torch.manual_seed(1)
    a, _ = run(m, frames, bg, noises)
    torch.manual_seed(2)  # another global stream changes nothing when every draw is injected
    with record_draws() as log:
        b, _ = run(m, frames, bg, noises)
    assert log == []
    for x, y in zip(a, b):
        for f in ("output", "mask", "position", "gestalt", "priority", "snitch"):
            assert torch.equal(getattr(x, f), getattr(y, f)), f
    other = [StepNoise(**{**n.__dict__, "priority": n.priority + 1}) for n in noises]
    c, _ = run(m, frames, bg, other)
    assert not torch.equal(c[-1].priority, a[-1].priority)
    with pytest.raises(ValueError, match="init_candidates"):
        m.step(frames[0], bg, noise=StepNoise(init_candidates=torch.rand(3, 2)))


def test_state_round_trip_continues_identically(gen):
    m = model()
    frames, bg = inputs(m, gen, 5)
    noises = [noise_for(m, frames.shape[1], gen) for _ in frames]
    _, state = run(m, frames[:3], bg, noises[:3])
    restored = LociV1State.from_state_dict({k: v.clone() for k, v in state.state_dict().items()})
    snapshot = state.clone()
    err = torch.rand(frames.shape[1], 1, *frames.shape[-2:], generator=gen)
    a, _ = run_from(m, frames[3:], bg, noises[3:], state, err)
    b, _ = run_from(m, frames[3:], bg, noises[3:], restored, err)
    c, _ = run_from(m, frames[3:], bg, noises[3:], snapshot, err)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x.output, y.output) and torch.equal(x.output, z.output)
        assert torch.equal(x.position_loss, y.position_loss)
    with pytest.raises(ValueError, match="unknown keys"):
        LociV1State.from_state_dict({**state.state_dict(), "bogus": torch.zeros(1)})


def run_from(m, frames, bg, noises, state, err):
    outs = []
    for frame, noise in zip(frames, noises):
        out, state = m.step(frame, bg, state, err, noise)
        err = (out.output - frame).abs().mean(1, keepdim=True).detach()
        outs.append(out)
    return outs, state


def test_traces_carry_over_and_a_fresh_state_resets(gen):
    m = model()
    frames, bg = inputs(m, gen, 3)
    noises = [noise_for(m, frames.shape[1], gen) for _ in frames]
    _, state = run(m, frames, bg, noises)
    assert all(t.abs().sum() > 0 for t in state.traces[0])
    fresh = m.initial_state(frames.shape[1])
    assert fresh.at_sequence_start and all(t.abs().sum() == 0 for t in fresh.traces[0])


def test_regularisers_wait_for_the_warm_up_and_train_the_seeder(gen):
    m = model(warmup=2)
    frames, bg = inputs(m, gen, 4)
    outs, _ = run(m, frames, bg, [None] * 4)
    assert [float(o.position_loss) == 0 for o in outs] == [True, True, False, False]
    assert float(outs[3].time_loss) > 0 and float(outs[3].object_loss) >= 0
    m.zero_grad()
    out, _ = m.step(frames[0], bg)
    torch.nn.functional.binary_cross_entropy(out.output.clip(0, 1), frames[1]).backward()
    # the own-appearance input is not detached (§11.15): re-seeded slots train the seeder's parameters
    assert m.initial_states.gestalt_mean.grad.abs().sum() > 0
    assert m.background.alpha.grad.item() == pytest.approx(-0.5)  # push_to_inf: -1 times the 1/2


def test_evaluate_and_test_skip_the_regularisers(gen):
    m = model()
    frames, bg = inputs(m, gen, 1)
    out, state = m.step(frames[0], bg, test=True)
    assert state.reg_calls == 0 and float(out.position_loss) == 0
    out, _ = m.step(frames[0], bg, evaluate=True)
    assert out.rgb.shape[1] == 3 * (m.num_objects + 1)


def test_noise_in_eval_flag(gen):
    frames, bg = inputs(model(), gen, 1)
    on = model()
    off = model(compat={"noise_in_eval": False})
    off.eval()
    with record_draws() as log:
        off.step(frames[0], bg)
    assert [k for k, _ in log] == ["randn", "rand", "normal", "normal"]  # no binarising/priority noise
    on.eval()
    with record_draws() as log:
        on.step(frames[0], bg)
    assert [k for k, _ in log].count("randn_like") == 3  # upstream: noise in evaluation too
    with pytest.raises(ValueError, match="noise_in_evl"):
        model(compat={"noise_in_evl": False})


def test_batch_size_is_not_baked_in(gen):
    m = model()
    frames, bg = inputs(m, gen, 1)
    m.step(frames[0], bg)
    out, _ = m.step(frames[0][:1], bg[:1])
    assert out.output.shape[0] == 1


def test_gaussians_use_row_col_and_the_plus_one_sigma(gen):
    g = gaussian_maps(torch.tensor([[-1.0, 1.0, 0.0]]), (5, 9))[0, 0]
    assert g[0, -1] == 1 and g.argmax() == 8  # row -1 = top, col +1 = right
    s = torch.rand(1, generator=gen).item()
    g = gaussian_maps(torch.tensor([[0.0, 0.0, s]]), (5, 9))[0, 0]
    sigma_row = (1 + 9 * s) / 5
    assert g[3, 4].item() == pytest.approx(torch.exp(torch.tensor(-(0.5 ** 2) / (2 * sigma_row ** 2))).item(), rel=1e-5)
    maps = torch.rand(2, 3, 4, 4, generator=gen)
    front = prioritize(maps, torch.tensor([[0.0, 25.0, 50.0]] * 2))
    assert torch.allclose(front[:, 2], maps[:, 2], atol=1e-9)  # the front slot keeps its map
    assert (front[:, 0] <= maps[:, 0]).all()


def test_loci_v1_never_imports_the_loci_s_model():
    code = ("import sys, loci_fast.loci_v1, loci_fast.loci_v1.upstream; "
            "bad = [k for k in sys.modules if k.startswith('loci_fast.model')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    for path in (REPO / "loci_fast" / "loci_v1").glob("*.py"):
        text = path.read_text()
        assert "from loci_fast.model" not in text and "import loci_fast.model" not in text, path


def test_grid_metrics_whole_cells_and_upstreams_row_division():
    from loci_fast.loci_v1.tracker import CATER_CAMERA, grid_metrics, world_to_screen

    cam = torch.tensor(CATER_CAMERA)
    # cell centres of classes 14 (col 2, row 2) predicted; targets one column right (15) or one row down (20)
    centre = torch.tensor([[2 - 2.5, 2 - 2.5, 0.3421497941017151]] * 2)
    screen = world_to_screen(centre, cam)
    target = torch.tensor([15, 20])
    l1_up, top1, _, label = grid_metrics(screen, target, cam)
    l1_fixed = grid_metrics(screen, target, cam, float_row_division=False)[0]
    assert label.tolist() == [14, 14] and float(top1) == 0
    assert float(l1_fixed) == pytest.approx(1.0)  # one cell off either way
    assert float(l1_up) == pytest.approx(((1 + 1 / 6) + 1.0) / 2)  # upstream: a column miss counts 1 + 1/6


def test_full_size_parameter_counts_are_upstreams():
    """configs/cater-stage3.json (upstream's cater.json sizes): loci.md §2.15's counts and 223 state-dict keys."""
    from loci_fast.config import load_config

    m = LociV1.from_config(load_config(REPO / "configs" / "cater-stage3.json").model)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert [count(getattr(m, n)) for n in ("initial_states", "encoder", "decoder", "predictor", "background")] == \
        [193, 835_774, 706_608, 1_111_342, 307_201]
    assert count(m.predictor.tracker) == 38_909 and count(m) == 2_961_118
    sd = m.state_dict()
    assert len(sd) == 223 and "initial_states.threshold" in sd and "camera" not in sd
