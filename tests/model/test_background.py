"""The background module (reference §12) and its training losses (§17.4): shapes and sizes, injected
draws, the motion shortcut, state-dict round trips, and (with LOCI_FAST_UPSTREAM=<checkout of
CognitiveModeling/Loci-Segmented>) parity with upstream's ``LociBackgroundModule`` given the same
weights, inputs and recorded random draws, in training and evaluation mode, RGB and RGB+depth."""
import contextlib
import copy
import os
import sys
import types

import pytest
import torch

from loci_fast.config import load_config
from loci_fast.model.background import BackgroundPretrainer, UncertaintyBackground
from loci_fast.model.upstream import convert_state_dict
from tests.model.test_blocks import upstream_modules

H = W = 64
B = 2


def small(depth: bool, layers: int = 2) -> dict:
    """A tiny model section: C = 64 (the smallest upstream can build, §24.4), contexts 64."""
    return {"input_depth": depth, "background": {
        "supervision_factor": 0.1, "uncertainty_threshold": 0.1, "motion_context_size": 64,
        "depth_context_size": 64, "latent_channels": 64, "num_layers": layers}}


def make_batch(gen, depth: bool, *, static: bool = False) -> dict:
    """A background batch with one sample that has fg masks and one without, mixed per-file settings
    (sample 1 is in its RGB warm-up at step 2), and a moving camera for sample 1 unless ``static``."""
    r = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    batch = {}
    for name in ("source", "target"):
        batch[f"{name}_rgb"] = r(B, 3, H, W)
        batch[f"{name}_depth"] = r(B, 1, H, W) if depth else -torch.ones(B, 1, H, W)
        fg = (r(B, 1, H, W) > 0.7).float()
        fg[1] = 0
        batch[f"{name}_fg"] = fg
    batch.update(
        dt=torch.tensor([0.0, 0.0 if static else 3.0]), use_depth=torch.tensor([depth, depth]),
        use_fg=torch.tensor([True, False]), uncertainty_regularizer=torch.tensor([0.3, 0.2]),
        depth_weighting=torch.tensor([1.0, 0.0]), rgb_loss_factor=torch.tensor([0.5, 2.0]),
        rgb_warmup=torch.tensor([0.0, 5.0]), depth_warmup=torch.tensor([0.0, 0.0]),
        color_input=torch.tensor([1.0, 0.0]))
    return batch


def spread_uncertainty(estimator: torch.nn.Module, frames: list, threshold: float = 0.1) -> None:
    """Shift the U-Net's output bias so that about half of the 16×16 patches of ``frames`` have a
    maximum u below the threshold (at the init nearly every patch has one pixel above it, which would
    zero every token)."""
    with torch.no_grad():
        z = torch.cat([torch.logit(estimator(f)[0].double()) for f in frames])
        patch_max = z.reshape(z.shape[0], H // 16, 16, W // 16, 16).amax(dim=(2, 4))
        shift = torch.logit(torch.tensor(threshold, dtype=torch.float64)) - patch_max.median()
        last = estimator[1].layer3[-1].residual[3]
        last.bias.add_(float(shift))


# ------------------------------------------------------------------ no checkout needed

@pytest.mark.parametrize("config,params", [("configs/pretrain-background.json", 14.2e6),
                                           ("configs/pretrain-background-depth.json", 5.8e6)])
def test_upstream_config_sizes(config, params):
    net = UncertaintyBackground.from_config(load_config(config)["model"])
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - params) < 0.05e6  # reference §12: 14.2 M (C128/L4) and 5.8 M (C64/L2)


@pytest.mark.parametrize("depth", [False, True])
def test_shapes_and_tiny_config(gen, depth):
    cfg = load_config(f"configs/tiny/pretrain-background{'-depth' if depth else ''}.json")["model"]
    pre = BackgroundPretrainer.from_config(cfg)
    out = pre(make_batch(gen, depth), global_step=0)
    assert out["rgb"].shape == (B, 3, H, W) and out["depth"].shape == (B, 1, H, W)
    assert out["motion_context"].shape == (B, 6) and out["depth_context"].shape == (B, 64)
    assert out["u_target"].shape == (B, 1, H, W) and out["region"].shape == (B, 1, H, W)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    assert ((out["rgb"] > 0) & (out["rgb"] < 1)).all()


