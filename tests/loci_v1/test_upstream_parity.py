"""Parity of the original Loci's per-frame step with upstream f5a7023 (needs LOCI_FAST_UPSTREAM_V1).

Same weights (upstream's, perturbed so that every alpha-gated branch matters), same inputs, upstream's
random draws recorded and injected into ours. Over 5 frames (a reset, regulariser warm-up and active
regularisers, the error-map recursion) every output and the GateL0RD traces agree within 1e-5
relative in float32, and each frame's parameter gradients within 1e-4.
"""
import pytest
import torch
import torch.nn.functional as F

from loci_fast.kernels import use_backend
from loci_fast.loci_v1 import LociV1, StepNoise
from loci_fast.loci_v1.tracker import CATER_CAMERA, CATER_ZERO_ELEVATION, screen_to_world, world_to_screen
from tests.loci_v1.configs import frame_size, tiny
from tests.loci_v1.upstream_v1 import Namespace, perturb, record_draws, rel_err, ROOT, upstream_v1

pytestmark = pytest.mark.skipif(not ROOT, reason="set LOCI_FAST_UPSTREAM_V1 to an upstream Loci checkout (f5a7023)")

FRAMES = 5
WARMUP = 2  # teacher_forcing: the regularisers are 0 for the first 2 calls, active afterwards



def noise_from(log: list, layers: int) -> StepNoise:
    """Upstream's draws of one frame, in its order (§2.11), as our injected noise."""
    kinds = ["randn", "rand"] + ["normal"] * layers + ["randn_like"] * 3
    assert [k for k, _ in log] == kinds, f"upstream's draw order changed: {[k for k, _ in log]}"
    v = [t for _, t in log]
    return StepNoise(init_gestalt=v[0], init_candidates=v[1], gate=v[2:2 + layers], tracker=v[2 + layers],
                     bottleneck=v[3 + layers], priority=v[4 + layers])


def frame_loss(out, prio_loss_parts, target, snitch, xyz, cam):
    """BCE of the composite + the three regularisers + 0.01 × the screen-space tracking loss."""
    bce = F.binary_cross_entropy(out.clip(0, 1), target)
    track = torch.mean((snitch - world_to_screen(xyz, cam)) ** 2)
    return bce + sum(prio_loss_parts) + 0.01 * track


def rms(x):
    return torch.sqrt((x ** 2).mean(dim=1, keepdim=True))


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.slow)])
@pytest.mark.parametrize("level", [1, 2])
def test_step_parity_with_upstream(level, backend, gen):
    """The e-prop op through either kernel backend (Triton interpreted on the CPU)."""
    with use_backend(backend):
        _step_parity(level, gen)


def _step_parity(level, gen):
    cfg = tiny(level)
    b = cfg["batch_size"]
    h, w = frame_size(cfg)
    frames = torch.rand(FRAMES + 1, b, 3, h, w, generator=gen)
    bg = torch.rand(b, 3, h, w, generator=gen)
    xyz = torch.rand(FRAMES, b, 3, generator=gen) * 6 - 3
    cam = torch.tensor(CATER_CAMERA)
    with upstream_v1() as imp:
        up = imp("model.loci").Loci(Namespace(cfg), camera_view_matrix=CATER_CAMERA,
                                    zero_elevation=CATER_ZERO_ELEVATION, teacher_forcing=WARMUP)
        perturb(up, gen)
        up.background.set_background(bg.clone())
        ours = LociV1.from_config(cfg, teacher_forcing=WARMUP)
        ours.load_state_dict(up.state_dict(), strict=True)
        up_cells = [up.predictor.predictor.layers[2 * (i + 1)].l0rd for i in range(cfg["predictor"]["layers"])]
        prev_u, err_u, err_o, state = (None,) * 4, None, None, None
        for t in range(FRAMES):
            frame, target = frames[t], frames[t + 1]
            with record_draws() as log:
                ru = up(frame, err_u, *prev_u, reset=(t == 0), detach=True)
            noise = noise_from(log, len(up_cells))
            ro, state = ours.step(frame, bg, state, err_o, noise)
            pairs = {"output": (ro.output, ru[0]), "position": (ro.position, ru[1]), "gestalt": (ro.gestalt, ru[2]),
                     "priority": (ro.priority, ru[3]), "mask": (ro.mask, ru[4]), "rgb": (ro.rgb, ru[5]),
                     "background": (ro.background, ru[6]), "snitch": (ro.snitch, ru[10])}
            for name, (a, ref) in pairs.items():
                assert a.shape == ref.shape, (t, name)
                assert rel_err(a, ref) < 1e-5, (t, name, rel_err(a, ref))
            for i, (a, ref) in enumerate(zip((ro.position_loss, ro.object_loss, ro.time_loss), ru[7:10])):
                assert float(ref) == pytest.approx(float(a), rel=1e-5, abs=1e-12), (t, "regulariser", i)
            assert (t >= WARMUP) == (float(ru[7]) > 0)  # the regularisers are active after the warm-up
            # gradients of one frame's loss (e-prop through the traces of all earlier frames)
            up.zero_grad()
            ours.zero_grad()
            frame_loss(ru[0], ru[7:10], target, ru[10], xyz[t], cam).backward()
            frame_loss(ro.output, (ro.position_loss, ro.object_loss, ro.time_loss), target, ro.snitch,
                       xyz[t], cam).backward()
            theirs = dict(up.named_parameters())
            for name, p in ours.named_parameters():
                q = theirs[name]
                assert (p.grad is None) == (q.grad is None), (t, name)
                if q.grad is not None:  # 1e-4 relative; gradients that cancel to float32 noise (< 1e-9) aside
                    diff = (p.grad - q.grad).abs().max().item()
                    assert diff <= 1e-4 * q.grad.abs().max().item() + 1e-9, (t, name, diff)
            for i, cell in enumerate(up_cells):
                for ours_t, ref in zip(state.traces[i], (cell.e_w_gx, cell.e_w_gh, cell.e_b_g, cell.e_w_rx,
                                                         cell.e_w_rh, cell.e_b_r)):
                    assert rel_err(ours_t, ref) < 1e-5, (t, "trace", i)
                assert rel_err(state.hidden[i], cell.h_last) < 1e-5, (t, "hidden", i)
            # the training loop's error-map recursion and detached state (loci.md §3.2)
            err_u = (torch.sqrt(rms(target - ru[0])) * rms(target - ru[6])).detach()
            err_o = (torch.sqrt(rms(target - ro.output)) * rms(target - ro.background)).detach()
            prev_u = tuple(x.detach() for x in (ru[4], ru[1], ru[2], ru[3]))


