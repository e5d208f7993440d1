"""Decoders at tiny sizes: shapes, LociDecoder semantics (occlusion, raw masks, ground-truth
conditioning, depth scaling), the priority-noise compat flag, kernel backends, bad inputs."""
import pytest
import torch

import loci_fast.kernels as K
from loci_fast.model.compat import COMPAT_FLAGS, resolve_compat
from loci_fast.model.decoder import LociDecoder
from loci_fast.model.depth_decoder import MaskToDepthDecoder
from loci_fast.model.mask_decoder import MaskDecoder
from loci_fast.model.pretrain_encoders import DepthPretrainer, MaskPretrainer, RGBPretrainer
from loci_fast.model.rgb_decoder import MaskDepthToRGBDecoder

G = 32
CFG = {
    "num_slots": 3, "gestalt_size": G, "input_size": [64, 48],
    "embedding": {"mask": {"channels": 8, "expansion": 2}, "depth": {"channels": 8, "expansion": 2},
                  "rgb": {"channels": 16, "expansion": 2}},
    "decoder": {"depth": {"layers": 1}, "rgb": {"layers": 2}},
}


def _slots(gen, b=2, o=3):
    pos = torch.cat([torch.rand(b, o, 2, generator=gen) * 1.6 - 0.8, torch.rand(b, o, 1, generator=gen) * 2,
                     torch.rand(b, o, 1, generator=gen) * 0.3 + 0.1], -1).reshape(b, o * 4)
    ges = torch.rand(b, o * (3 * G + 1), generator=gen)
    return pos, ges


def test_module_shapes(gen):
    assert MaskDecoder(256, 32)(torch.rand(2, 256, 2, 3, generator=gen)).shape == (2, 1, 32, 48)
    # 256 -> 128 -> 64 -> 32, as upstream's default; 32 -> 16 -> 8 here
    convs = [m for m in MaskDecoder(256, 32).decoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 64, 32]
    pos = torch.rand(2, 4, generator=gen)
    mask = torch.rand(2, 1, 32, 48, generator=gen)
    assert MaskToDepthDecoder(G, 1, 8, 8, 2)(pos, torch.rand(2, G, generator=gen), mask).shape == (2, 1, 32, 48)
    rgb = MaskDepthToRGBDecoder(G, 1, 8, 8, 16, 2)(pos, torch.rand(2, G, generator=gen), mask, mask)
    assert rgb.shape == (2, 3, 32, 48) and rgb.min() >= 0 and rgb.max() <= 1
    m = torch.rand(2, 1, 64, 64, generator=gen)
    logits, g, p = MaskPretrainer((64, 64), G, 8, (1, 1), 16, 2)(m)
    assert logits.shape == (2, 1, 64, 64) and g.shape == (2, G) and p.shape == (2, 3)
    d, g, p = DepthPretrainer((64, 64), G, 1, 8, 8, (1, 1), 16, 2)(m, m)
    assert d.shape == (2, 1, 64, 64) and g.shape == (2, G)
    r, g, p = RGBPretrainer((64, 64), G, 1, 8, 8, 16, (1, 1), 16, 2)(m, m, torch.rand(2, 3, 64, 64))
    assert r.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="multiples of 32"):
        MaskPretrainer((48, 64), G, 8, (1, 1), 16, 2)


def test_loci_decoder_layouts_and_semantics(gen):
    dec = LociDecoder.from_config(CFG).eval()
    pos, ges = _slots(gen)
    with torch.no_grad():
        mask, rgb, depth, mask_raw, depth_raw = dec(pos, ges)
        assert mask.shape == (2, 3, 64, 48) and rgb.shape == (2, 9, 64, 48) and depth.shape == (2, 3, 64, 48)
        assert torch.equal(mask, mask_raw)
        # depth = z + depth_raw * z_scale per slot
        z = pos.view(2, 3, 4)[:, :, 2, None, None]
        zs = ges.view(2, 3, 3 * G + 1)[:, :, -1, None, None]
        assert torch.allclose(depth, z + depth_raw * zs, atol=1e-6)
        # slot o of sample b decodes independently of the other slots (without priority)
        one = LociDecoder.from_config(CFG, num_slots=1).eval()
        one.load_state_dict(dec.state_dict())
        m1, r1, *_ = one(pos.view(6, 4)[4:5], ges.view(6, -1)[4:5])
        assert torch.allclose(m1[0, 0], mask[1, 1], atol=1e-5) and torch.allclose(r1[0], rgb[1, 3:6], atol=1e-5)

        dec.prioritize_noise = False
        pri = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
        occ, _, _, raw, _ = dec(pos, ges, pri, compute_raw=True)
        assert torch.allclose(raw, mask_raw, atol=1e-5)  # raw = unoccluded decode
        assert not torch.allclose(occ, raw)
        occ2, *_ = dec(pos, ges, pri, compute_raw=False)
        assert torch.allclose(occ, occ2, atol=1e-5)
        # the front slot (highest priority) is not occluded: its logits equal the raw ones
        assert torch.allclose(occ[0, 2], raw[0, 2], atol=1e-5) and torch.allclose(occ[1, 0], raw[1, 0], atol=1e-5)

        # ground truth replaces the conditioning mask / depth of the depth and RGB decoders
        gt_mask = (torch.rand(2, 3, 64, 48, generator=gen) > 0.5).float()
        gt_depth = torch.randn(2, 3, 64, 48, generator=gen)
        _, rgb_gt, _, _, draw_gt = dec(pos, ges, gt_mask=gt_mask, gt_depth=gt_depth)
        assert not torch.allclose(rgb_gt, rgb) and not torch.allclose(draw_gt, depth_raw)
        _, rgb_d, _, _, draw_d = dec(pos, ges, gt_depth=gt_depth)
        assert torch.allclose(draw_d, depth_raw) and not torch.allclose(rgb_d, rgb)


