"""Upstream f5a7023's online training protocol vs ours, iteration by iteration (needs LOCI_FAST_UPSTREAM_V1).

Upstream's ``train_eprop`` hard-codes CUDA, so the harness replays its loop body (loci.md §3.2 item 4) on
the CPU with upstream's own modules and optimizers: ``Loci`` forward with reset on the first iteration, the
error-map recursion, the foreground-masked target and its carry-over through the warm-up, the BCE + the
regularisers + the tracking loss, and the five optimizers zeroed and stepped by upstream's rule. Ours runs
``train_iteration`` and ``LociV1Optimizer`` on the same weights with upstream's recorded draws injected.
Over 7 iterations (2 warm-up, 5 frames; the init optimizer's step at the first, RAdam's first real update at
the last) the per-iteration outputs and losses agree within 1e-5 relative in float32; every iteration's
gradients, the traces, and every optimizer step (each parameter's change, from the same gradients) within
1e-4.
"""
import pytest
import torch
import torch.nn.functional as F

from loci_fast.loci_v1 import LociV1
from loci_fast.loci_v1.optimizers import LociV1Optimizer
from loci_fast.loci_v1.tracker import CATER_CAMERA, CATER_ZERO_ELEVATION
from loci_fast.loci_v1.training import TrainSettings, TrainState, iteration_target, train_iteration
from tests.loci_v1.configs import frame_size, tiny
from tests.loci_v1.test_upstream_parity import noise_from, perturb
from tests.loci_v1.upstream_v1 import ROOT, Namespace, record_draws, rel_err, upstream_v1

pytestmark = pytest.mark.skipif(not ROOT, reason="set LOCI_FAST_UPSTREAM_V1 to an upstream Loci checkout (f5a7023)")

WARMUP, FRAMES, LR, ENTITY = 2, 5, 1e-3, 30000


def rms(x):
    return torch.sqrt((x ** 2).mean(dim=1, keepdim=True))


def _grads_close(ours, up, names, where):
    theirs = dict(up.named_parameters())
    for name, p in ours.named_parameters():
        if not name.startswith(names):
            continue
        q = theirs[name]
        assert (p.grad is None) == (q.grad is None), (where, name)
        if q.grad is not None:
            diff = (p.grad - q.grad).abs().max().item()
            assert diff <= 1e-4 * q.grad.abs().max().item() + 1e-9, (where, name, diff)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _steps_close(ours, up, before, where):
    """Each parameter's change in this step (ours vs upstream's) within 1e-4 relative; ``before`` holds both
    sides' parameters before the step."""
    theirs = dict(up.named_parameters())
    moved = 0
    for name, p in ours.named_parameters():
        d_ours, d_up = p.detach() - before[0][name], theirs[name].detach() - before[1][name]
        scale = d_up.abs().max().item()
        assert (d_ours - d_up).abs().max().item() <= 1e-4 * scale + 1e-9, (where, name)
        moved += scale > 0
    return moved