def test_default_draws_follow_upstreams_stream(gen):
    """Without injection our step consumes the global RNG exactly as upstream: same seed, same outputs."""
    cfg = tiny(1)
    h, w = frame_size(cfg)
    frame, bg = torch.rand(2, 3, h, w, generator=gen), torch.rand(2, 3, h, w, generator=gen)
    with upstream_v1() as imp:
        up = imp("model.loci").Loci(Namespace(cfg), camera_view_matrix=CATER_CAMERA,
                                    zero_elevation=CATER_ZERO_ELEVATION, teacher_forcing=WARMUP)
        perturb(up, gen)
        up.background.set_background(bg.clone())
        ours = LociV1.from_config(cfg, teacher_forcing=WARMUP)
        ours.load_state_dict(up.state_dict(), strict=True)
        torch.manual_seed(11)
        ru = up(frame, reset=True, detach=True)
        torch.manual_seed(11)
        ro, _ = ours.step(frame, bg)
        for a, ref in ((ro.output, ru[0]), (ro.gestalt, ru[2]), (ro.priority, ru[3]), (ro.snitch, ru[10])):
            assert rel_err(a, ref) < 1e-5


def test_camera_geometry_matches_upstream(gen):
    xyz = torch.rand(50, 3, generator=gen) * 6 - 3
    with upstream_v1() as imp:
        tr = imp("nn.tracker")
        to_screen = tr.WolrdToScreen(CATER_CAMERA, CATER_ZERO_ELEVATION)
        to_world = tr.ScreenToWorld(CATER_CAMERA, CATER_ZERO_ELEVATION)
        cam = torch.tensor(CATER_CAMERA)
        screen = world_to_screen(xyz, cam)
        assert rel_err(screen, to_screen(xyz)) < 1e-6
        height = xyz[:, 2:] - CATER_ZERO_ELEVATION
        assert rel_err(screen_to_world(screen, cam, height=height), to_world(screen, height)) < 1e-5
        assert rel_err(screen_to_world(screen, cam), to_world(screen)) < 1e-5


def test_grid_metrics_match_upstream(gen):
    from loci_fast.loci_v1.tracker import grid_metrics, l2_distance

    cam = torch.tensor(CATER_CAMERA)
    xyz = torch.rand(64, 3, generator=gen) * 7 - 3.5
    screen = world_to_screen(xyz, cam) + torch.randn(64, 2, generator=gen) * 0.05
    labels = torch.randint(0, 36, (64,), generator=gen)
    with upstream_v1() as imp:
        tr = imp("nn.tracker")
        l1, top1, top5, label = tr.L1GridDistance(CATER_CAMERA, CATER_ZERO_ELEVATION)(screen, labels)
        l2 = tr.L2TrackingDistance(CATER_CAMERA, CATER_ZERO_ELEVATION)(screen, xyz)[0]
    ours = grid_metrics(screen, labels, cam)
    assert torch.equal(ours[3], label) and float(ours[1]) == float(top1) and float(ours[2]) == float(top5)
    assert float(ours[0]) == pytest.approx(float(l1), rel=1e-6)
    assert rel_err(l2_distance(screen, xyz, cam), l2) < 1e-5
