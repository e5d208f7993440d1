"""Loci's per-frame step (§14): shapes and the hand-over of the explicit state, a resume from a
checkpointed state mid-sequence, and (with LOCI_FAST_UPSTREAM) parity with upstream's Loci over 4
frames (2 teacher-forced, 2 predicted) in one graph, upstream's draws replayed in order: every
output within 1e-5 relative in training and evaluation mode, inference modes random and
regularization, and in training mode every parameter gradient of the chunk's loss within 1e-4."""
import contextlib
import copy
import io
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from loci_fast.kernels import use_backend
from loci_fast.model.loci import Loci, similarity_mask_drop
from loci_fast.model.state import SlotState
from loci_fast.model.upstream import convert_state_dict
from tests.model.test_blocks import upstream_modules
from tests.model.upstream_draws import record_draws, rel_err, replay_draws, take

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = os.environ.get("LOCI_FAST_UPSTREAM")
B = 2


def tiny_cfg(**changes):
    cfg = json.loads((REPO / "configs" / "tiny" / "loci-s.json").read_text())["model"]
    cfg = dict(cfg, num_slots=3, object_permanence_strength=1, entity_pretraining_steps=1e4, object_regularizer=0,
               teacher_forcing=2, predictor=dict(cfg["predictor"], layers=2, channels=112))
    return {**cfg, **changes}


class StubBackground(nn.Module):
    """A background with the real one's call interface: a 1x1 conv for u, rgb and depth."""

    def __init__(self, cin=3):
        super().__init__()
        self.u, self.out = nn.Conv2d(cin, 1, 1), nn.Conv2d(cin, 4, 1)
        self.uncertainty_estimation = lambda x: (torch.sigmoid(self.u(x)), None)

    def forward(self, src, tgt, u_src, u_tgt, delta_t, color):
        y = self.out(tgt)
        return torch.sigmoid(y[:, :3]), y[:, 3:], None, None


