"""LociPretrainer on a tiny config: every mode's outputs and loss, the stage-2 schedules and pass
skipping, Triton vs reference backends, loss falling when overfitting one batch, bad inputs."""
import copy

import pytest
import torch

import loci_fast.kernels as K
from loci_fast.model import LociPretrainer
from loci_fast.model.pretrainer import LOSS_TERMS

TINY = {
    "batch_size": 2, "num_slots": 4, "gestalt_size": 32, "input_depth": False, "input_size": [64, 64],
    "gradient_accumulation_steps": 1, "rgb_loss": "YCbCrL2SSIMLoss",
    "embedding": {"mask": {"channels": 8, "expansion": 2}, "depth": {"channels": 8, "expansion": 2},
                  "rgb": {"channels": 16, "expansion": 2}},
    "encoder": {"channels": 16, "blocks": [0, 0, 2, 1], "hyper_channels": 16},
    "decoder": {"mask": {"pretrain_encoder_blocks": [0, 0], "pretrain_encoder_channels": 16},
                "depth": {"layers": 1, "pretrain_encoder_blocks": [0, 0], "pretrain_encoder_channels": 16},
                "rgb": {"layers": 1, "pretrain_encoder_blocks": [0, 0], "pretrain_encoder_channels": 16}},
}
KEYS = {"mask_loss", "mean_iou", "rgb_loss", "depth_loss", "position_loss", "z_loss", "gestalt_loss", "rgb_l1",
        "depth_l1", "rgb_ssim", "depth_ssim", "mask", "rgb", "depth", "position", "gestalt", "time_weight", "loss"}
MODES = [("mask", 0), ("depth", 0), ("rgb", 0), ("embedding", 0), ("all", 0), ("all", 3)]