def test_injected_draws_drive_the_noise(gen):
    torch.manual_seed(1)
    pre = BackgroundPretrainer.from_config(small(False)).train()
    batch = make_batch(gen, False)
    eps = {"uncertainty_source": torch.randn(B, 1, H, W, generator=gen),
           "uncertainty_target": torch.randn(B, 1, H, W, generator=gen),
           "depth_context": torch.randn(B, 64, generator=gen)}
    a = pre(batch, 0, eps)
    b = pre(batch, 0, eps)
    for k in ("rgb", "depth", "depth_context", "unsupervised_uncertainty_loss"):
        assert torch.equal(a[k], b[k]), k
    other = dict(eps, depth_context=torch.randn(B, 64, generator=gen))
    c = pre(batch, 0, other)
    assert not torch.equal(a["depth_context"], c["depth_context"]) and not torch.equal(a["depth"], c["depth"])
    other = dict(eps, uncertainty_target=torch.randn(B, 1, H, W, generator=gen))
    d = pre(batch, 0, other)
    assert not torch.equal(a["unsupervised_uncertainty_loss"], d["unsupervised_uncertainty_loss"])
    assert torch.equal(a["rgb"], d["rgb"])  # the noised map reaches only the uncertainty loss
    with pytest.raises(ValueError, match="noise: expected shape"):
        pre(batch, 0, {"uncertainty_source": torch.randn(B, 1, 8, 8)})
    with pytest.raises(ValueError, match="unknown names"):
        pre(batch, 0, {"binarize": torch.randn(B, 64)})
    # evaluation: the depth context is rounded, whatever noise is offered
    pre.eval()
    e = pre(batch, 0, eps)
    f = pre(batch, 0, dict(eps, depth_context=torch.randn(B, 64, generator=gen)))
    assert torch.equal(e["depth_context"], f["depth_context"])
    assert set(e["depth_context"].unique().tolist()) <= {0.0, 1.0}


def test_uncertainty_noise_in_eval_flag(gen):
    x = torch.rand(B, 3, H, W, generator=gen)
    torch.manual_seed(2)
    net = UncertaintyBackground.from_config(small(False)).eval()
    torch.manual_seed(3)
    u, un = net.uncertainty_estimation(x)
    after = torch.rand(1)
    assert not torch.equal(u, un)  # upstream draws eps in evaluation too (§24.2c)
    torch.manual_seed(3)
    eps = torch.randn_like(u)
    torch.testing.assert_close(un, u + u * (1 - u) * eps, rtol=0, atol=0)
    assert torch.equal(torch.rand(1), after)  # exactly one draw of u's shape
    cfg = small(False)
    cfg["compat"] = {"uncertainty_noise_in_eval": False}
    torch.manual_seed(3)
    first = torch.rand(1)
    torch.manual_seed(2)
    fixed = UncertaintyBackground.from_config(cfg).eval()
    torch.manual_seed(3)
    u2, un2 = fixed.uncertainty_estimation(x)
    assert torch.equal(u2, u) and torch.equal(un2, u2)
    assert torch.equal(torch.rand(1), first)  # flag off: nothing drawn in evaluation


