"""The position proposal (§13): parameter counts, post-processing rules, loss properties, slot
initialisation; and (when LOCI_FAST_UPSTREAM points at an upstream checkout) parity with upstream's
``nn/proposal.py``: position map, mask logits, losses, gradients, post-processed masks and positions."""
import contextlib
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from loci_fast.model.proposal import LociProposal, proposal_slots
from loci_fast.model.proposal.postprocess import close_gaps, drop_small, largest_component, postprocess_masks
from loci_fast.model.proposal.segmentation_loss import instance_segmentation_loss
from loci_fast.model.proposal.slots import segmentation_uncertainty
from loci_fast.model.upstream_proposal import convert_proposal_state_dict
from tests.model.test_blocks import upstream_modules

TINY = dict(num_slots=4, encoder_blocks=[1, 1, 1, 1], decoder_blocks=[1, 1, 1, 1], base_channels=8)
UPSTREAM = os.environ.get("LOCI_FAST_UPSTREAM")
needs_upstream = pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")


def smooth_field(gen, b, c, h, w, cells=4, scale=3.0):
    """Random logits that vary smoothly (bilinear upsampling of a coarse grid): blob-shaped masks."""
    coarse = torch.randn(b, c, cells, cells, generator=gen) * scale
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def gt_masks(gen, b, n, h, w, present=None):
    """Soft, non-overlapping instance masks (values in [0.6, 1]: some fall under the 0.8 threshold),
    with ``present[b]`` non-empty channels (the rest zero padding)."""
    seg = smooth_field(gen, b, n + 1, h, w).argmax(1)
    masks = torch.stack([(seg == i + 1).float() for i in range(n)], 1)
    masks = masks * (0.6 + 0.4 * torch.rand(b, n, h, w, generator=gen))
    if present is not None:
        for i, k in enumerate(present):
            masks[i, k:] = 0
    return masks


def inputs(gen, b=3, h=64, w=64, n=4):
    depth = torch.rand(b, 1, h, w, generator=gen)
    depth[-1] = -1  # a sample without depth
    return gt_masks(gen, b, n, h, w, present=[n, n - 1, 2][:b]), depth, torch.rand(b, 3, h, w, generator=gen)


# ---------------------------------------------------------------- structure and rules

def test_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())
    # §13.3 (upstream's LociProposal, instantiated on CPU): 17.7 M and 80.2 M
    assert round(count(LociProposal((256, 256), 16, [1, 2, 3, 1], [1, 1, 1, 1], 64)) / 1e5) == 177
    assert round(count(LociProposal((256, 256), 16, [1, 2, 4, 2], [1, 1, 1, 1], 128)) / 1e5) == 802