def batch(gen, b=2, size=64):
    """A soft elliptic object per sample, random colours and a depth ramp with some invalid pixels."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    masks = []
    for _ in range(b):
        cx, cy = (torch.rand(2, generator=gen) - 0.5).tolist()
        r = 0.3 + 0.2 * torch.rand(1, generator=gen).item()
        masks.append(torch.sigmoid(25 * (r - ((xx - cx) ** 2 + 1.5 * (yy - cy) ** 2).sqrt())))
    mask = torch.stack(masks)[:, None]
    rgb = torch.rand(b, 3, 1, 1, generator=gen) * 0.6 + 0.2 + 0.1 * torch.rand(b, 3, size, size, generator=gen)
    depth = 2 + xx[None, None] + 0.5 * torch.rand(b, 1, 1, 1, generator=gen)
    depth = depth.clone()
    depth[:, :, :3] = -1.0
    return rgb, depth, mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LociPretrainer(TINY)


@pytest.mark.parametrize("mode,iterations", MODES)
def test_mode_outputs_and_loss(model, gen, mode, iterations):
    rgb, depth, mask = batch(gen)
    m = copy.deepcopy(model)
    out = m(rgb, depth, mask, iterations, mode)
    assert set(out) == KEYS
    total = sum(out[k] for k in LOSS_TERMS)
    assert torch.isfinite(out["loss"]) and out["loss"].detach().item() == pytest.approx(float(total.detach()), rel=1e-6)
    used = {"mask": {"mask_loss"}, "depth": {"depth_loss"}, "rgb": {"rgb_loss"},
            "embedding": {"mask_loss", "rgb_loss", "depth_loss"},
            "all": {"mask_loss", "rgb_loss", "depth_loss", "position_loss", "z_loss"}}[mode]
    for k in LOSS_TERMS:
        assert (float(torch.as_tensor(out[k]).detach()) > 0) == (k in used), k
    images = {"mask": ("mask",), "depth": ("depth",), "rgb": ("rgb",)}.get(mode, ("mask", "rgb", "depth"))
    for k, c in (("mask", 1), ("rgb", 3), ("depth", 1)):
        assert (out[k] is not None) == (k in images)
        if out[k] is not None:
            assert out[k].shape == (2, c, 64, 64)
    if mode == "all":
        assert out["position"].shape == (2, 4) and out["gestalt"].shape == (2, 3 * 32 + 1)
        assert 0 <= float(out["mean_iou"]) <= 1
    out["loss"].backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if mode == "all":  # encoder and decoder are trained; the priority head is frozen
        assert m.encoder.stem[0].base_layer.layers.weight.grad is not None
        assert m.decoder.to_rgb.layers[0].weight.grad is not None
        assert all(not p.requires_grad for p in m.encoder.priority_encoder.parameters())


def test_stage2_time_weights_and_pass_skipping(model, gen):
    rgb, depth, mask = batch(gen, b=1)
    m = copy.deepcopy(model)
    calls = []
    m.encoder.register_forward_hook(lambda *_: calls.append(1))
    out = m(rgb, depth, mask, 3, "all")  # first call: weights [1, 0, 0], but warm-up runs every pass
    assert len(calls) == 3 and out["time_weight"].tolist() == [1.0, 0.0, 0.0]
    assert float(m.init_counter.num_updates) == -9.0 and float(m.decaying_mse.num_updates) == 6.0
    # after warm-up (counter > 0) zero-weight passes are skipped
    m.init_counter.num_updates.fill_(5.0)
    calls.clear()
    m(rgb, depth, mask, 3, "all")
    assert len(calls) == 1 and float(m.decaying_mse.num_updates) == 8.0
    # mid-schedule: n = 3750 -> w0 = 0.1 ** 0.5, w1 = 1; weights [w0, 1 - w0, 0] (normalised)
    m.init_weight0.num_updates.fill_(3750.0)
    m.init_weight1.num_updates.fill_(3750.0)
    calls.clear()
    out = m(rgb, depth, mask, 3, "all")
    w0 = 0.1 ** 0.5
    expect = torch.tensor([w0, 1 - w0, 0.0])
    assert len(calls) == 2
    torch.testing.assert_close(out["time_weight"], expect / expect.sum())
    # late: n = 20000 -> w0 = 1e-7 -> [0.01, max(0.1, w1 = 1e-3) = 0.1, 1 - 1e-3]
    for c in (m.init_weight0, m.init_weight1):
        c.num_updates.fill_(20000.0)
    out = m(rgb, depth, mask, 3, "all")
    expect = torch.tensor([0.01, 0.1, 1 - 0.1 ** 3])
    torch.testing.assert_close(out["time_weight"], expect / expect.sum())
    # counters are persistent state
    keys = m.state_dict().keys()
    for k in ("init_counter.num_updates", "init_weight0.num_updates", "init_weight1.num_updates",
              "decaying_mse.num_updates", "gestalt_loss.num_updates"):
        assert k in keys


@pytest.mark.slow
def test_triton_matches_reference(model, gen):
    rgb, depth, mask = batch(gen, b=1)
    results = {}
    for backend in ("reference", "triton"):
        m = copy.deepcopy(model).eval()  # eval: Binarize rounds, so both runs see the same codes
        with K.use_backend(backend):
            outs = []
            for mode, it in (("mask", 0), ("all", 0), ("all", 2)):
                torch.manual_seed(3)  # same random initial position inside the mask
                out = m(rgb, depth, mask, it, mode)
                outs.append(out)
            sum(o["loss"] for o in outs).backward()
        values = [o[k].detach() for o in outs for k in ("loss", "mask", "position", "gestalt") if o[k] is not None]
        grads = [p.grad.clone() for p in m.parameters() if p.grad is not None]
        results[backend] = (values, grads)
    (va, ga), (vb, gb) = results["reference"], results["triton"]
    assert len(ga) == len(gb) and len(ga) > 50
    for a, b in zip(va, vb):
        torch.testing.assert_close(b, a, rtol=2e-4, atol=2e-5)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=2e-3, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode,iterations,steps,lr", [("mask", 0, 20, 3e-3), ("depth", 0, 20, 1e-2),
                                                      ("rgb", 0, 20, 3e-3), ("embedding", 0, 20, 3e-3),
                                                      ("all", 0, 10, 1e-2), ("all", 3, 10, 1e-2)])
def test_loss_falls_when_overfitting_one_batch(model, gen, mode, iterations, steps, lr):
    rgb, depth, mask = batch(gen, b=1)
    torch.manual_seed(1)
    m = copy.deepcopy(model).train()  # train mode: Binarize noise and random initial positions stay on
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        out = m(rgb, depth, mask, iterations, mode)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.85 * first, losses


def test_bad_inputs_are_named(model, gen):
    rgb, depth, mask = batch(gen)
    with pytest.raises(ValueError, match="unknown mode 'uncertainty'"):
        model(rgb, depth, mask, 0, "uncertainty")
    with pytest.raises(ValueError, match="iterations must be"):
        model(rgb, depth, mask, 4, "all")
    with pytest.raises(ValueError, match=r"rgb must be \(B, 3, 64, 64\)"):
        model(rgb[:, :, :32], depth, mask, 0, "mask")
    with pytest.raises(ValueError, match="share the batch size"):
        model(rgb, depth[:1], mask, 0, "depth")
    with pytest.raises(ValueError, match="floating"):
        model(rgb, depth, (mask > 0.5), 0, "mask")


def test_parameter_counts_match_reference_at_the_default_config():
    from loci_fast.config import load_config

    m = LociPretrainer(load_config("configs/pretrain-encoder-decoder-stage2.json")["model"])

    def millions(module):
        return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)

    # reference §20 (upstream's count, less its unused gestalt_mean/std: 1 538 values)
    assert round(sum(p.numel() for p in m.parameters()) / 1e6, 1) == 121.7
    assert millions(m.decoder) == 1.99
    assert [millions(m.decoder.to_mask), millions(m.decoder.to_depth), millions(m.decoder.to_rgb)] == \
        [0.42, 0.25, 1.32]
    assert [round(millions(a), 1) for a in (m.mask_pretrainer, m.depth_pretrainer, m.rgb_pretrainer)] == \
        [14.6, 14.5, 25.6]


@pytest.mark.gpu
def test_stage2_default_config_on_gpu_backends_agree():
    """The pretrain-encoder-decoder-stage2 config (256x256) forward + backward on CUDA, both backends."""
    import time

    from loci_fast.config import load_config

    torch.manual_seed(0)
    base = LociPretrainer(load_config("configs/pretrain-encoder-decoder-stage2.json")["model"]).cuda().eval()
    rgb, depth, mask = (t.cuda() for t in batch(torch.Generator().manual_seed(0), b=8, size=256))
    losses = {}
    for backend in ("reference", "triton"):
        m = copy.deepcopy(base)
        with K.use_backend(backend):
            for _ in range(2):  # the second step is timed (the first compiles)
                torch.manual_seed(3)
                torch.cuda.synchronize()
                start = time.perf_counter()
                out = m(rgb, depth, mask, 3, "all")
                out["loss"].backward()
                torch.cuda.synchronize()
        print(f"{backend}: {time.perf_counter() - start:.3f} s per stage-2 step at B=8")
        losses[backend] = out["loss"].item()
    assert losses["triton"] == pytest.approx(losses["reference"], rel=1e-3)


def test_stage_hand_over_helpers(model, gen):
    earlier = copy.deepcopy(model)
    with torch.no_grad():
        for p in earlier.parameters():
            p.add_(1.0)
    m = copy.deepcopy(model)
    m.load_modality("depth", earlier.state_dict())
    for k, v in earlier.depth_pretrainer.state_dict().items():
        assert torch.equal(m.depth_pretrainer.state_dict()[k], v)
    for k, v in earlier.depth_pretrainer.decoder.state_dict().items():
        assert torch.equal(m.decoder.to_depth.state_dict()[k], v)
    assert torch.equal(m.decoder.to_rgb.layers[0].weight, model.decoder.to_rgb.layers[0].weight)  # untouched
    with pytest.raises(ValueError, match="no 'rgb_pretrainer"):
        m.load_modality("rgb", {k: v for k, v in earlier.state_dict().items() if not k.startswith("rgb_")})

    m = copy.deepcopy(earlier)
    m.copy_embeddings()
    rgb, depth, mask = batch(gen, b=1)
    binary = (mask > 0.5).float()
    with torch.no_grad():  # the autoencoders now embed with the stand-alone codecs
        torch.testing.assert_close(m.depth_pretrainer.decoder.mask_encoder(binary), m.mask_patch_embedding(binary))
        torch.testing.assert_close(m.rgb_pretrainer.encoder.embedding(rgb), m.rgb_patch_embedding(rgb))
        code = torch.rand(1, 16, 4, 4)
        torch.testing.assert_close(m.rgb_pretrainer.decoder.rgb_upscale(code), m.rgb_patch_reconstruction(code))