def open_paths(model, gen):
    """Move the residual α's and the learnt init off their near-zero starts so every path matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha") and not name.startswith("background"):
                p.fill_(0.3 if name.startswith("predictor") else 0.05)
        model.object_discovery.std.fill_(0.15)
        model.object_discovery.depth.fill_(0.6)


def frames(gen, n=4, h=64):
    return [torch.rand(B, 3, h, h, generator=gen) for _ in range(n)]


def run_ours(model, rgbs, state, schedule, start=0):
    outs = []
    for t, tau in enumerate(schedule):
        out = model(rgbs[t], None, state, teacher_forcing=tau < 0, redecode_last=(t + start == 0))
        state = out.state
        outs.append(out)
    return outs, state


def test_step_shapes_and_state(gen):
    torch.manual_seed(0)
    model = Loci.from_config(tiny_cfg(), StubBackground()).train()
    open_paths(model, gen)
    o, h = 3, 64
    rgbs = frames(gen)
    with use_backend("reference"):
        outs, state = run_ours(model, rgbs, model.initial_state(B), [-2, -1, 0, 1])
    rec, pred = outs[-1].reconstruction, outs[-1].prediction
    assert rec["mask"].shape == (B, o + 1, h, h) and rec["rgb"].shape == (B, 3 * (o + 1), h, h)
    assert rec["output_rgb"].shape == (B, 3, h, h) and rec["occlusion"].shape == (B, o)
    assert pred["position"].shape == (B, 4 * o) and pred["gestalt_gate"].shape == (B, o)
    assert pred["predictor_openings"].shape == (3,)
    assert set(outs[0].prediction) == {"bg_rgb", "bg_depth"}  # teacher forcing: no prediction
    torch.testing.assert_close(rec["mask"].sum(1), torch.ones(B, h, h))
    assert torch.equal(state.position, pred["position"]) and torch.equal(state.mask, pred["mask"])
    assert torch.equal(outs[1].state.position, outs[1].reconstruction["position"])  # teacher forcing carries rec
    assert state.traces[0].gx.abs().sum() > 0 and state.visibility.shape == (B, o)
    # the only buffers are ObjectDiscovery's persistent threshold and permanence counter: no hidden state
    assert sorted(n for n, _ in model.named_buffers()) == ["object_discovery.init.init", "object_discovery.threshold"]
    with pytest.raises(ValueError, match="inference_mode"):
        Loci.from_config(tiny_cfg(inference_mode="segmentation"), StubBackground())


def drop_inputs(gen, b=2, o=4, c=13, h=6):
    """Slots 0 and 2 of each sample are duplicates (same code, nearly the same place); slot 3 is invisible."""
    position = torch.cat([torch.rand(b, o, 3, generator=gen), 0.1 + 0.2 * torch.rand(b, o, 1, generator=gen)], 2)
    position[:, 2] = position[:, 0] + 0.001
    gestalt = torch.rand(b, o, c, generator=gen)
    gestalt[:, 2] = gestalt[:, 0]
    logits = 2 * torch.randn(b, o, h, h, generator=gen)
    logits[:, :3, 0, 0] = 20.0  # visible: one pixel each where the slot clearly wins
    logits[:, :3, 0, 0] += torch.arange(3.0)
    logits[:, 0, 1, 1] = logits[:, 1, 2, 2] = logits[:, 2, 3, 3] = 30.0
    logits[:, 3] = -30.0
    return position.view(b, o * 4), gestalt.view(b, o * c), logits


def test_similarity_mask_drop(gen):
    position, gestalt, logits = drop_inputs(gen)
    noise = torch.randn(2, 13, 4, generator=gen)
    out = similarity_mask_drop(position, gestalt, logits.clone().requires_grad_(), noise)
    dropped = (out == -10).flatten(2).all(2)
    assert dropped[:, 0].all() and not dropped[:, 1:3].any()  # the earlier of the two duplicates goes
    torch.testing.assert_close(out[:, 1:3], logits[:, 1:3])
    # moving the duplicate far away keeps it (the closeness weight), as does decorrelating its code
    far = position.view(2, 4, 4).clone()
    far[:, 2, :3] += 5
    assert not (similarity_mask_drop(far.view(2, 16), gestalt, logits, noise) == -10).flatten(2).all(2)[:, 0].any()
    other = gestalt.view(2, 4, 13).clone()
    other[:, :3] = torch.eye(13)[:3]  # distinct one-hot codes correlate negatively
    kept = similarity_mask_drop(position, other.view(2, 52), logits, noise)
    assert not (kept == -10).flatten(2).all(2)[:, :3].any()
    # the noise is drawn (B, 3G+1, O) when not given, on every call
    with record_draws() as log:
        similarity_mask_drop(position, gestalt, logits)
    assert [(k, tuple(v.shape)) for k, v in log] == [("randn_like", (2, 13, 4))]


def test_resume_from_a_checkpointed_state(gen, tmp_path):
    """Stop after 2 frames (the second a prediction step), save model, slot state (safetensors) and RNG,
    restore into a fresh model: the third frame equals the uninterrupted run's."""
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    model = Loci.from_config(tiny_cfg(), StubBackground()).train()
    open_paths(model, gen)
    rgbs, schedule = frames(gen, 3), [-1, 0, 1]
    fresh = copy.deepcopy(model)
    with use_backend("reference"):
        torch.manual_seed(4)
        full, _ = run_ours(model, rgbs, model.initial_state(B), schedule)
        torch.manual_seed(4)
        first, state = run_ours(fresh, rgbs[:2], fresh.initial_state(B), schedule[:2])
        save_file(state.detach().state_dict(), tmp_path / "state.safetensors")
        module_state, rng = copy.deepcopy(fresh.state_dict()), torch.get_rng_state()
        resumed_model = Loci.from_config(tiny_cfg(), StubBackground()).train()
        resumed_model.load_state_dict(module_state, strict=True)
        torch.set_rng_state(rng)
        state = SlotState.from_state_dict(load_file(tmp_path / "state.safetensors"))
        rest, _ = run_ours(resumed_model, rgbs[2:], state, schedule[2:], start=2)
    assert len(rest) == 1
    for key in ("output_rgb", "mask", "position", "gestalt"):
        torch.testing.assert_close(rest[0].prediction[key], full[2].prediction[key], rtol=0, atol=0)
    for key in ("position", "mask"):
        torch.testing.assert_close(rest[0].reconstruction[key], full[2].reconstruction[key], rtol=0, atol=0)
    assert not torch.allclose(full[1].prediction["position"], full[2].prediction["position"])


