"""LociModel, the whole Loci-s model and its TBPTT chunk (§17.5): the chunk schedule and its state, the
regularisers' warm-up counters, segmentation-mode starts in train mode; and (with LOCI_FAST_UPSTREAM)
upstream's own LociModule, whose checkpoint ``import-upstream --kind loci`` converts: over a whole
sequence of chunks (teacher forcing, then prediction with the regularisers active), every logged loss
term and every parameter gradient of each chunk agree with upstream's, upstream's draws replayed."""
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
from safetensors.torch import load_file
from torch import nn

from loci_fast.cli import main as cli_main
from loci_fast.data.views.video_chunks import tbptt_chunks
from loci_fast.kernels import use_backend
from loci_fast.model.losses import loci as L
from loci_fast.model.loci_model import LociModel
from loci_fast.model.upstream import convert_state_dict
from tests.model.test_blocks import upstream_modules
from tests.model.test_loci import open_paths, tiny_cfg
from tests.model.upstream_draws import record_draws, rel_err, replay_draws

UPSTREAM = os.environ.get("LOCI_FAST_UPSTREAM")
TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "loci-s.json"
B, S, K, TF = 2, 4, 2, 2


def full_cfg(**model_changes):
    model = dict(tiny_cfg(**model_changes), entity_pretraining_steps=10000, encoder_regularizer=0.1, position_regularizer=1.0, time_regularizer=1.0,
                 rgb_loss="YCbCrL2SSIMLoss")
    return {"model": model, "teacher_forcing": TF, "sequence_len": S, "backprop_steps": K, "seed": 1234}


def video(gen, b=B, s=S, h=64):
    rgb = torch.rand(b, s, 3, h, h, generator=gen)
    depth = torch.rand(b, s, 1, h, h, generator=gen) * 1.2 - 0.1  # some pixels without depth (<= 0)
    return {"rgb": rgb, "depth": depth, "use_depth": torch.tensor([True, False][:b])}


def run_sequence(model, batch, state=None):
    outs = []
    for chunk in tbptt_chunks(batch, K, TF):
        if chunk["reset"]:
            state = model.initial_state(batch["rgb"].shape[0])
        out = model(chunk["rgb"], chunk["depth"], chunk["time_steps"], chunk["use_depth"], state)
        state = out.state.detach()
        outs.append((chunk, out))
    return outs


def test_chunk_schedule_state_and_regulariser_warmup(gen):
    torch.manual_seed(0)
    model = LociModel.from_config(full_cfg())
    open_paths(model, gen)
    outs = run_sequence(model, video(gen))
    assert [c["time_steps"].tolist() for c, _ in outs] == [[-3, -2, -1], [0, 1], [2, 3]]
    assert [len(o.steps) for _, o in outs] == [2, 2, 2]  # K+1 stamps give K steps; later chunks prepend a frame
    # teacher forcing: reconstruction only; prediction terms from time 0 on
    pred = [float(o.terms["prediction_rgb_loss"].detach()) for _, o in outs]
    assert pred[0] == 0 and pred[1] > 0 and pred[2] > 0
    # the regularisers count prediction steps (3 here) and stay 0 up to teacher_forcing = 2 calls
    last = outs[-1][1].state.extra
    assert int(last["position_loss.t"]) == 3 and int(last["time_loss.t"]) == 3
    position = [float(o.terms["position_loss"].detach()) for _, o in outs]
    assert position[:2] == [0.0, 0.0] and position[2] > 0 and float(outs[2][1].terms["time_loss"].detach()) > 0
    assert int(last["last.time"]) == 3 and torch.equal(last["last.rgb"], outs[-1][0]["rgb"][:, -1:])
    # the loss is upstream's weighted sum of the logged terms
    terms = outs[2][1].terms
    expected = L.total_loss(terms, **model.weights)
    assert torch.allclose(outs[2][1].loss, expected)
    # the background never trains
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("background."))
    outs[2][1].loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("background."))


