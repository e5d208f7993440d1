"""LociEncoder: shapes, parameter counts (§20), the 16-channel input, the hypernetwork path, kernel
backends agreeing, and (when LOCI_FAST_UPSTREAM points at an upstream checkout) numeric parity."""
import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch

from loci_fast.kernels import use_backend
from loci_fast.model.encoder import LociEncoder
from loci_fast.model.input_preprocessing import InputPreprocessing
from loci_fast.model.upstream_encoder_keys import convert_encoder_state_dict, encoder_key_map
from tests.model.test_blocks import gaussian_oracle, upstream_modules

REPO = Path(__file__).resolve().parents[2]
TINY = dict(gestalt_size=8, channels=16, blocks=[1, 1, 1, 1], hyper_channels=16)


def make_inputs(gen, b, o, h, g, dtype=torch.float32, rgb_blocks=None):
    r = lambda *s: torch.rand(*s, generator=gen, dtype=dtype)
    return dict(
        input_rgb=r(b, 3, h, h), input_depth=r(b, 1, h, h), error_last=r(b, 1, h, h),
        mask=torch.softmax(3 * torch.randn(b, o + 1, h, h, generator=gen, dtype=dtype), 1),
        mask_raw=r(b, o, h, h), slot_rgb=r(b, 3 * (rgb_blocks or o), h, h), slot_depth=r(b, o, h, h),
        position=torch.cat([r(b, o, 2) * 2 - 1, r(b, o, 1), 0.05 + 0.3 * r(b, o, 1)], -1).view(b, 4 * o),
        gestalt=torch.randn(b, o * (3 * g + 1), generator=gen, dtype=dtype),
        slot_reset=(r(b, o) > 0.3).to(dtype))


def tiny(o=2, **kw):
    torch.manual_seed(0)
    return LociEncoder(num_slots=o, input_size=(64, 64), **{**TINY, **kw})


# ---------------------------------------------------------------- structure

def test_shapes_and_layout(gen):
    enc = tiny(o=3).eval()
    inputs = make_inputs(gen, 2, 3, 64, 8)
    with use_backend("reference"):
        position, gestalt, priority = enc(**inputs)
        assert position.shape == (2, 12) and gestalt.shape == (2, 3 * 25) and priority.shape == (2, 3)
        # eval: codes are binary, z and z_scale in (0, 1)
        codes = gestalt.view(2, 3, 25)
        assert set(codes[..., :24].unique().tolist()) <= {0.0, 1.0}
        assert torch.all((codes[..., 24] > 0) & (codes[..., 24] < 1))
        assert torch.all((position.view(2, 3, 4)[..., 2] > 0) & (position.view(2, 3, 4)[..., 2] < 1))
        # batch layout: slot o of sample b only depends on sample b (change sample 1, sample 0 stays)
        other = dict(inputs, input_rgb=inputs["input_rgb"].clone())
        other["input_rgb"][1] += 1
        p2, g2, _ = enc(**other)
        torch.testing.assert_close(p2[0], position[0])
        assert not torch.allclose(p2[1], position[1])
        # an rgb input with a trailing background block (upstream's (O+1)·3 layout) gives the same result
        with_bg = dict(inputs, slot_rgb=torch.cat([inputs["slot_rgb"], torch.rand(2, 3, 64, 64)], 1))
        torch.testing.assert_close(enc(**with_bg)[0], position)


def test_default_parameter_counts():
    enc = LociEncoder(num_slots=16, gestalt_size=256, input_size=(256, 256), channels=32, blocks=[1, 1, 3, 2],
                      hyper_channels=256)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(enc) == 63_970_446  # upstream LociEncoder, same config, instantiated on CPU: 64.0 M (§20)
    assert round(count(enc.hyper_weights) / 1e6, 1) == 54.1
    assert round(enc.hyper_weights[-1].weight.numel() / 1e6, 1) == 53.7
    assert round(count(enc.mask_gestalt_encoder) / 1e6, 2) == 2.29
    assert round(count(enc.stem) / 1e6, 2) == 0.51
    assert [p.num_weights() for p in enc.hyper_parts()] == [24000, 19200, 12800, 51200, 51200, 51200]
    assert enc.hyper_weights[-1].out_features == 209_600
    assert len(enc.hyper_weights) == 4  # Linear, SiLU, [Linear, SiLU] x (3 - 2), Linear