# ---------------------------------------------------------------- upstream parity (optional)

@pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
def test_upstream_mask_drop_parity(gen):
    with upstream_modules(UPSTREAM) as import_upstream:
        up = import_upstream("utils.utils").RadomSimilarityBasedMaskDrop()
        for trial in range(3):
            position, gestalt, logits = drop_inputs(gen)
            if trial == 2:  # no planted duplicates: whatever the batch statistics decide
                gestalt = torch.rand(gestalt.shape, generator=gen)
            with record_draws() as log:
                ref = up(position, gestalt, logits)
            out = similarity_mask_drop(position, gestalt, logits, take(log, "randn_like"))
            assert torch.equal(out, ref)

class _Attr(dict):
    def __getattr__(self, key):
        value = self[key]
        return _Attr(value) if isinstance(value, dict) else value


@contextlib.contextmanager
def upstream_loci(root):
    """Upstream's model.loci.Loci with its unused heavy imports (lightning, skimage, jsmin) stubbed."""
    names = ("pytorch_lightning", "jsmin", "skimage", "skimage.measure")
    saved = {k: sys.modules[k] for k in names if k in sys.modules}
    pl = types.ModuleType("pytorch_lightning")
    pl.Callback = pl.Trainer = pl.LightningModule = object
    sk = types.ModuleType("skimage")
    sk.measure = types.ModuleType("skimage.measure")
    sys.modules.update({"pytorch_lightning": pl, "jsmin": types.ModuleType("jsmin"), "skimage": sk,
                        "skimage.measure": sk.measure})
    try:
        with upstream_modules(root) as import_upstream:
            yield import_upstream("model.loci").Loci
    finally:
        for k in list(sys.modules):
            if k.split(".")[0] in ("model",) + names:
                del sys.modules[k]
        sys.modules.update(saved)


def _upstream_frames(up, rgbs, schedule, logs, depths=None):
    """LociModule.model_step's loop over one chunk from a sequence start (§17.5)."""
    none = dict.fromkeys(("rgb", "depth_raw", "mask", "mask_raw", "occlusion", "position", "gestalt", "priority",
                          "output_depth"))
    output = {"reconstruction": dict(none), "prediction": dict(none, bg_rgb=None, bg_depth=None)}
    outs = []
    for t, tau in enumerate(schedule):
        last = output["prediction"] if tau > 0 else output["reconstruction"]
        with record_draws() as log:
            output = up(input_rgb=rgbs[t], input_depth=last["output_depth"] if depths is None else depths[t],
                        bg_rgb_last=output["prediction"]["bg_rgb"], bg_depth_last=output["prediction"]["bg_depth"],
                        rgb_last=last["rgb"] if t > 0 else None, depth_raw_last=last["depth_raw"] if t > 0 else None,
                        mask_last=last["mask"], mask_raw_last=last["mask_raw"], occlusion_last=last["occlusion"],
                        position_last=last["position"], gestalt_last=last["gestalt"], priority_last=last["priority"],
                        teacher_forcing=torch.tensor(tau < 0), reset=False, detach=False, evaluate=False, test=False)
        logs.append(log)
        outs.append(output)
    return outs


KEYS = ("output_rgb", "output_depth", "mask", "rgb", "depth", "mask_raw", "depth_raw", "occlusion", "position",
        "gestalt", "priority")


def _loss(outs):
    total = 0.0
    for k, out in enumerate(outs):
        rec, pred = out["reconstruction"], out["prediction"]
        for key in ("output_rgb", "output_depth", "mask", "position", "gestalt", "priority"):
            total = total + (rec[key] * torch.linspace(-1, 1, rec[key].numel()).view_as(rec[key])).sum() * (k + 1)
            if "position" in pred:
                total = total + (pred[key] * torch.linspace(1, -0.5, pred[key].numel()).view_as(pred[key])).sum()
    return total