@pytest.mark.slow
def test_training_iterations_match_upstream(gen):
    cfg = tiny(1)
    b, layers = cfg["batch_size"], cfg["predictor"]["layers"]
    h, w = frame_size(cfg)
    frames = torch.rand(FRAMES + 1, b, 3, h, w, generator=gen)
    bg = torch.rand(b, 3, h, w, generator=gen)
    xyz = torch.rand(FRAMES + 1, b, 3, generator=gen) * 6 - 3
    settings = TrainSettings(teacher_forcing=WARMUP, supervision_factor=cfg["supervision_factor"])
    with upstream_v1() as imp:
        up = imp("model.loci").Loci(Namespace(cfg), camera_view_matrix=CATER_CAMERA,
                                    zero_elevation=CATER_ZERO_ELEVATION, teacher_forcing=WARMUP)
        perturb(up, gen)  # opens the background gate: init status in (0, 1), the fade is partial
        up.background.set_background(bg.clone())
        RAdam = imp("utils.optimizers").RAdam
        l2loss = imp("nn.tracker").TrackingLoss(CATER_CAMERA, CATER_ZERO_ELEVATION)
        opt_init = torch.optim.Adam(up.initial_states.parameters(), lr=LR * 30, betas=(0.9, 0.99), eps=1e-16)
        opts = [RAdam(getattr(up, m).parameters(), lr=LR) for m in ("encoder", "decoder", "predictor")]
        opt_bg = RAdam(up.background.parameters(), lr=LR)
        ours = LociV1.from_config(cfg, teacher_forcing=WARMUP)
        ours.load_state_dict(up.state_dict(), strict=True)
        opt = LociV1Optimizer.for_model(ours, learning_rate=LR, background_learning_rate=LR,
                                        entity_pretraining_steps=ENTITY)
        cells = [up.predictor.predictor.layers[2 * (i + 1)].l0rd for i in range(layers)]

        num_updates, error, prev = 0, None, (None,) * 4
        target, pos_target, state = torch.clip(frames[0], 0, 1), xyz[0], TrainState()
        moved = []
        for t in range(-WARMUP, FRAMES):
            first = t == -WARMUP
            frame = frames[0] if t < 0 else frames[t]
            if t >= 0:  # upstream re-reads the target only from frame 0 on
                target, pos_target = torch.clip(frames[t + 1], 0, 1), xyz[t + 1]
            given = torch.clip(frames[0 if t < 0 else t + 1], 0, 1)
            assert up.get_init_status() > 0.001  # no background-only iteration (its own test below)
            # --- upstream's loop body
            with record_draws() as log:
                ru = up(frame, error, *prev, reset=first)
            output, position, gestalt, priority, mask, obj, background, pl, ol, tl, snitch = ru
            tracking = l2loss(snitch, pos_target) * cfg["supervision_factor"]
            bg_error = rms(target - background).detach()
            error = (torch.sqrt(rms(target - output).detach()) * bg_error)
            prev = tuple(x.detach() for x in (mask, position, gestalt, priority))
            init = max(0, min(1, up.get_init_status()))
            fg = torch.gt(bg_error, 0.1).float().detach()
            target = torch.clip(target * fg * (1 - init) + target * init, 0, 1)
            loss_up = F.binary_cross_entropy(torch.clip(output, 0, 1), target) + pl + ol + tl + tracking
            # --- ours
            it = train_iteration(ours, frame, iteration_target(given, state, first, t < 0, settings),
                                 xyz[0 if t < 0 else t + 1], bg, state, settings, noise=noise_from(log, layers))
            ro = it.output
            pairs = {"output": (ro.output, output), "position": (ro.position, position),
                     "gestalt": (ro.gestalt, gestalt), "priority": (ro.priority, priority), "mask": (ro.mask, mask),
                     "rgb": (ro.rgb, obj), "background": (ro.background, background), "snitch": (ro.snitch, snitch),
                     "error": (it.state.error, error), "target": (it.state.target, target)}
            for name, (a, ref) in pairs.items():
                assert a.shape == ref.shape and rel_err(a, ref) < 1e-5, (t, name, rel_err(a, ref))
            assert float(it.loss.detach()) == pytest.approx(float(loss_up.detach()), rel=1e-5), t
            # --- backward and the optimizers, upstream's order
            if first:
                opt_init.zero_grad()
            for o in opts:
                o.zero_grad()
            gate = num_updates >= ENTITY or up.get_init_status() > 0.001
            if gate:
                opt_bg.zero_grad()
            loss_up.backward()
            ours.zero_grad(set_to_none=True)  # the engine zeroes every gradient after each step
            it.loss.backward()
            # every gradient (upstream's init gradients accumulate after the first iteration, unused)
            _grads_close(ours, up, ("",) if first else ("encoder", "decoder", "predictor", "background"), t)
            # Both optimizers then step on upstream's gradients: gradients that are zero in exact arithmetic
            # (softmax shift invariance: attention key biases, the tracker gate's last bias) come out as
            # float32 noise (~1e-12) on both sides, and RAdam/Adam with eps 1e-16 turn noise into full-size
            # steps of random sign; with the same gradients the steps themselves are compared.
            theirs = dict(up.named_parameters())
            for name, p in ours.named_parameters():
                p.grad = None if theirs[name].grad is None else theirs[name].grad.clone()
            for i, cell in enumerate(cells):
                for ours_t, ref in zip(it.state.model.traces[i], (cell.e_w_gx, cell.e_w_gh, cell.e_b_g, cell.e_w_rx,
                                                                  cell.e_w_rh, cell.e_b_r)):
                    assert rel_err(ours_t, ref) < 1e-4, (t, "trace", i)
            before = (_params(ours), _params(up))
            if first:
                opt_init.step()
            else:
                for o in opts:
                    o.step()
                if gate:
                    opt_bg.step()
            opt.plan(first_of_sequence=first)
            opt.step()
            assert set(opt.stepped) == ({"init"} if first else {"encoder", "decoder", "predictor", "background"})
            moved.append(_steps_close(ours, up, before, t))
            num_updates += 1
            state = it.state.detach()
        assert opt.num_updates == num_updates == WARMUP + FRAMES
        # the init step moves its parameters at once; RAdam waits 5 steps: iterations 2..6 move nothing
        assert moved[0] > 0 and moved[1:-1] == [0] * (len(moved) - 2) and moved[-1] > 0, moved


def test_background_only_first_iteration_matches_upstream(gen):
    """A run's very first iteration with the gate shut (§3.2 item 3): L1 of the gated background; only the
    background optimizer steps (RAdam's first step: nothing moves, its counter advances)."""
    from loci_fast.loci_v1.training import background_iteration

    cfg = tiny(1)
    h, w = frame_size(cfg)
    frame, bg = torch.rand(cfg["batch_size"], 3, h, w, generator=gen), torch.rand(cfg["batch_size"], 3, h, w,
                                                                                 generator=gen)
    with upstream_v1() as imp:
        up = imp("model.loci").Loci(Namespace(cfg), camera_view_matrix=CATER_CAMERA,
                                    zero_elevation=CATER_ZERO_ELEVATION, teacher_forcing=WARMUP)
        up.background.set_background(bg.clone())
        opt_bg = imp("utils.optimizers").RAdam(up.background.parameters(), lr=LR)
        ours = LociV1.from_config(cfg, teacher_forcing=WARMUP)
        ours.load_state_dict(up.state_dict(), strict=True)
        opt = LociV1Optimizer.for_model(ours, learning_rate=LR, background_learning_rate=LR)
        loss_up = F.l1_loss(up(frame, train_background=True, detach=True, reset=True), torch.clip(frame, 0, 1))
        opt_bg.zero_grad()
        loss_up.backward()
        opt_bg.step()
        it = background_iteration(ours, frame, bg, torch.clip(frame, 0, 1))
        it.loss.backward()
        _grads_close(ours, up, ("",), "bg-only")
        opt.plan(first_of_sequence=True, background_only=True)
        opt.step()
        assert float(it.loss.detach()) == pytest.approx(float(loss_up.detach()), rel=1e-6)
        assert float(ours.background.alpha.grad) == -0.5
        assert opt.stepped == ("background",) and opt.state[ours.background.alpha]["step"] == 1
        assert opt_bg.state[up.background.alpha]["step"] == 1
        assert torch.equal(ours.background.alpha, up.background.alpha)