def test_motion_shortcut_and_mask(gen):
    torch.manual_seed(4)
    net = UncertaintyBackground.from_config(small(False)).eval()
    src, tgt = torch.rand(B, 3, H, W, generator=gen), torch.rand(B, 3, H, W, generator=gen)
    u = torch.rand(B, 1, H, W, generator=gen) * 0.2
    enc = net.motion_encoder
    emb0, ctx0 = enc(src, tgt, u, u, torch.tensor([0.2, -0.4]))
    assert torch.equal(ctx0, torch.zeros(B, 6))
    emb1, _ = enc(tgt * 0.5, src, u.flip(0), u, torch.zeros(B))
    torch.testing.assert_close(emb0, emb1, rtol=0, atol=0)  # input-independent map of the identity
    emb2, ctx2 = enc(src, tgt, u, u, torch.tensor([0.0, 2.0]))
    assert torch.equal(ctx2[0], torch.zeros(6)) and ctx2[1].abs().sum() > 0
    torch.testing.assert_close(emb2[0], emb0[0], rtol=0, atol=0)
    # pixels at or above the threshold do not reach the motion tokens
    hot = u.clone()
    hot[:, :, :16, :16] = 0.5
    _, a = enc(src, tgt, hot, hot, torch.tensor([2.0, 2.0]))
    changed = src.clone()
    changed[:, :, :16, :16] = torch.rand(B, 3, 16, 16, generator=gen)
    _, b = enc(changed, tgt, hot, hot, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_state_dict_round_trip(gen):
    torch.manual_seed(5)
    pre = BackgroundPretrainer.from_config(small(True))
    with torch.no_grad():
        for t in pre.state_dict().values():
            t.copy_(torch.randn_like(t) * 0.1 if t.is_floating_point() else torch.randint_like(t, 0, 99))
    fresh = BackgroundPretrainer.from_config(small(True))
    fresh.load_state_dict(pre.state_dict(), strict=True)
    batch = make_batch(gen, True)
    pre.eval(), fresh.eval()
    eps = {"uncertainty_source": torch.randn(B, 1, H, W, generator=gen),
           "uncertainty_target": torch.randn(B, 1, H, W, generator=gen)}
    a, b = pre(batch, 0, eps), fresh(batch, 0, eps)
    for k in ("loss", "rgb", "depth", "depth_context", "motion_context"):
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ parity with upstream

UPSTREAM = os.environ.get("LOCI_FAST_UPSTREAM")
needs_upstream = pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")


@contextlib.contextmanager
def upstream_background(root: str):
    """Upstream's ``LociBackgroundModule`` class, importable without Lightning (a minimal stand-in
    whose ``log`` records the logged values) or jsmin; sys.modules is restored afterwards."""
    extra = ("pytorch_lightning", "jsmin", "model", "model.lightning", "model.lightning.background")
    saved = {k: sys.modules[k] for k in extra if k in sys.modules}

    class LightningModule(torch.nn.Module):
        def log(self, name, value, **kwargs):
            self.__dict__.setdefault("logged", {})[name] = value

    pl = types.ModuleType("pytorch_lightning")
    pl.LightningModule, pl.Callback, pl.Trainer = LightningModule, object, object
    sys.modules["pytorch_lightning"] = pl
    sys.modules.setdefault("jsmin", types.ModuleType("jsmin"))
    try:
        with upstream_modules(root) as import_upstream:
            yield import_upstream("model.lightning.background").LociBackgroundModule
    finally:
        for k in list(sys.modules):
            if k in extra or k.startswith("model."):
                del sys.modules[k]
        sys.modules.update(saved)


def upstream_cfg(model: dict):
    ns = lambda d: types.SimpleNamespace(**{k: ns(v) if isinstance(v, dict) else v for k, v in d.items()})  # noqa
    return ns({"seed": 1234, "model": copy.deepcopy(model)})


def upstream_batch(batch: dict) -> tuple:
    """Our batch dict as upstream's 15-tuple (§17.4), Δt as (B, 1)."""
    keys = ("source_rgb", "source_depth", "source_fg", "target_rgb", "target_depth", "target_fg", "use_depth",
            "use_fg")
    rest = ("uncertainty_regularizer", "depth_weighting", "rgb_loss_factor", "rgb_warmup", "depth_warmup",
            "color_input")
    return tuple(batch[k] for k in keys) + (batch["dt"].reshape(-1, 1),) + tuple(batch[k] for k in rest)


def rel(ours, ref) -> float:
    ours, ref = torch.as_tensor(ours).double().reshape(-1), torch.as_tensor(ref).double().reshape(-1)
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def run_upstream(up, batch, step):
    """Upstream's step with its random draws and its outputs recorded."""
    draws, outputs = [], {}
    real = torch.randn_like

    def recording(x, *a, **k):
        e = real(x, *a, **k)
        draws.append(e.clone())
        return e

    hooks = [up.net.register_forward_hook(lambda m, i, o: outputs.update(net=o)),
             up.net.uncertainty_estimation.register_forward_hook(
                 lambda m, i, o: outputs.setdefault("uncertainty", []).append(o))]
    up.trainer = types.SimpleNamespace(global_step=step)
    torch.randn_like = recording
    try:
        loss = up(upstream_batch(batch), 0, "train" if up.training else "val")
    finally:
        torch.randn_like = real
        for h in hooks:
            h.remove()
    return loss, draws, outputs


LOGGED = ("rgb_l2", "rgb_ssim", "rgb_loss", "depth_loss", "loss", "uncertainty", "prediction_mask",
          "supervised_uncertainty_loss", "unsupervised_uncertainty_loss", "depth_context_bin_mean",
          "depth_context_bin_std", "depth_context_mean")


@needs_upstream
@pytest.mark.parametrize("depth,layers", [(False, 2), (True, 2), (False, 1)])
@pytest.mark.parametrize("training,static", [(True, False), (False, False), (False, True)])
def test_parity_with_upstream_background(gen, depth, layers, training, static):
    model = small(depth, layers)
    with upstream_background(UPSTREAM) as Upstream:
        torch.manual_seed(0)
        up = Upstream(upstream_cfg(model))
        batch = make_batch(gen, depth, static=static)
        frames = [torch.cat((batch[f"{n}_rgb"], batch[f"{n}_depth"]), 1) if depth else batch[f"{n}_rgb"]
                  for n in ("source", "target")]
        spread_uncertainty(up.net.uncertainty_estimation, frames)
        with torch.no_grad():  # away from the init: let the mixing weights and the counter matter
            up.net.depth_encoder[-1].aggregate.alpha.fill_(0.7)
            up.context_loss.num_updates.fill_(1500.0)
        state = up.state_dict()
        ours = BackgroundPretrainer.from_config(model)
        ours.load_state_dict(convert_state_dict(state, kind="background", model=ours), strict=True)
        up.train(training), ours.train(training)
        step = 2
        loss_up, draws, outs = run_upstream(up, batch, step)
        assert len(draws) == (3 if training else 2)
        names = ("uncertainty_source", "uncertainty_target", "depth_context")
        out = ours(batch, step, dict(zip(names, draws)))
        u_ref = outs["uncertainty"][1][0]
        for u in (outs["uncertainty"][0][0], u_ref):  # the test exercises both sides of the patch mask
            kept = (u.reshape(B, H // 16, 16, W // 16, 16).amax(dim=(2, 4)) < 0.1).float().mean().item()
            assert 0.1 < kept < 0.9, f"test set-up: {kept:.2f} of the patches kept"
        rgb, dep, motion, ctx = outs["net"]
        for name, ref in (("rgb", rgb), ("depth", dep), ("motion_context", motion), ("depth_context", ctx),
                          ("u_source", outs["uncertainty"][0][0]), ("u_target", u_ref)):
            assert rel(out[name], ref) < 1e-5, name
        if not static:
            assert motion[1].abs().sum() > 0 and torch.equal(motion[0], torch.zeros(6))
        for name in LOGGED:
            assert rel(out[name], up.logged[f"{'train' if training else 'val'}_{name}"]) < 1e-5, name
        assert rel(out["loss"], loss_up) < 1e-5
        assert ours.context_loss.count == float(up.context_loss.num_updates)
        if training:
            loss_up.backward()
            out["loss"].backward()
            theirs = {k: p.grad for k, p in up.named_parameters()}
            mine = dict(ours.named_parameters())
            conv = convert_state_dict({k: v for k, v in theirs.items() if v is not None}, kind="background")
            assert len(conv) > 0.9 * len(mine)
            for k, g in conv.items():
                if k == "context_loss.num_updates":
                    continue
                assert mine[k].grad is not None, k
                assert rel(mine[k].grad, g) < 1e-4, k
            silent = [k for k, p in mine.items() if k not in conv and p.grad is not None and p.grad.abs().sum() > 0]
            assert not silent, silent
