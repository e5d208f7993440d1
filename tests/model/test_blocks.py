"""Building blocks of the encoder side: shapes, exact maths against independent oracles, gradchecks,
and (when LOCI_FAST_UPSTREAM points at an upstream checkout) parity with upstream's modules."""
import contextlib
import importlib
import io
import math
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from loci_fast.kernels import use_backend
from loci_fast.model.binarize import Binarize
from loci_fast.model.convnext import (Bottleneck, ConvNeXtBlock, ConvNeXtStem, LinearSkip, PatchDownscale,
                                      PatchUpscale, SkipConnection)
from loci_fast.model.embedding import PositionEmbedding, PositionPooling
from loci_fast.model.hypernets import HyperConv2dDepthWise, HyperConvNextBlock, HyperSequential, NonHyperWrapper
from loci_fast.model.mask_center import MaskCenter, PositionInMask
from loci_fast.model.patch_codecs import PatchDownscaleMLP, UpscaleMLP


def rand(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def gaussian_oracle(position, h, w):
    """Gaus2D written out (§1.1), float64."""
    p = position.double()
    x, y = p[:, 0].clamp(-1, 1), p[:, 1].clamp(-1, 1)
    std = p[:, p.shape[1] - 1] if p.shape[1] > 2 else torch.zeros_like(x)
    sy = std.clamp(1 / min(h, w), 0.5)
    sx = sy * h / w
    gx = torch.tensor([2 * j / (w - 1) - 1 for j in range(w)], dtype=torch.float64)
    gy = torch.tensor([2 * i / (h - 1) - 1 for i in range(h)], dtype=torch.float64)
    return torch.exp(-(gx[None, None, :] - x[:, None, None]) ** 2 / (2 * sx[:, None, None] ** 2)
                     - (gy[None, :, None] - y[:, None, None]) ** 2 / (2 * sy[:, None, None] ** 2))[:, None]


# ---------------------------------------------------------------- skips

@pytest.mark.parametrize("cin,cout", [(8, 8), (8, 2), (2, 8), (6, 4), (4, 6)])
def test_skip_connection_channels(gen, cin, cout):
    x = rand(gen, 2, cin, 3, 5)
    y = SkipConnection(cin, cout)(x)
    g = math.gcd(cin, cout)
    expect = torch.stack([x[:, i * (cin // g):(i + 1) * (cin // g)].mean(1) for i in range(g)], 1)
    expect = torch.stack([expect[:, c // (cout // g)] for c in range(cout)], 1)
    torch.testing.assert_close(y, expect)


def test_skip_connection_scales(gen):
    x = rand(gen, 2, 4, 6, 6)
    up = SkipConnection(4, 2, scale_factor=2)(x)
    assert up.shape == (2, 2, 12, 12)
    torch.testing.assert_close(up[:, :, 1::2, ::2], (x[:, 0::2] + x[:, 1::2]) / 2)
    down = SkipConnection(4, 8, scale_factor=0.5)(x)
    pooled = F.avg_pool2d(x, 2)
    torch.testing.assert_close(down, pooled.repeat_interleave(2, dim=1))
    odd = SkipConnection(4, 4, scale_factor=0.25)(rand(gen, 1, 4, 6, 6))
    assert odd.shape == (1, 4, 1, 1)


def test_linear_skip(gen):
    x = rand(gen, 3, 12)
    torch.testing.assert_close(LinearSkip(12, 3)(x), x.view(3, 3, 4).mean(-1))
    torch.testing.assert_close(LinearSkip(12, 24)(x), x.repeat_interleave(2, dim=1))
    with pytest.raises(ValueError, match="in_features"):
        LinearSkip(12, 5)
    with pytest.raises(ValueError, match="x: expected shape"):
        LinearSkip(12, 3)(rand(gen, 3, 11))


# ---------------------------------------------------------------- MLPs

def test_bottleneck_math_init_and_checkpoint(gen):
    torch.manual_seed(0)
    m = Bottleneck(6, 10)
    assert m.weight1.shape == (40, 6) and m.weight2.shape == (10, 40)
    assert torch.all(m.bias1 == 0) and torch.all(m.bias2 == 0)
    bound = math.sqrt(6 / (6 + 40))  # Xavier-uniform bound
    assert m.weight1.abs().max() <= bound and m.weight1.abs().max() > 0.8 * bound
    x = rand(gen, 2, 6, 3, 4)
    y = m(x)
    h = torch.einsum("kc,bchw->bkhw", m.weight1, x) + m.bias1[:, None, None]
    expect = torch.einsum("ok,bkhw->bohw", m.weight2, F.silu(h)) + m.bias2[:, None, None]
    torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-5)
    # checkpointing: same values and gradients
    x.requires_grad_(True)
    g1 = torch.autograd.grad(m(x).square().sum(), [x, m.weight1])
    m.checkpoint = True
    g2 = torch.autograd.grad(m(x).square().sum(), [x, m.weight1])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="x: expected 6 channels"):
        m(rand(gen, 2, 5, 3, 4))


def test_patch_downscale_mlp_patch_order(gen):
    m = PatchDownscaleMLP(3, 5, expand_ratio=2, scale_factor=4).double()
    x = rand(gen, 2, 3, 8, 12, dtype=torch.float64)
    rows = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (c, i, j) order per patch
    expect = F.linear(F.silu(F.linear(rows, m.weight1, m.bias1)), m.weight2, m.bias2)
    expect = expect.transpose(1, 2).reshape(2, 5, 2, 3)
    torch.testing.assert_close(m(x), expect)
    r = PatchDownscaleMLP(2, 4, scale_factor=2, residual=True).double()
    x = rand(gen, 1, 2, 4, 4, dtype=torch.float64)
    r.skip, skip = None, r.skip
    plain = r(x)
    r.skip = skip
    torch.testing.assert_close(r(x) - plain, F.avg_pool2d(x, 2).repeat_interleave(2, dim=1))


def test_upscale_mlp_pixel_shuffle_order(gen):
    m = UpscaleMLP(4, 3, scale_factor=4, expand_ratio=2).double()
    assert m.weight2.shape == (3 * 16, 8)
    x = rand(gen, 2, 4, 3, 5, dtype=torch.float64)
    v = F.linear(F.silu(F.linear(x.permute(0, 2, 3, 1), m.weight1, m.bias1)), m.weight2, m.bias2)
    torch.testing.assert_close(m(x), F.pixel_shuffle(v.permute(0, 3, 1, 2), 4))


@pytest.mark.parametrize("make", [
    lambda: Bottleneck(3, 2),
    lambda: PatchDownscaleMLP(2, 4, expand_ratio=1, scale_factor=2, residual=True),
    lambda: PatchDownscaleMLP(2, 3, expand_ratio=1, scale_factor=2),
    lambda: UpscaleMLP(3, 2, scale_factor=2, expand_ratio=1),
    lambda: ConvNeXtBlock(4, 2),
    lambda: PatchDownscale(2, 4, kernel_size=2),
    lambda: PatchUpscale(4, 2, scale_factor=2),
], ids=["bottleneck", "down-res", "down", "up", "convnext", "patchdown", "patchup"])
def test_gradcheck_blocks(gen, make):
    torch.manual_seed(1)
    m = make().double()
    for p in m.parameters():  # non-zero biases so their gradients are exercised meaningfully
        p.data.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    cin = m.in_channels if hasattr(m, "in_channels") else 4
    x = rand(gen, 2, cin, 4, 4, dtype=torch.float64).requires_grad_(True)
    params = [p for p in m.parameters()]
    f = lambda x, *ps: torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], ps)), (x,))
    # fast mode: checks random projections of the Jacobian (full mode costs ~1 min here for the conv blocks)
    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)


# ---------------------------------------------------------------- ConvNeXt blocks

def test_convnext_shapes(gen):
    x = rand(gen, 2, 64, 8, 8)
    blk = ConvNeXtBlock(64)
    assert blk.layers[1].num_groups == 2 and blk(x).shape == (2, 64, 8, 8)
    assert ConvNeXtBlock(64, 32)(x).shape == (2, 32, 8, 8)
    assert ConvNeXtBlock(8).layers[1].num_groups == 1
    assert ConvNeXtStem(3, 16)(rand(gen, 2, 3, 16, 16)).shape == (2, 16, 4, 4)
    assert PatchUpscale(8, 2, scale_factor=4)(rand(gen, 1, 8, 2, 2)).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="out_channels"):
        PatchDownscale(3, 16)