def test_regulariser_memory_is_a_running_max(gen):
    extra = {}
    o, b = 3, 2
    masks = [torch.rand(b, o, 8, 8, generator=gen) for _ in range(4)]
    p_last, p_next = torch.randn(b, o * 4, generator=gen), torch.randn(b, o * 4, generator=gen)
    values = [L.position_loss(p_next, p_last, m, extra, o, warmup=2) for m in masks]
    assert [float(v) for v in values[:2]] == [0.0, 0.0] and all(float(v) > 0 for v in values[2:])
    memory = torch.stack([m.amax(dim=(2, 3)) for m in masks[1:]]).amax(0).reshape(-1, 1)
    assert torch.equal(extra["position_loss.memory"], memory)  # reset by the warm-up's last call, max since
    q = lambda p: torch.cat([p.view(-1, 4)[:, :2], 0.25 * torch.sigmoid(p.view(-1, 4)[:, 3:])], 1)  # noqa: E731
    assert torch.allclose(values[3], 0.01 * (memory * (q(p_next) - q(p_last)) ** 2).mean())


def test_mid_sequence_chunk_needs_the_previous_state(gen):
    torch.manual_seed(0)
    model = LociModel.from_config(full_cfg())
    outs = run_sequence(model, video(gen))
    chunk = outs[1][0]
    with pytest.raises(ValueError, match="last frame"):
        model(chunk["rgb"], chunk["depth"], chunk["time_steps"], chunk["use_depth"],
              outs[0][1].state.replace(extra={}))


def test_traces_of_the_given_state_stay_untouched(gen):
    torch.manual_seed(0)
    model = LociModel.from_config(full_cfg())
    open_paths(model, gen)
    batch = video(gen)
    chunks = list(tbptt_chunks(batch, K, TF))
    state = model.initial_state(B)
    for chunk in chunks[:2]:
        state = model(chunk["rgb"], chunk["depth"], chunk["time_steps"], chunk["use_depth"], state).state.detach()
    before = state.clone()
    model(chunks[2]["rgb"], chunks[2]["depth"], chunks[2]["time_steps"], chunks[2]["use_depth"], state)
    for a, b in zip(state.state_dict().values(), before.state_dict().values()):
        assert torch.equal(a, b)
    assert state.traces[0].gx.abs().sum() > 0


def test_segmentation_mode_starts_from_the_proposal_in_train_mode(gen):
    torch.manual_seed(0)
    cfg = full_cfg(inference_mode="segmentation",
                   position_proposal=dict(tiny_cfg()["position_proposal"], num_slots=4))
    model = LociModel.from_config(cfg)
    model.train()
    batch = video(gen)
    chunk = next(tbptt_chunks(batch, K, TF))
    torch.manual_seed(5)
    init = model.segmentation_start(model.initial_state(B), chunk["rgb"][:, 0], chunk["depth"][:, 0])
    torch.manual_seed(5)
    out = model(chunk["rgb"], chunk["depth"], chunk["time_steps"], chunk["use_depth"], model.initial_state(B))
    assert init.position.shape == (B, 3 * 4) and init.mask.shape == (B, 4, 64, 64)
    # the teacher-forcing reconstructions keep the proposal's masks (upstream: output_cur['mask'] = init_mask)
    for step in out.steps:
        assert torch.equal(step.reconstruction["mask"], init.mask)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("proposal."))


# ----------------------------------------------------------------------------- upstream LociModule

class Cfg(dict):
    """Attribute access over nested dicts, with assignment (LociModule writes cfg.model.teacher_forcing)."""

    def __init__(self, d):
        super().__init__({k: Cfg(v) if isinstance(v, dict) else v for k, v in d.items()})

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value


@contextlib.contextmanager
def upstream_loci_module(root):
    """Upstream's model.lightning.loci.LociModule, Lightning stubbed by nn.Module (it uses nothing else)."""
    names = ("pytorch_lightning", "jsmin", "skimage", "skimage.measure", "model")
    saved = {k: sys.modules[k] for k in list(sys.modules) if k.split(".")[0] in names}
    pl = types.ModuleType("pytorch_lightning")
    pl.LightningModule = nn.Module
    pl.Callback = pl.Trainer = object
    sk = types.ModuleType("skimage")
    sk.measure = types.ModuleType("skimage.measure")
    sys.modules.update({"pytorch_lightning": pl, "jsmin": types.ModuleType("jsmin"), "skimage": sk,
                        "skimage.measure": sk.measure})
    try:
        with upstream_modules(root) as import_upstream:
            yield import_upstream("model.lightning.loci").LociModule
    finally:
        for k in list(sys.modules):
            if k.split(".")[0] in names:
                del sys.modules[k]
        sys.modules.update(saved)