def test_priority_noise_flag(gen):
    pos, ges = _slots(gen)
    pri = torch.zeros(2, 3)  # equal priorities: the noise decides the occlusion order
    noisy = LociDecoder.from_config(CFG).eval()
    assert noisy.prioritize_noise is True  # upstream behaviour by default
    with torch.no_grad():
        a, b = noisy(pos, ges, pri)[0], noisy(pos, ges, pri)[0]
        assert not torch.allclose(a, b)
        quiet = LociDecoder.from_config({**CFG, "compat": {"prioritize_noise": False}}).eval()
        quiet.load_state_dict(noisy.state_dict())
        assert torch.equal(quiet(pos, ges, pri)[0], quiet(pos, ges, pri)[0])
    assert set(resolve_compat({})) == set(COMPAT_FLAGS)
    with pytest.raises(ValueError, match="did you mean 'prioritize_noise'"):
        resolve_compat({"compat": {"prioritise_noise": False}})
    with pytest.raises(ValueError, match="true or false"):
        resolve_compat({"compat": {"prioritize_noise": 1}})


def test_gradients_reach_every_input(gen):
    dec = LociDecoder.from_config(CFG)
    dec.prioritize_noise = False
    pos, ges = _slots(gen)
    pos.requires_grad_(True)
    ges.requires_grad_(True)
    pri = torch.tensor([[0.0, 0.01, 0.02], [0.02, 0.0, 0.01]], requires_grad=True)
    mask, rgb, depth, raw, draw = dec(pos, ges, pri, compute_raw=True)
    (mask.sum() + rgb.sum() + depth.sum() + raw.sum()).backward()
    for name, t in (("position", pos), ("gestalt", ges), ("priority", pri)):
        assert t.grad is not None and t.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in dec.parameters())


def test_triton_backend_matches_reference(gen):
    dec = LociDecoder.from_config(CFG)
    dec.prioritize_noise = False
    pos, ges = _slots(gen)
    pri = torch.tensor([[0.0, 0.01, 0.02], [0.02, 0.0, 0.01]])
    results = {}
    for backend in ("reference", "triton"):
        p, g = pos.clone().requires_grad_(True), ges.clone().requires_grad_(True)
        dec.zero_grad()
        with K.use_backend(backend):
            outs = dec(p, g, pri, compute_raw=True)
        sum(o.square().mean() for o in outs).backward()
        results[backend] = [o.detach() for o in outs] + [p.grad, g.grad, dec.to_mask.decoder[0].weight.grad.clone()]
    for a, b in zip(results["reference"], results["triton"]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_named(gen):
    dec = LociDecoder.from_config(CFG)
    pos, ges = _slots(gen)
    with pytest.raises(ValueError, match=r"position must be \(B, 12\)"):
        dec(pos[:, :8], ges)
    with pytest.raises(ValueError, match="gestalt must be"):
        dec(pos, ges[:, :-1])
    with pytest.raises(ValueError, match="priority must be"):
        dec(pos, ges, torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"gt_mask must be \(2, 3, 64, 48\)"):
        dec(pos, ges, gt_mask=torch.zeros(2, 1, 64, 48))
    with pytest.raises(ValueError, match="gestalt_size // 2"):
        MaskDecoder(32, 32)
    with pytest.raises(ValueError, match="mask must be"):
        MaskToDepthDecoder(G, 1, 8, 8, 2)(torch.rand(2, 4), torch.rand(2, G), torch.rand(2, 1, 30, 30))