def test_patch_downscale_math(gen):
    m = PatchDownscale(2, 4, kernel_size=2)
    x = rand(gen, 1, 2, 4, 6)
    rows = F.unfold(x, 2, stride=2).transpose(1, 2)
    residual = m.layers(rows).transpose(1, 2).reshape(1, 4, 2, 3)
    torch.testing.assert_close(m(x), residual + F.avg_pool2d(x, 2).repeat_interleave(2, 1))
    stem = ConvNeXtStem(2, 3, kernel_size=2)
    torch.testing.assert_close(stem(x), stem.layers(rows).transpose(1, 2).reshape(1, 3, 2, 3))


# ---------------------------------------------------------------- position codes

def test_position_embedding(gen):
    pe = PositionEmbedding(3)
    pos = torch.tensor([[0.2, -0.4, 0.7, 0.25], [1.5, 0.0, 0.1, -1.0]])
    out = pe(pos, (4, 6))
    assert out.shape == (2, 6, 4, 6)
    gx, gy = torch.linspace(-1, 1, 6), torch.linspace(-1, 1, 4)
    f = 0.1 / 0.25
    for i in range(3):
        torch.testing.assert_close(out[0, 2 * i, 2], torch.cos((gx - 0.2) * f * 6 / 4 * math.pi / 2 * 2 ** i))
        torch.testing.assert_close(out[0, 2 * i + 1, :, 3], torch.cos((gy + 0.4) * f * math.pi / 2 * 2 ** i))
    # x clipped to 1, std clipped up to 1/min(h, w) = 1/4
    torch.testing.assert_close(out[1, 0, 0], torch.cos((gx - 1.0) * 0.4 * 1.5 * math.pi / 2))
    # 3 columns: std is column 2
    torch.testing.assert_close(pe(pos[:, [0, 1, 3]], (4, 6)), out)
    with pytest.raises(ValueError, match="position"):
        pe(torch.zeros(2, 5), (4, 6))