@pytest.mark.slow
@pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
@pytest.mark.parametrize("depth,dtype", [(False, torch.float32), (True, torch.float64)])
def test_imported_upstream_loci_module_gives_its_losses_and_gradients(gen, tmp_path, depth, dtype):
    """float32 with RGB input (the gradients within 1e-4); with depth input in float64, where the
    learnt priority scalars' gradients (sums of many cancelling terms through the 250-scaled
    priorities) are well conditioned enough to compare (values 1e-7, gradients 1e-6: a few of
    the constants on both sides stay float32)."""
    tol, grad_tol = (1e-4, 1e-4) if dtype == torch.float32 else (1e-7, 1e-6)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # upstream creates its zeros and ones in the default dtype
    try:
        _upstream_chunks(gen, tmp_path, full_cfg(input_depth=depth), dtype, tol, grad_tol)
    finally:
        torch.set_default_dtype(default)


def _upstream_chunks(gen, tmp_path, cfg, dtype, tol, grad_tol):
    with upstream_loci_module(UPSTREAM) as LociModule:
        with contextlib.redirect_stdout(io.StringIO()):
            up = LociModule(Cfg(copy.deepcopy(cfg)))
        open_paths(up.net, gen)
        with torch.no_grad():
            up.net.encoder.priority_encoder.priority_factor.fill_(0.7)  # as the per-frame parity test
        logged = {}
        up.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
        up.device = torch.device("cpu")
        up.train()
        # upstream's own checkpoint, converted by the CLI, loads strictly into our model
        torch.save({"state_dict": up.state_dict(), "global_step": 7}, tmp_path / "loci.ckpt")
        cfg_path = tmp_path / "loci.json"
        model = {k: v for k, v in cfg["model"].items() if k != "teacher_forcing"}  # LociModule sets it
        cfg_path.write_text(json.dumps({**json.loads(TINY.read_text()), **cfg, "model": model}))
        assert cli_main(["import-upstream", str(tmp_path / "loci.ckpt"), "--kind", "loci", "--config",
                         str(cfg_path), "--out", str(tmp_path / "loci.safetensors")]) == 0
        ours = LociModel.from_config(cfg)
        ours.load_state_dict(load_file(str(tmp_path / "loci.safetensors")), strict=True)
        up.to(dtype), ours.to(dtype)
        ours.train()
        batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in video(gen).items()}
        state = None
        for chunk in tbptt_chunks(batch, K, TF):
            ts = chunk["time_steps"].expand(B, -1)
            logged.clear()
            with record_draws() as log:
                loss, _ = up.model_step((chunk["rgb"], chunk["depth"], ts, chunk["use_depth"]), 0, "train")
            if chunk["reset"]:
                state = ours.initial_state(B, dtype=dtype)
            with use_backend("reference"), replay_draws(log):
                out = ours(chunk["rgb"], chunk["depth"], ts, chunk["use_depth"], state)
            state = out.state.detach()
            assert rel_err(out.loss.detach(), loss.detach().reshape(())) < tol, chunk["time_steps"]
            compared = 0
            for name, value in out.terms.items():
                if f"train_{name}" in logged:
                    ref = torch.tensor(logged[f"train_{name}"], dtype=torch.float64)
                    assert rel_err(value.detach().reshape(()), ref) < tol, (chunk["time_steps"].tolist(), name)
                    compared += 1
            assert compared >= (10 if chunk["time_steps"][-1] < 0 else 27)
            if chunk["time_steps"][-1] >= 2:
                assert logged["train_position_loss"] > 0 and logged["train_time_loss"] > 0
            up.zero_grad(set_to_none=True), ours.zero_grad(set_to_none=True)
            loss.sum().backward()
            out.loss.backward()
            up_grads = convert_state_dict({"net." + n: p.grad for n, p in up.net.named_parameters()
                                           if p.grad is not None}, kind="loci")
            our_grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
            assert sorted(up_grads) == sorted(our_grads)
            for name, g in up_grads.items():
                assert rel_err(our_grads[name].reshape(g.shape), g) < grad_tol, (chunk["time_steps"].tolist(), name)
            assert len(our_grads) > 100