def test_bad_shapes_are_named():
    model = LociProposal((64, 64), **TINY)
    with pytest.raises(ValueError, match="position_proposal.num_slots"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64), torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="input_size"):
        model(torch.zeros(1, 4, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="gt_rgb"):
        model(torch.zeros(1, 4, 64, 64), torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="encoder_blocks"):
        LociProposal((64, 64), 4, [1, 0, 1, 1], [1, 1, 1, 1], 8)


def test_largest_component_is_8_connected_with_raster_order_ties():
    m = torch.zeros(1, 3, 8, 8)
    m[0, 0, 0, 0] = m[0, 0, 1, 1] = m[0, 0, 2, 2] = 1  # a diagonal chain: one 8-connected component
    m[0, 0, 5:7, 5:7] = 1  # a larger, separate square wins
    m[0, 1, 0, 5:7] = 1  # two equal components: the one met first in raster order wins
    m[0, 1, 6, 0:2] = 1
    out = largest_component(m)
    expected = torch.zeros_like(m)
    expected[0, 0, 5:7, 5:7] = 1
    expected[0, 1, 0, 5:7] = 1
    assert torch.equal(out, expected)
    chain = m.clone()
    chain[0, 0, 5:7, 5:7] = 0
    assert torch.equal(largest_component(chain)[0, 0], chain[0, 0])  # diagonal neighbours connect


def test_closing_ignores_the_border_and_keep_rule():
    m = torch.zeros(1, 2, 12, 12)
    m[0, 0, :, :6] = 1
    m[0, 0, 3, 2] = 0  # a hole: closed
    closed = close_gaps(m)
    expected = m.clone()
    expected[0, 0, 3, 2] = 1
    assert torch.equal(closed, expected)  # the border row/column neither grows nor erodes the mask
    m[0, 1, 2:6, 2:8] = 1  # 4 rows: no pixel has its whole 5x5 window inside -> dropped
    kept = drop_small(m)
    assert torch.equal(kept[0, 0], m[0, 0]) and kept[0, 1].sum() == 0
    m[0, 1, 2:7, 2:8] = 1  # 5 rows: kept whole
    assert torch.equal(drop_small(m)[0, 1], m[0, 1])


def test_loss_prefers_matching_logits(gen):
    """Logits that reproduce the GT (any slot order) score a lower loss and a higher IoU than noise."""
    gt = (gt_masks(gen, 2, 4, 32, 32, present=[4, 2]) > 0.8).float()
    perm = torch.tensor([2, 0, 3, 1])
    good = (gt[:, perm] * 20 - 10)
    noise = torch.randn(2, 4, 32, 32, generator=gen)
    loss_good, iou_good = instance_segmentation_loss(gt, good)
    loss_noise, iou_noise = instance_segmentation_loss(gt, noise)
    assert loss_good < loss_noise and iou_good > 0.95 > iou_noise
    with pytest.raises(ValueError, match="overlap"):
        instance_segmentation_loss(torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_proposal_slots_sorting_and_background(gen):
    torch.manual_seed(0)
    model = LociProposal((64, 64), **TINY)
    _, depth, rgb = inputs(gen, b=2)
    u0 = torch.rand(2, 1, 64, 64, generator=gen)
    slots = proposal_slots(model, rgb, depth, 3, u0)
    area = slots.mask[:, :3].sum((2, 3))
    assert torch.all(area[:, :-1] >= area[:, 1:])  # largest first
    assert torch.equal(slots.fg, (u0 > 0.8).float())
    torch.testing.assert_close(slots.mask[:, 3:], 1 - slots.proposal_mask.amax(1, keepdim=True))
    for b in range(2):  # every kept slot is one of the proposals with its own position
        for o in range(3):
            hits = [n for n in range(4) if torch.equal(slots.proposal_mask[b, n], slots.mask[b, o])]
            assert hits and any(torch.equal(slots.proposal_position[b, n], slots.position[b].view(3, 4)[o])
                                for n in hits)
    with pytest.raises(ValueError, match="exceeds"):
        proposal_slots(model, rgb, depth, 5, u0)
    # the same slots whatever the modules' train/eval mode (upstream crashes in train mode, §24.12)
    again = proposal_slots(model.train(), rgb, depth, 3, u0)
    assert torch.equal(again.mask, slots.mask) and torch.equal(again.position, slots.position)


def test_segmentation_uncertainty_passes_the_draw(gen):
    seen = {}

    def estimate(x, noise):
        seen["x"], seen["noise"] = x, noise
        return x[:, :1].sigmoid(), None

    rgb, depth, eps = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8, generator=gen)
    u = segmentation_uncertainty(estimate, rgb, depth, True, noise=eps)
    assert seen["x"].shape == (2, 4, 8, 8) and seen["noise"] is eps and torch.equal(u, rgb[:, :1].sigmoid())
    segmentation_uncertainty(estimate, rgb, depth, False)
    assert seen["x"] is rgb and seen["noise"] is None


# ---------------------------------------------------------------- upstream parity

@contextlib.contextmanager
def upstream_proposal(root: str, need_postprocess: bool = False):
    """Upstream's ``nn.proposal`` module. Its skimage/cv2 imports are only used by the eval-mode
    post-processing: stubbed when missing, and then the post-processing parity is skipped."""
    real = True
    for name in ("skimage.measure", "cv2"):
        try:
            __import__(name)
        except ImportError:
            real = False
    if need_postprocess and not real:
        pytest.skip("upstream's post-processing needs scikit-image and opencv (e.g. pip install --target DIR "
                    "scikit-image opencv-python-headless, then PYTHONPATH=DIR)")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "skimage"}
    if "skimage" not in sys.modules and not real:
        sk = types.ModuleType("skimage")
        sk.measure = types.ModuleType("skimage.measure")
        sys.modules.update({"skimage": sk, "skimage.measure": sk.measure})
    try:
        with upstream_modules(root) as import_upstream:
            yield import_upstream("nn.proposal")
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] == "skimage"]:
            del sys.modules[k]
        sys.modules.update(saved)


def pair(up, depth_input: bool, size=(64, 64)):
    torch.manual_seed(1)
    theirs = up.LociProposal(size, TINY["num_slots"], TINY["encoder_blocks"], TINY["decoder_blocks"],
                             TINY["base_channels"], depth_input=depth_input)
    ours = LociProposal(size, **TINY, depth_input=depth_input)
    ours.load_state_dict(convert_proposal_state_dict(theirs.state_dict(), model=ours), strict=True)
    return ours, theirs


