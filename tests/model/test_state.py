"""SlotState: created at a sequence start, detached, moved, cloned, and round-tripped through
safetensors with every field, including views into larger tensors; bad state dicts are refused."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from loci_fast.model.predictor import LatentPredictor
from loci_fast.model.state import OPTIONAL_FIELDS, SlotState, initial_slot_state

B, O, C, CELLS, H, W = 2, 3, 6, 4, 4, 5


def full_state(gen, requires_grad=False):
    state = initial_slot_state(B, O, C, CELLS)
    r = lambda *s: torch.randn(*s, generator=gen).requires_grad_(requires_grad)
    shapes = dict(position=(B, O * 4), gestalt=(B, O * 7), priority=(B, O), mask=(B, O + 1, H, W),
                  mask_raw=(B, O, H, W), occlusion=(B, O), rgb=(B, 3 * (O + 1), H, W), depth_raw=(B, O, H, W),
                  output_depth=(B, 1, H, W), bg_rgb=(B, 3, H, W), bg_depth=(B, 1, H, W), visibility=(B, O))
    assert set(shapes) == set(OPTIONAL_FIELDS)
    for tr in state.traces:
        for t in tr:
            t.copy_(torch.randn(t.shape, generator=gen))
    return state.replace(predictor_hidden=r(B * O, C) * 2, extra={"last_frame": torch.arange(6).view(2, 3)},
                         **{k: r(*s) * 1.5 for k, s in shapes.items()})


def assert_same(a: SlotState, b: SlotState):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_initial_state_matches_the_predictor():
    pred = LatentPredictor(2, O, num_hidden=C * 2)
    state = initial_slot_state(B, O, pred.width, pred.num_cells)
    hidden, traces = pred.initial_state(B)
    assert state.at_sequence_start and all(getattr(state, k) is None for k in OPTIONAL_FIELDS)
    assert torch.equal(state.predictor_hidden, hidden) and len(state.traces) == len(traces) == 4
    assert all(a.shape == b.shape and torch.all(a == 0) for ta, tb in zip(state.traces, traces) for a, b in zip(ta, tb))
    assert set(state.state_dict()) == {"predictor_hidden"} | {f"traces.{k}.{n}" for k in range(4)
                                                              for n in ("gx", "gh", "bg", "rx", "rh", "br")}


def test_detach_clone_to(gen):
    state = full_state(gen, requires_grad=True)
    assert state.position.grad_fn is not None and not state.at_sequence_start
    det = state.detach()
    assert all(t.grad_fn is None and not t.requires_grad for t in det.state_dict().values())
    assert det.traces[0].gx.data_ptr() == state.traces[0].gx.data_ptr()  # shares memory (in-place traces)
    snap = state.clone()
    state.traces[0].gx.add_(1)
    assert torch.equal(det.traces[0].gx, state.traces[0].gx) and not torch.equal(snap.traces[0].gx, state.traces[0].gx)
    half = det.to("cpu", torch.float64)
    assert half.gestalt.dtype == torch.float64 and half.extra["last_frame"].dtype == torch.int64
    torch.testing.assert_close(half.gestalt, det.gestalt.double())
    meta = det.to("meta")
    assert meta.mask.device.type == "meta" and meta.traces[3].rh.shape == (B * O, C, C)


def test_safetensors_roundtrip(gen, tmp_path):
    state = full_state(gen).detach()
    big = torch.randn(B * O, 9, generator=gen)
    state = state.replace(priority=big[:, -1].view(B, O), occlusion=big[:, 2].view(B, O))  # views into one buffer
    save_file(state.state_dict(), tmp_path / "state.safetensors")
    back = SlotState.from_state_dict(load_file(tmp_path / "state.safetensors"))
    assert_same(back, state)
    assert torch.equal(back.priority, big[:, -1].view(B, O))
    partial = initial_slot_state(B, O, C, 2).replace(visibility=torch.rand(B, O, generator=gen))
    save_file(partial.state_dict(), tmp_path / "partial.safetensors")
    again = SlotState.from_state_dict(load_file(tmp_path / "partial.safetensors"))
    assert again.position is None and len(again.traces) == 2
    assert_same(again, partial)


def test_bad_state_dicts(gen):
    sd = full_state(gen).state_dict()
    with pytest.raises(ValueError, match="predictor_hidden"):
        SlotState.from_state_dict({k: v for k, v in sd.items() if k != "predictor_hidden"})
    with pytest.raises(ValueError, match="traces.2 lacks rh"):
        SlotState.from_state_dict({k: v for k, v in sd.items() if k != "traces.2.rh"})
    with pytest.raises(ValueError, match="not numbered"):
        SlotState.from_state_dict({k: v for k, v in sd.items() if not k.startswith("traces.1.")})
    with pytest.raises(ValueError, match="unknown key 'masks'"):
        SlotState.from_state_dict({**sd, "masks": torch.zeros(1)})
    with pytest.raises(ValueError, match="bad trace key"):
        SlotState.from_state_dict({**sd, "traces.0.xx": torch.zeros(1)})