@pytest.mark.slow
@pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
@pytest.mark.parametrize("train,mode,depth", [(True, "random", False), (False, "random", False),
                                              (True, "regularization", False), (False, "regularization", False),
                                              (True, "random", True)])
def test_upstream_parity(gen, train, mode, depth):
    cfg = tiny_cfg(inference_mode=mode, input_depth=depth)
    schedule = [-2, -1, 0, 1]
    with upstream_loci(UPSTREAM) as UpstreamLoci:
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            up = UpstreamLoci(_Attr(cfg))
        ours = Loci.from_config(cfg, copy.deepcopy(up.background))
        sd = up.state_dict()
        converted = convert_state_dict({k: v for k, v in sd.items() if k.startswith(("encoder.", "decoder."))})
        same = {k: v for k, v in sd.items()
                if k.startswith(("predictor.", "update_gate.", "object_discovery.", "background."))}
        ours.load_state_dict({**converted, **same}, strict=True)
        open_paths(up, gen), open_paths(ours, gen)
        with torch.no_grad():
            for m in (up, ours):
                m.encoder.priority_encoder.priority_factor.fill_(0.7)
        up.train(train), ours.train(train)
        rgbs = frames(gen)
        depths = [0.2 + torch.rand(B, 1, 64, 64, generator=gen) for _ in rgbs] if depth else None
        up.reset_state()
        logs = []
        up_outs = _upstream_frames(up, rgbs, schedule, logs, depths)
        state, our_outs = ours.initial_state(B), []
        with use_backend("reference"):
            for t, tau in enumerate(schedule):
                with replay_draws(logs[t]):
                    out = ours(rgbs[t], None if depths is None else depths[t], state, teacher_forcing=tau < 0,
                               redecode_last=t == 0)
                state = out.state
                our_outs.append({"reconstruction": out.reconstruction, "prediction": out.prediction})
        for t, (a, u) in enumerate(zip(our_outs, up_outs)):
            for part in ("reconstruction", "prediction"):
                for key in KEYS + ("uncertainty", "position_gate", "gestalt_gate", "bg_rgb", "bg_depth"):
                    if key in u[part]:
                        err = rel_err(a[part][key], u[part][key])
                        assert err < 1e-5, f"frame {t} {part} {key}: {err}"
            assert ("position" in a["prediction"]) == (schedule[t] >= 0)
        assert torch.equal(ours.object_discovery.init.init, up.object_discovery.init.init)
        if not train:
            # Evaluation is never differentiated; its float32 gradients are ill-conditioned (binary codes,
            # 250-scaled priorities), though in float64 they agree with upstream's to 1e-13.
            return
        up_params = [(n, p) for n, p in up.named_parameters() if p.requires_grad]
        up_grads = torch.autograd.grad(_loss(up_outs), [p for _, p in up_params], allow_unused=True)
        up_named = {n: g for (n, _), g in zip(up_params, up_grads)}
        our_params = dict(ours.named_parameters())
        our_grads = torch.autograd.grad(_loss(our_outs), list(our_params.values()), allow_unused=True)
        ours_named = dict(zip(our_params, our_grads))
        up_to_ours = {**{k: k for k in same}, **{k: k for k in converted}}
        checked = 0
        for name, g in up_named.items():
            if g is None or name not in up_to_ours:
                continue
            mine = ours_named[up_to_ours[name]]
            assert mine is not None, name
            err = rel_err(mine.reshape(g.shape), g)
            assert err < 1e-4, f"gradient of {name}: {err}"
            checked += 1
        assert checked > 100