def test_position_pooling(gen):
    pool = PositionPooling((4, 5), 8, 4)
    feats = rand(gen, 3, 8, 4, 5)
    pos = torch.tensor([[0.1, -0.3, 0.5, 0.3], [-0.8, 0.6, 0.5, 0.1], [0.0, 0.0, 0.5, 2.0]])
    w = gaussian_oracle(pos, 4, 5).float()
    w = w / (w.sum((2, 3), keepdim=True) + 1e-8)
    v = (w * feats).sum((2, 3))
    expect = v.view(3, 4, 2).mean(-1) + pool.residual(v)
    torch.testing.assert_close(pool(feats, pos), expect, rtol=1e-5, atol=1e-5)
    assert PositionPooling((4, 5), 8, 1)(feats, pos).shape == (3, 1)
    with pytest.raises(ValueError, match="feature_maps"):
        pool(rand(gen, 3, 8, 4, 4), pos)


# ---------------------------------------------------------------- binarize, mask statistics

def test_binarize(gen):
    b = Binarize()
    x = rand(gen, 4, 7)
    noise = rand(gen, 4, 7)
    s = torch.sigmoid(x)
    torch.testing.assert_close(b(x, noise), s + s * (1 - s) * noise)
    torch.manual_seed(3)
    a = b(x)
    torch.manual_seed(3)
    torch.testing.assert_close(a, s + s * (1 - s) * torch.randn_like(s))
    b.eval()
    assert torch.equal(b(x), (s > 0.5).float())


