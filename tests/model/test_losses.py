"""Colour transforms, SSIM and the masked reconstruction losses, and the call-counted schedules."""
import math

import numpy as np
import pytest
import torch

from loci_fast.model.color import RGB2YCbCr, RGBD2YCbCr, YCbCr2RGB
from loci_fast.model.losses import (CallCounter, DecayingFactor, DecayingMSELoss, GestaltLoss, MaskedL1SSIMLoss,
                                    MaskedYCbCrL2SSIMLoss, ssim_dissimilarity)


def test_ycbcr_known_values_and_round_trip(gen):
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).view(3, 3, 1, 1)
    ycc = RGB2YCbCr()(rgb)
    assert torch.allclose(ycc[0].flatten(), torch.tensor([1.0, 0.5, 0.5]), atol=1e-6)
    assert torch.allclose(ycc[1].flatten(), torch.tensor([0.0, 0.5, 0.5]), atol=1e-6)
    # pure red: Y = kr, Cr = 0.5 + 0.5 (the top of the range), Cb below the offset
    assert ycc[2, 0].item() == pytest.approx(0.299, abs=1e-6)
    assert ycc[2, 2].item() == pytest.approx(1.0, abs=1e-6) and ycc[2, 1].item() < 0.5
    x = torch.rand(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    assert torch.allclose(YCbCr2RGB()(RGB2YCbCr()(x)), x, atol=1e-12)
    rgbd = torch.rand(2, 4, 5, 7, generator=gen)
    out = RGBD2YCbCr()(rgbd)
    assert torch.equal(out[:, 3], rgbd[:, 3]) and torch.allclose(out[:, :3], RGB2YCbCr()(rgbd[:, :3]))
    assert YCbCr2RGB()(torch.full((1, 3, 2, 2), 5.0)).max() <= 1.0  # the inverse clamps
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        RGB2YCbCr()(torch.rand(2, 4, 5, 5))


def _ssim_naive(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-pixel (1 - SSIM)/2 with explicit 3x3 reflect-padded windows, float64."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    xp, yp = np.pad(x, 1, mode="reflect"), np.pad(y, 1, mode="reflect")
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            a, b = xp[i:i + 3, j:j + 3], yp[i:i + 3, j:j + 3]
            mx, my = a.mean(), b.mean()
            vx, vy, cxy = (a * a).mean() - mx ** 2, (b * b).mean() - my ** 2, (a * b).mean() - mx * my
            s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
            out[i, j] = min(max((1 - s) / 2, 0), 1)
    return out


def test_ssim_matches_naive_windows(gen):
    x = torch.rand(2, 2, 6, 9, generator=gen, dtype=torch.float64)
    y = (x + 0.3 * torch.rand(2, 2, 6, 9, generator=gen, dtype=torch.float64)).clamp(0, 1)
    got = ssim_dissimilarity(x, y)
    for b in range(2):
        for c in range(2):
            np.testing.assert_allclose(got[b, c].numpy(), _ssim_naive(x[b, c].numpy(), y[b, c].numpy()), atol=1e-12)
    assert ssim_dissimilarity(x, x).abs().max() < 1e-12


def test_box_filter_matches_avg_pool_values_and_gradients(gen):
    from loci_fast.model.losses.reconstruction import _box3

    x = torch.rand(2, 3, 7, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, 3, 5, 8, generator=gen, dtype=torch.float64)
    ours, = torch.autograd.grad((_box3(x) * w).sum(), x)
    ref, = torch.autograd.grad((torch.nn.functional.avg_pool2d(x, 3, 1) * w).sum(), x)
    torch.testing.assert_close(_box3(x), torch.nn.functional.avg_pool2d(x, 3, 1), rtol=0, atol=1e-15)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-15)


def test_masked_l1_ssim_ignores_unmasked_pixels_and_weights_terms(gen):
    out = torch.rand(3, 1, 8, 8, generator=gen)
    tgt = torch.rand(3, 1, 8, 8, generator=gen)
    mask = torch.zeros(3, 1, 8, 8)
    mask[:, :, 2:6, 1:5] = 1
    loss, l1, ssim = MaskedL1SSIMLoss()(out, tgt, mask)
    manual_l1 = ((out - tgt).abs() * mask).sum((1, 2, 3)) / (mask.sum((1, 2, 3)) + 1e-7)
    assert l1.item() == pytest.approx(manual_l1.mean().item(), rel=1e-6)
    assert loss.item() == pytest.approx(0.15 * l1.item() + 0.85 * ssim.item(), rel=1e-5)
    # changing pixels far outside the mask (beyond the 3x3 SSIM window) changes nothing
    out2 = out.clone()
    out2[:, :, :, 7] = 5.0
    assert torch.allclose(MaskedL1SSIMLoss()(out2, tgt, mask)[0], loss)
    pure_l1 = MaskedL1SSIMLoss(ssim_factor=0.0)(out, tgt, mask)[0]
    assert pure_l1.item() == pytest.approx(l1.item(), rel=1e-6)
    with pytest.raises(ValueError, match="mask"):
        MaskedL1SSIMLoss()(out, tgt, mask[:, :, :4])


def test_masked_ycbcr_loss_parts_and_gradients(gen):
    out = torch.rand(2, 3, 8, 8, generator=gen, requires_grad=True)
    tgt = torch.rand(2, 3, 8, 8, generator=gen, requires_grad=True)
    mask = torch.rand(2, 1, 8, 8, generator=gen)
    loss, chroma, luma = MaskedYCbCrL2SSIMLoss()(out, tgt, mask)
    assert loss.item() == pytest.approx(chroma.item() + luma.item(), rel=1e-6)
    a, b = RGB2YCbCr()(out.detach()), RGB2YCbCr()(tgt.detach())
    cb = (10 * (a[:, 1:2] - b[:, 1:2]) ** 2 * mask).sum((1, 2, 3)) / (mask.sum((1, 2, 3)) + 1e-7)
    cr = (10 * (a[:, 2:3] - b[:, 2:3]) ** 2 * mask).sum((1, 2, 3)) / (mask.sum((1, 2, 3)) + 1e-7)
    assert chroma.item() == pytest.approx((cb + cr).mean().item(), rel=1e-5)
    loss.backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    assert tgt.grad is None  # the target is converted without gradient
    zero = MaskedYCbCrL2SSIMLoss()(tgt.detach(), tgt.detach(), mask)[0]
    assert zero.item() == pytest.approx(0.0, abs=1e-6)


def test_decaying_factor_schedule_and_min():
    f = DecayingFactor(warmup_period=10, min_factor=0.0)
    values = [f.get() for _ in range(31)]
    assert values[:11] == [1.0] * 11  # 0.1 ** (n/10 - 1) >= 1 until n = 10
    assert values[20] == pytest.approx(0.1) and values[30] == pytest.approx(0.01)
    assert float(f.num_updates) == 31.0
    g = DecayingFactor(warmup_period=10, min_factor=0.05, inverse=True)
    g.num_updates.fill_(100.0)
    assert g.get() == pytest.approx(0.95)  # clipped at min, then inverted
    assert torch.allclose(f(torch.ones(2)), torch.full((2,), 0.1 ** (31 / 10 - 1)))


def test_decaying_mse_and_gestalt_loss():
    mse = DecayingMSELoss(warmup_period=4, min_factor=0.01)
    p, t = torch.ones(3), torch.zeros(3)
    assert mse(p, t).item() == pytest.approx(1.0)
    mse.num_updates.fill_(8.0)
    assert mse(p, t).item() == pytest.approx(0.1)
    mse.num_updates.fill_(1000.0)
    assert mse(p, t).item() == pytest.approx(0.01)  # floor
    gl = GestaltLoss(warmup_period=2)
    g = torch.full((4, 5), 0.9)
    assert gl(g).item() == pytest.approx(0.4)
    gl.num_updates.fill_(4.0)
    assert gl(g).item() == pytest.approx(0.04)
    gl.num_updates.fill_(60.0)  # 30 * warmup: switched off
    assert gl(g).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        mse(torch.ones(3), torch.ones(4))


def test_counter_host_copy_follows_checkpoints_and_inplace_writes():
    c = CallCounter(start=-3)
    assert [c.advance() for _ in range(4)] == [-3.0, -2.0, -1.0, 0.0]
    state = c.state_dict()
    assert float(state["num_updates"]) == 1.0
    d = CallCounter()
    d.load_state_dict({"num_updates": torch.tensor(41.0)})
    assert d.advance() == 41.0 and d.count == 42.0
    d.num_updates.fill_(7.0)  # e.g. a broadcast from rank 0
    assert d.count == 7.0
    d.num_updates = torch.tensor(math.pi)  # replaced (e.g. moved to another device)
    assert d.count == pytest.approx(math.pi)
    e = DecayingFactor(warmup_period=1000)
    e.num_updates.fill_(12345)
    e.to(torch.bfloat16)  # mixed-precision casts must not round the count (bf16 holds 8 bits)
    assert e.num_updates.dtype == torch.int64 and e.advance() == 12345
