"""One iteration of the original Loci's training loop (loci_fast.loci_v1.training, loci.md §3.2 item 4): the
warm-up target rule, the foreground-masked target and its fade, the error map, and the state's checkpoint
form, from which the next iteration continues exactly as from the live state."""
import torch
from safetensors.torch import load_file, save_file

from loci_fast.loci_v1 import LociV1
from loci_fast.loci_v1.training import (TrainSettings, TrainState, iteration_target, reconstruction_target, rms,
                                        train_iteration)
from tests.loci_v1.configs import frame_size, tiny


def test_warmup_target_carry_over_is_upstreams_and_switchable(gen):
    given, previous = torch.rand(2, 3, 4, 6, generator=gen), torch.rand(2, 3, 4, 6, generator=gen)
    state = TrainState(target=previous)
    upstream, fixed = TrainSettings(), TrainSettings(carry_warmup_target=False)
    assert iteration_target(given, state, first=False, warmup=True, settings=upstream) is previous
    assert iteration_target(given, state, first=True, warmup=True, settings=upstream) is given
    assert iteration_target(given, state, first=False, warmup=False, settings=upstream) is given
    assert iteration_target(given, state, first=False, warmup=True, settings=fixed) is given
    assert iteration_target(given, TrainState(), first=False, warmup=True, settings=upstream) is given


def test_reconstruction_target_masks_the_background_then_fades_in(gen):
    target = torch.rand(2, 3, 4, 6, generator=gen)
    bg_error = torch.rand(2, 1, 4, 6, generator=gen) * 0.2
    fg = (bg_error > 0.1).float()
    assert torch.equal(reconstruction_target(target, bg_error, 0.0), target * fg)
    assert torch.equal(reconstruction_target(target, bg_error, 1.0), target)
    half = reconstruction_target(target, bg_error, 0.25)
    assert torch.allclose(half, target * fg * 0.75 + target * 0.25)


def test_state_round_trip_continues_exactly(gen, tmp_path):
    cfg = tiny(1, supervision_factor=0.1)
    b = cfg["batch_size"]
    h, w = frame_size(cfg)
    frames = torch.rand(4, b, 3, h, w, generator=gen)
    bg, xyz = torch.rand(b, 3, h, w, generator=gen), torch.rand(b, 3, generator=gen)
    settings = TrainSettings(teacher_forcing=1)
    torch.manual_seed(0)
    model = LociV1.from_config(cfg, teacher_forcing=1)
    state = TrainState()
    for t in range(2):
        it = train_iteration(model, frames[t], frames[t + 1], xyz, bg, state, settings)
        state = it.state.detach()
    # the error map is sqrt(RMS(target - prediction)) · RMS(target - background)
    expected = torch.sqrt(rms(frames[2] - it.output.output)) * rms(frames[2] - it.output.background)
    assert torch.allclose(state.error, expected.detach())
    assert float(it.terms["tracking_loss"]) > 0 and float(it.terms["time_loss"]) > 0  # past the warm-up
    save_file(state.state_dict(), str(tmp_path / "s.safetensors"))
    back = TrainState.from_state_dict(load_file(str(tmp_path / "s.safetensors")))
    seed = torch.random.get_rng_state()
    live = train_iteration(model, frames[2], frames[3], xyz, bg, state, settings)
    torch.random.set_rng_state(seed)
    again = train_iteration(model, frames[2], frames[3], xyz, bg, back, settings)
    assert torch.equal(live.loss, again.loss) and torch.equal(live.output.output, again.output.output)
    assert torch.equal(live.state.error, again.state.error)