@pytest.mark.slow
@pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
def test_upstream_parity_across_a_truncation(gen):
    """Chunk 1 (frames -1, 0, 1) backpropagated, then a truncated-BPTT boundary (upstream: net.detach(),
    the outputs detached, the last slot images decoded again; ours: state.detach(), redecode_last), then
    chunk 2 (frames 2, 3): its outputs and gradients equal upstream's; the traces run on unreset."""
    cfg = tiny_cfg()
    with upstream_loci(UPSTREAM) as UpstreamLoci:
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            up = UpstreamLoci(_Attr(cfg))
        ours = Loci.from_config(cfg, copy.deepcopy(up.background))
        sd = up.state_dict()
        converted = convert_state_dict({k: v for k, v in sd.items() if k.startswith(("encoder.", "decoder."))})
        ours.load_state_dict({**converted, **{k: v for k, v in sd.items() if k not in converted and not k.startswith(
            ("encoder.", "decoder.", "translation_invariant", "mask_modulated", "position_loss", "modulator"))}},
            strict=True)
        open_paths(up, gen), open_paths(ours, gen)
        up.train(), ours.train()
        rgbs = frames(gen, 5)
        up.reset_state()
        none = dict.fromkeys(("rgb", "depth_raw", "mask", "mask_raw", "occlusion", "position", "gestalt", "priority",
                              "output_depth"))
        output = {"reconstruction": dict(none), "prediction": dict(none, bg_rgb=None, bg_depth=None)}
        state, up_chunk, our_chunk = ours.initial_state(B), [], []
        for chunk, schedule in enumerate(([-1, 0, 1], [2, 3])):
            up.detach()
            output = {part: {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}
                      for part, d in output.items() if part in ("reconstruction", "prediction")}
            state = state.detach()
            up_outs, our_outs = [], []
            for t, tau in enumerate(schedule):
                frame = 3 * chunk + t
                last = output["prediction"] if tau > 0 else output["reconstruction"]
                with record_draws() as log:
                    output = up(input_rgb=rgbs[frame], input_depth=last["output_depth"],
                                bg_rgb_last=output["prediction"]["bg_rgb"],
                                bg_depth_last=output["prediction"]["bg_depth"],
                                rgb_last=last["rgb"] if t > 0 else None,
                                depth_raw_last=last["depth_raw"] if t > 0 else None, mask_last=last["mask"],
                                mask_raw_last=last["mask_raw"], occlusion_last=last["occlusion"],
                                position_last=last["position"], gestalt_last=last["gestalt"],
                                priority_last=last["priority"], teacher_forcing=torch.tensor(tau < 0), reset=False,
                                detach=False, evaluate=False, test=False)
                up_outs.append(output)
                with use_backend("reference"), replay_draws(log):
                    out = ours(rgbs[frame], None, state, teacher_forcing=tau < 0, redecode_last=t == 0)
                state = out.state
                our_outs.append({"reconstruction": out.reconstruction, "prediction": out.prediction})
            up_params = [(n, p) for n, p in up.named_parameters() if p.requires_grad]
            up_grads = dict(zip([n for n, _ in up_params], torch.autograd.grad(
                _loss(up_outs), [p for _, p in up_params], allow_unused=True)))
            our_params = dict(ours.named_parameters())
            our_grads = dict(zip(our_params, torch.autograd.grad(_loss(our_outs), list(our_params.values()),
                                                                 allow_unused=True)))
            up_chunk.append((up_outs, up_grads)), our_chunk.append((our_outs, our_grads))
        for (up_outs, up_grads), (our_outs, our_grads) in zip(up_chunk, our_chunk):
            for a, u in zip(our_outs, up_outs):
                for part in ("reconstruction", "prediction"):
                    for key in KEYS:
                        if key in u[part]:
                            assert rel_err(a[part][key], u[part][key]) < 1e-5, (part, key)
            checked = 0
            for name, g in up_grads.items():
                if g is not None and name in our_grads:
                    assert our_grads[name] is not None, name
                    assert rel_err(our_grads[name].reshape(g.shape), g) < 1e-4, name
                    checked += 1
            assert checked > 100
        assert state.traces[1].gx.abs().sum() > 0 and up.predictor.predictor.l0rds[1].l0rd.e_w_gx.abs().sum() > 0
        for k, cell in enumerate(up.predictor.predictor.l0rds):  # the traces ran on through the boundary
            for ours_t, name in zip(state.traces[k], ("e_w_gx", "e_w_gh", "e_b_g", "e_w_rx", "e_w_rh", "e_b_r")):
                assert rel_err(ours_t, getattr(cell.l0rd, name)) < 1e-5, (k, name)