def test_mask_center():
    mask = torch.zeros(2, 1, 5, 9)
    mask[0, 0, 1:3, 6:9] = 1.0
    mask[1, 0, :, :] = 0.5
    xy, std = MaskCenter((5, 9))(mask)
    gx, gy = torch.linspace(-1, 1, 9), torch.linspace(-1, 1, 5)
    torch.testing.assert_close(xy[0], torch.stack([gx[6:9].mean(), gy[1:3].mean()]))
    torch.testing.assert_close(xy[1], torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(std[:, 0], torch.tensor([math.sqrt(6 / 45), math.sqrt(0.5)]))
    combined = MaskCenter((5, 9), combine=True)(mask)
    torch.testing.assert_close(combined, torch.cat((xy, std), -1))
    pixel = MaskCenter((5, 9), normalize=False, combine=True)(mask)
    torch.testing.assert_close(pixel[0, 0], torch.linspace(0, 9, 9)[6:9].mean())


def test_position_in_mask(gen):
    mask = torch.zeros(3, 1, 16, 16)
    mask[0, 0, 2:12, 4:14] = 1.0     # large: eroded core rows 4..9, cols 6..11
    mask[1, 0, 5:8, 5:8] = 1.0       # too small to survive erosion -> centroid
    mask[2, 0, 8:16, 0:8] = 0.9
    rand_pos, center, std = PositionInMask((16, 16))(mask, generator=gen)
    g = torch.linspace(-1, 1, 16)
    assert g[6] - 1e-4 <= rand_pos[0, 0] <= g[11] + 1e-4 and g[4] - 1e-4 <= rand_pos[0, 1] <= g[9] + 1e-4
    # a picked pixel is (nearly) one grid point
    assert torch.min((g - rand_pos[0, 0]).abs()) < 1e-3
    torch.testing.assert_close(rand_pos[1], center[1])
    torch.testing.assert_close(center[1], torch.stack([g[5:8].mean(), g[5:8].mean()]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std[0, 0], torch.tensor(math.sqrt(100 / 256)))
    assert rand_pos.shape == (3, 2) and center.shape == (3, 2) and std.shape == (3, 1)


# ---------------------------------------------------------------- hypernetwork layers

def test_hyper_conv2d_depthwise_slicing(gen):
    conv = HyperConv2dDepthWise(3, 7)
    x = rand(gen, 2, 3, 6, 5)
    w = rand(gen, 2, 3 * 49 + 3)
    out = conv(x, w)
    for n in range(2):  # per sample, an ordinary depthwise conv with channel-major kernels then biases
        expect = F.conv2d(x[n:n + 1], w[n, :147].view(3, 1, 7, 7), w[n, 147:], padding=3, groups=3)
        torch.testing.assert_close(out[n:n + 1], expect, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="weights: expected shape"):
        conv(x, w[:, :-1])


@pytest.mark.parametrize("from_start", [True, False], ids=["upstream-slices", "consecutive-slices"])
def test_hyper_sequential(gen, from_start):
    torch.manual_seed(0)
    seq = HyperSequential(NonHyperWrapper(PatchDownscale(4, 8, kernel_size=2)), HyperConvNextBlock(8),
                          HyperConvNextBlock(8, 2), slices_from_start=from_start)
    assert seq.num_weights() == 2 * (49 * 8 + 8) and seq.base_weights.shape == (1, 800)
    assert seq.alpha.item() == pytest.approx(1e-16)
    x = rand(gen, 3, 4, 8, 8)
    dyn = rand(gen, 3, 800)
    seq.alpha.data.fill_(0.5)
    out = seq(x, dyn)
    assert out.shape == (3, 2, 4, 4)
    w = seq.base_weights + 0.5 * dyn
    second = w[:, :400] if from_start else w[:, 400:]  # upstream never advances the offset
    h = seq[1](seq[0](x), w[:, :400])
    torch.testing.assert_close(out, seq[2](h, second))
    # without dynamic weights every sample gets the base weights
    base = seq(x)
    torch.testing.assert_close(base[1:2], seq(x[1:2]))
    with pytest.raises(ValueError, match="dynamic"):
        seq(x, dyn[:, :10])


def test_gradcheck_hyper_sequential(gen):
    """Gradients for input, dynamic weights, base weights and alpha (reference backend; the encoder test
    compares the Triton backend's gradients with these), float64."""
    torch.manual_seed(2)
    seq = HyperSequential(HyperConvNextBlock(2), HyperConvNextBlock(2, 1), slices_from_start=False).double()
    x = rand(gen, 2, 2, 4, 4, dtype=torch.float64).requires_grad_(True)
    dyn = rand(gen, 2, seq.num_weights(), dtype=torch.float64).requires_grad_(True)
    names = [n for n, _ in seq.named_parameters()]
    f = lambda x, dyn, *ps: torch.func.functional_call(seq, dict(zip(names, ps)), (x, dyn))
    with use_backend("reference"):
        assert torch.autograd.gradcheck(f, (x, dyn, *seq.parameters()), fast_mode=True)


def test_hyper_base_weight_init():
    torch.manual_seed(0)
    c = 256
    seq = HyperSequential(HyperConvNextBlock(c), HyperConvNextBlock(c))
    w = seq.base_weights.view(2, c * 49 + c)
    kernels, biases = w[:, :c * 49], w[:, c * 49:]
    assert kernels.std().item() == pytest.approx(math.sqrt(6 / (49 + c)), rel=0.03)
    assert biases.std().item() == pytest.approx(math.sqrt(1 / c), rel=0.1)
    assert abs(kernels.mean().item()) < 0.01


# ---------------------------------------------------------------- upstream parity (optional)

@contextlib.contextmanager
def upstream_modules(root: str):
    """Make upstream's ``nn``/``utils`` packages importable (``import_upstream("nn.encoder")``) with its
    unused torchvision/cv2 imports stubbed (§23); sys.modules and sys.path are restored afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in ("nn", "utils", "torchvision", "cv2")}
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.Resize = tv.transforms.InterpolationMode = None
    stubs = {"torchvision": tv, "torchvision.transforms": tv.transforms, "cv2": types.ModuleType("cv2")}
    for k in list(sys.modules):
        if k.split(".")[0] in ("nn", "utils"):
            del sys.modules[k]
    sys.modules.update({k: v for k, v in stubs.items() if k not in saved})
    sys.path.insert(0, root)

    def import_upstream(name: str):
        with contextlib.redirect_stdout(io.StringIO()):  # upstream prints per layer
            return importlib.import_module(name)
    try:
        yield import_upstream
    finally:
        sys.path.remove(root)
        for k in list(sys.modules):
            if k.split(".")[0] in ("nn", "utils", "torchvision", "cv2"):
                del sys.modules[k]
        sys.modules.update(saved)


def _load(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    state = {k: v for k, v in theirs.state_dict().items() if not k.endswith("legacy")}
    ours.load_state_dict(state, strict=True)


@pytest.mark.skipif(not os.environ.get("LOCI_FAST_UPSTREAM"), reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
def test_upstream_block_parity(gen):
    """Each block against upstream's module with the same weights, float32: values and input gradients."""
    with upstream_modules(os.environ["LOCI_FAST_UPSTREAM"]) as import_upstream:
        cn, ds, us = import_upstream("nn.convnext"), import_upstream("nn.downscale"), import_upstream("nn.upscale")
        emb, hn, ut = import_upstream("nn.embedding"), import_upstream("nn.hypernets"), import_upstream("utils.utils")
        x = rand(gen, 2, 32, 16, 16)
        pos = torch.cat([torch.rand(5, 2, generator=gen) * 2.4 - 1.2, torch.rand(5, 1, generator=gen),
                         torch.rand(5, 1, generator=gen) * 0.6 - 0.05], 1)
        pairs = [  # (ours, theirs, args)
            (SkipConnection(32, 8, 0.5), cn.SkipConnection(32, 8, 0.5), (x,)),
            (SkipConnection(32, 48, 2), cn.SkipConnection(32, 48, 2), (x,)),
            (Bottleneck(32, 16), cn.MemoryEfficientBottleneck(32, 16), (x,)),
            (ConvNeXtBlock(32, 16), cn.ConvNeXtBlock(32, 16), (x,)),
            (PatchDownscale(32, 64, 2), cn.PatchDownscale(32, 64, 2), (x,)),
            (ConvNeXtStem(32, 24, 4), cn.ConvNeXtStem(32, 24, 4), (x,)),
            (PatchUpscale(32, 8, 4), cn.PatchUpscale(32, 8, 4), (x,)),
            (PatchDownscaleMLP(32, 64, 4, 4, residual=True), ds.MemoryEfficientPatchDownScale(32, 64, 4, 4, True), (x,)),
            (PatchDownscaleMLP(32, 20, 2, 8), ds.MemoryEfficientPatchDownScale(32, 20, 2, 8), (x,)),
            (UpscaleMLP(32, 3, 4, 4), us.MemoryEfficientUpscaling(32, 3, scale_factor=4, expand_ratio=4), (x,)),
            (PositionPooling((16, 16), 32, 16), emb.PositionPooling((16, 16), 32, 16), (x.repeat(3, 1, 1, 1)[:5], pos)),
        ]
        hseq = lambda mod, **kw: mod.HyperSequential(mod.HyperConvNextBlock(32), mod.HyperConvNextBlock(32, 8), **kw)
        pairs.append((HyperSequential(HyperConvNextBlock(32), HyperConvNextBlock(32, 8)), hseq(hn),
                      (x, rand(gen, 2, 2 * (49 * 32 + 32)))))
        for ours, theirs, args in pairs:
            _load(ours, theirs)
            if isinstance(ours, HyperSequential):
                theirs.alpha.data.fill_(0.3), ours.alpha.data.fill_(0.3)
            outs = []
            for m in (ours, theirs):
                a = [t.clone().requires_grad_(True) for t in args]
                y = m(*a)
                y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
                outs.append((y, [t.grad for t in a]))
            (y, gy), (ref, gref) = outs
            name = type(ours).__name__
            assert (y - ref).abs().max() <= 1e-5 * ref.abs().max(), name
            for g, r in zip(gy, gref):
                assert (g - r).abs().max() <= 1e-5 * r.abs().max(), name
        # position embedding on the decoder's 16x16 grid: all 8 octaves
        up_pe = emb.PositionEmbedding(8)
        up_pe.update_grid((16, 16))
        torch.testing.assert_close(PositionEmbedding(8)(pos, (16, 16)), up_pe(pos), rtol=0, atol=2e-5)
        up_pe.update_grid((8, 12))
        torch.testing.assert_close(PositionEmbedding(8)(pos[:, :3], (8, 12)), up_pe(pos[:, :3]), rtol=0, atol=2e-5)
        # mask statistics and binarisation
        mask = torch.rand(4, 1, 16, 16, generator=gen).round() * torch.rand(4, 1, 16, 16, generator=gen)
        mask[2] = 0
        for normalize in (True, False):
            for combine in (True, False):
                a, b = MaskCenter((16, 16), normalize, combine)(mask), ut.MaskCenter((16, 16), normalize, combine)(mask)
                torch.testing.assert_close(a, b)
        mask = torch.zeros(3, 1, 16, 16)
        mask[0, 0, 2:12, 3:13] = 0.9
        mask[1, 0, 4:7, 4:7] = 1.0
        torch.manual_seed(5)
        a = PositionInMask((16, 16))(mask)
        torch.manual_seed(5)
        torch.testing.assert_close(a, ut.PositionInMask((16, 16))(mask))
        logits = rand(gen, 3, 40)
        torch.manual_seed(6)
        a = Binarize()(logits)
        torch.manual_seed(6)
        torch.testing.assert_close(a, ut.Binarize()(logits))
        torch.testing.assert_close(Binarize().eval()(logits), ut.Binarize().eval()(logits))