def test_input_preprocessing_channels(gen):
    b, o, h = 2, 3, 8
    inputs = make_inputs(gen, b, o, h, 4)
    pre = InputPreprocessing(o, (h, h))
    with use_backend("reference"):
        x = pre(inputs["input_rgb"], inputs["input_depth"], inputs["error_last"], inputs["mask"],
                inputs["mask_raw"], inputs["slot_rgb"], inputs["slot_depth"], inputs["position"],
                inputs["slot_reset"]).view(b, o, 16, h, h)
    reset = inputs["slot_reset"][:, :, None, None]
    own = inputs["mask"][:, :o] * reset
    raw = inputs["mask_raw"] * reset
    for s in range(o):
        torch.testing.assert_close(x[:, s, 0:3], inputs["input_rgb"])
        torch.testing.assert_close(x[:, s, 3], inputs["input_depth"][:, 0])
        torch.testing.assert_close(x[:, s, 4], inputs["error_last"][:, 0])
        torch.testing.assert_close(x[:, s, 5], own[:, s])
        torch.testing.assert_close(x[:, s, 6], own.sum(1) - own[:, s])
        torch.testing.assert_close(x[:, s, 7], inputs["mask"][:, o])
        torch.testing.assert_close(x[:, s, 8:11], inputs["slot_rgb"][:, 3 * s:3 * s + 3] * raw[:, s:s + 1])
        torch.testing.assert_close(x[:, s, 11], inputs["slot_depth"][:, s] * raw[:, s])
        assert torch.all(x[:, s, 12:14] == 0)
        torch.testing.assert_close(x[:, s, 15], raw[:, s])
    gauss = gaussian_oracle(inputs["position"].view(b * o, 4), h, h).float().view(b, o, h, h)
    torch.testing.assert_close(x[:, :, 14], gauss, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mask: expected shape"):
        pre(inputs["input_rgb"], inputs["input_depth"], inputs["error_last"], inputs["mask"][:, :o],
            inputs["mask_raw"], inputs["slot_rgb"], inputs["slot_depth"], inputs["position"], inputs["slot_reset"])


def test_hyper_path_and_slot_reset(gen):
    enc = tiny(o=2).eval()
    for part in enc.hyper_parts():
        part.alpha.data.fill_(0.5)
    inputs = make_inputs(gen, 2, 2, 64, 8)
    with use_backend("reference"):
        plain = enc(**inputs, use_hyper_weights=False)
        hyper = enc(**inputs, use_hyper_weights=True)
        assert not torch.allclose(plain[0], hyper[0])
        # a reset slot (slot_reset 0) gets base weights only: the same as no hypernetwork
        zero = dict(inputs, slot_reset=torch.zeros(2, 2))
        torch.testing.assert_close(enc(**zero, use_hyper_weights=True)[0], enc(**zero, use_hyper_weights=False)[0])
        # upstream's default slot_reset: zeros without the hypernetwork, ones with it
        none = dict(inputs, slot_reset=None)
        torch.testing.assert_close(enc(**none, use_hyper_weights=False)[0], enc(**zero, use_hyper_weights=False)[0])
        ones = dict(inputs, slot_reset=torch.ones(2, 2))
        torch.testing.assert_close(enc(**none)[0], enc(**ones)[0])
        # gradients reach the hypernetwork through the dynamic weights
        enc.train()
        position, gestalt, priority = enc(**inputs)
        (position.sum() + gestalt.sum() + priority.sum()).backward()
        assert enc.hyper_weights[0].weight.grad.abs().sum() > 0
        assert enc.stem.alpha.grad.abs() > 0


def test_priority_index():
    enc = tiny(o=3)
    torch.testing.assert_close(enc.priority_encoder.indices(), torch.tensor([[-1.0, 0.0, 1.0]]))
    one = tiny(o=1)
    assert torch.equal(one.priority_encoder.indices(), torch.zeros(1, 1))  # upstream: NaN (§24.13)


def test_from_config_and_bad_input(gen):
    cfg = json.loads((REPO / "configs" / "pretrain-encoder-decoder-stage1.json").read_text())["model"]
    cfg = dict(cfg, input_size=[64, 64], gestalt_size=8, encoder=dict(channels=16, blocks=[1, 1, 1, 1],
                                                                      hyper_channels=16))
    enc = LociEncoder.from_config(cfg, num_slots=1)
    assert enc.num_slots == 1 and enc.input_size == (64, 64) and enc.stem.slices_from_start
    enc2 = LociEncoder.from_config(dict(cfg, compat={"hyper_slices_from_start": False}))
    assert enc2.num_slots == cfg["num_slots"] and not enc2.rgb_gestalt_encoder.slices_from_start
    from loci_fast.config import load_config
    node = load_config(REPO / "configs" / "pretrain-encoder-decoder-stage1.json").model  # a config node
    full = LociEncoder.from_config(node, num_slots=1)
    assert full.num_hyper_weights() == 209_600 and full.input_size == (256, 256) and full.stem.slices_from_start
    inputs = make_inputs(gen, 1, 1, 64, 8)
    with pytest.raises(ValueError, match="gestalt: expected shape"):
        enc(**dict(inputs, gestalt=inputs["gestalt"][:, :-1]))
    with pytest.raises(ValueError, match="channels"):
        LociEncoder(num_slots=1, input_size=(64, 64), **{**TINY, "channels": 24})


def test_key_map_drops_only_zero_legacy():
    rules = encoder_key_map()
    assert rules[0][1] is None
    sd = {"encoder.preprocess.legacy": torch.tensor(0), "encoder.stem.alpha": torch.ones(1),
          "encoder.mask_gestalt_pooling.0.legacy": torch.tensor(0), "decoder.x": torch.ones(1)}
    assert set(convert_encoder_state_dict(sd, "encoder.")) == {"stem.alpha"}
    with pytest.raises(ValueError, match="legacy"):
        convert_encoder_state_dict({"preprocess.legacy": torch.tensor(1)})


# ---------------------------------------------------------------- kernel backends

@pytest.mark.slow
def test_reference_and_triton_backends_agree(gen):
    """Forward and backward of the whole encoder in float64 with both kernel backends (Triton interpreted)."""
    o, b, g = 2, 1, 8
    enc = tiny(o=o).double().train()
    for part in enc.hyper_parts():
        part.alpha.data.fill_(0.3)
    inputs = make_inputs(gen, b, o, 64, g, dtype=torch.float64)
    inputs["position"].requires_grad_(True)
    inputs["gestalt"].requires_grad_(True)
    leaves = [inputs["position"], inputs["gestalt"], *enc.parameters()]
    results = {}
    for backend in ("reference", "triton"):
        with use_backend(backend):
            torch.manual_seed(7)  # same Binarize noise
            position, gestalt, priority = enc(**inputs)
            w = torch.linspace(-1, 1, gestalt.numel(), dtype=torch.float64).view_as(gestalt)
            loss = (position * torch.arange(1.0, 9.0, dtype=torch.float64)).sum() + (w * gestalt).sum() + priority.sum()
            grads = torch.autograd.grad(loss, leaves)
        results[backend] = (position, gestalt, priority, *grads)
    for ref, tri in zip(results["reference"], results["triton"]):
        torch.testing.assert_close(tri, ref, rtol=1e-9, atol=1e-10)
    assert results["reference"][3].abs().sum() > 0  # the position gradient flows (Gaussian input channel)


# ---------------------------------------------------------------- upstream parity (optional)

@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LOCI_FAST_UPSTREAM"), reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
@pytest.mark.parametrize("num_slots", [3, 1])
def test_upstream_parity(gen, num_slots):
    """Same weights (converted), same inputs, float32: outputs and parameter gradients within 1e-4 relative."""
    o, b, h, g = num_slots, 2, 64, 32
    with upstream_modules(os.environ["LOCI_FAST_UPSTREAM"]) as import_upstream:
        UpstreamEncoder = import_upstream("nn.encoder").LociEncoder
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            up = UpstreamEncoder(input_size=(h, h), latent_size=(h // 16, h // 16), num_slots=o, base_channels=32,
                                 blocks=[1, 1, 3, 2], hyper_channels=64, gestalt_size=g, batch_size=b)
        with torch.no_grad():  # make the hypernetwork and priority terms matter
            for name in ("stem", "position_encoder", "gestalt_base_encoder", "mask_gestalt_encoder",
                         "depth_gestalt_encoder", "rgb_gestalt_encoder"):
                getattr(up, name).alpha.fill_(0.05)
            up.priority_encoder.priority_factor.fill_(0.7)
            up.priority_encoder.depth_factor.fill_(-0.3)
        ours = LociEncoder(num_slots=o, gestalt_size=g, input_size=(h, h), channels=32, blocks=[1, 1, 3, 2],
                           hyper_channels=64)
        ours.load_state_dict(convert_encoder_state_dict(up.state_dict()), strict=True)
        inputs = make_inputs(gen, b, o, h, g, rgb_blocks=o + 1 if o > 1 else 1)
        for train in (True, False):
            for hyper in (True, False):
                up.train(train), ours.train(train)
                outs = []
                for model, extra in ((up, {"slot_flow": torch.zeros(b, 2 * o, h, h)}), (ours, {})):
                    model.zero_grad()
                    torch.manual_seed(11)  # Binarize draws in the same order on both sides
                    with use_backend("reference"):
                        position, gestalt, priority = model(**inputs, **extra, use_hyper_weights=hyper)
                    keep = [position, gestalt] + ([priority] if o > 1 else [])  # upstream's O=1 priority is NaN
                    w = torch.linspace(-1, 1, gestalt.numel()).view_as(gestalt)
                    (position.sum() + (w * gestalt).sum() + (priority.sum() if o > 1 else 0)).backward()
                    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
                    outs.append((keep, grads))
                (up_out, up_grads), (our_out, our_grads) = outs
                for a, ref in zip(our_out, up_out):
                    assert (a - ref).abs().max() <= 1e-4 * ref.abs().max()
                assert set(our_grads) == set(up_grads)
                for k, ref in up_grads.items():
                    assert (our_grads[k] - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-12, k