def assert_rel(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    err = (a.double() - b.double()).abs().max().item()
    scale = b.double().abs().max().item()
    assert err <= tol * max(scale, 1e-12), f"{what}: max error {err:.3g} vs scale {scale:.3g}"


@needs_upstream
@pytest.mark.parametrize("depth_input", [False, True])
def test_upstream_parity_forward_losses_gradients(gen, depth_input):
    with upstream_proposal(UPSTREAM) as up:
        ours, theirs = pair(up, depth_input)
        masks, depth, rgb = inputs(gen)
        args = (masks, depth) if depth_input else (masks, depth, rgb)
        theirs.train()
        ref = theirs(*args)
        out = ours(*args)
        # the network's outputs, through upstream's submodule on the same input
        up_input = torch.cat(((depth if depth_input else rgb) * (masks > 0.8).float().amax(1, keepdim=True),
                              *[g * (masks > 0.8).float().amax(1, keepdim=True) for g in
                                (theirs.grid.grid_x, theirs.grid.grid_y)]), 1)
        ref_map, ref_logits = theirs.position_estimator(up_input)
        assert_rel(out["position_map"], ref_map, 1e-5, "position map")
        assert_rel(out["mask_logits"], ref_logits, 1e-5, "mask logits")
        for key in ("regularizer_loss", "mask_loss", "iou", "softmask"):
            assert_rel(out[key], ref[key], 1e-5, key)
        (ref["regularizer_loss"] + ref["mask_loss"]).backward()
        (out["regularizer_loss"] + out["mask_loss"]).backward()
        theirs_grads = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            q = theirs_grads[name.replace("to_position", "to_possition")]
            assert p.grad is not None and q.grad is not None, name
            assert_rel(p.grad, q.grad, 1e-4, f"gradient of {name}")


@needs_upstream
@pytest.mark.parametrize("depth_input", [False, True])
def test_upstream_parity_postprocessed_slots(gen, depth_input):
    with upstream_proposal(UPSTREAM, need_postprocess=True) as up:
        ours, theirs = pair(up, depth_input)
        masks, depth, rgb = inputs(gen)
        # trained-looking logits: scale the hyper head so the argmax forms blobs, not speckle
        with torch.no_grad():
            for m in (ours, theirs):
                m.position_estimator.hyper_network[5].weight.mul_(30)
        fg = (torch.rand(3, 1, 64, 64, generator=gen) > 0.1).float()
        theirs.eval()
        ref = theirs(torch.zeros_like(masks), depth, rgb, fg_mask=fg)
        out = ours(torch.zeros_like(masks), depth, rgb, fg, postprocess=True)
        assert ref["mask"].sum() > 0  # something survives the keep rule
        assert torch.equal(out["mask"], ref["mask"])
        assert_rel(out["position"], ref["position"], 1e-5, "positions")
        # upstream's segmentation init (§13.4) sorts the eval outputs by area and keeps the first O
        slots = proposal_slots(ours, rgb, depth, 3, fg * 0.9)  # fg = [u0 > 0.8] reproduces fg
        order = torch.sort(ref["mask"].sum((2, 3)), dim=1, descending=True).indices[:, :3]
        rows = torch.arange(3)[:, None]
        assert torch.equal(slots.mask[:, :3], ref["mask"][rows, order])
        assert_rel(slots.position, ref["position"][rows, order].reshape(3, 12), 1e-5, "slot positions")
        assert torch.equal(slots.mask[:, 3:], 1 - ref["mask"].amax(1, keepdim=True))


@needs_upstream
def test_upstream_parity_postprocess_steps(gen):
    """Each post-processing step on the same blob-shaped logits, against upstream's functions."""
    with upstream_proposal(UPSTREAM, need_postprocess=True) as up:
        logits = smooth_field(gen, 2, 6, 48, 64, cells=6, scale=4.0)
        logits += 0.5 * torch.randn(logits.shape, generator=gen)  # ragged edges, holes, islands
        hard = up.hardmax_with_bg(logits)
        ours = largest_component(hard)
        assert torch.equal(ours, up.largest_connected_component(hard))
        assert torch.equal(close_gaps(ours), up.fill_gaps(ours))
        closed = close_gaps(ours)
        assert torch.equal(drop_small(closed), up.remove_small_artifacts(closed))
        final = up.remove_small_artifacts(up.fill_gaps(up.largest_connected_component(hard)))
        assert torch.equal(postprocess_masks(logits), final)
        assert 0 < final.sum() < final.numel()


def test_bfloat16_model_trains_and_postprocesses(gen):
    torch.manual_seed(0)
    model = LociProposal((64, 64), **TINY).to(torch.bfloat16)
    masks, depth, rgb = (t.to(torch.bfloat16) for t in inputs(gen))
    out = model(masks, depth, rgb, postprocess=True)
    loss = out["regularizer_loss"] + out["mask_loss"]
    loss.backward()
    assert torch.isfinite(loss) and out["mask_loss"].dtype == torch.float32
    assert all(torch.isfinite(p.grad.float()).all() for p in model.parameters())
    assert out["mask"].dtype == torch.bfloat16 and set(out["mask"].unique().tolist()) <= {0.0, 1.0}
