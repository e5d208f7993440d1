"""Half-precision storage: the tiny LociPretrainer with bf16 (and fp16) parameters and inputs.

Two ways to hold a bf16 model are covered: ``model.to(torch.bfloat16)`` (parameters and floating
buffers bf16) and DeepSpeed's bf16/fp16 engines, which cast the parameters only and leave buffers
(the MaskCenter grids, the YCbCr matrix) in fp32. In both the model must compute in the dtype of its
inputs, give outputs in that dtype, and stay close to the fp32 model on the same weights and inputs.
The kernels run on the reference backend: the Triton interpreter computes bf16 wrongly
(TOOLCHAIN.md), and the reference is what the trainer uses on a CPU.

Last, the real trainer runs a few bf16 steps with ``configs/deepspeed/bf16.json``.
"""
import copy
import json
import math

import pytest
import torch

import loci_fast.kernels as K
from loci_fast.model import LociPretrainer
from loci_fast.model.pretrainer import LOSS_TERMS

from ..train.helpers import REPO, launcher, run
from .test_pretrainer import MODES, TINY, batch

# bf16 keeps 8 significant bits (each rounding is off by up to 2^-9 ~ 2e-3 relative) and the loss
# passes through ~20 rounded layers before it is itself stored in bf16 (spacing 0.0625 at the stage-1
# loss of ~15). Measured deviations from fp32 are below 5e-3; 5e-2 leaves room for other seeds while
# any real dtype bug (a grid or constant in the wrong precision, a term dropped) moves losses far
# more. The absolute part covers loss terms near zero (position and z losses late in a schedule).
RTOL, ATOL = 5e-2, 1e-2
IMAGE_ATOL = 1e-2  # mean absolute deviation of output images (values ~[0, 1], depth ~[-3, 3])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LociPretrainer(TINY)


def _half(model, dtype, how):
    m = copy.deepcopy(model)
    if how == "module":
        return m.to(dtype)
    for p in m.parameters():  # as DeepSpeed's bf16/fp16 engines: parameters only, fp32 buffers
        p.data = p.data.to(dtype)
    return m


def _tensors(out):
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def _check_half_run(model, gen, mode, iterations, dtype, how):
    rgb, depth, mask = batch(gen)
    with K.use_backend("reference"):
        torch.manual_seed(3)  # same Binarize noise and random initial position in both runs
        with torch.no_grad():
            ref = copy.deepcopy(model)(rgb, depth, mask, iterations, mode)
        m = _half(model, dtype, how)
        torch.manual_seed(3)
        out = m(rgb.to(dtype), depth.to(dtype), mask.to(dtype), iterations, mode)
        out["loss"].backward()

    for k, v in _tensors(out).items():
        assert v.dtype == dtype, f"{k} is {v.dtype}"
        assert torch.isfinite(v).all(), k
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=RTOL, abs=ATOL)
    for k in LOSS_TERMS:
        assert float(out[k].detach()) == pytest.approx(float(ref[k]), rel=RTOL, abs=ATOL), k
    for k in ("mask", "rgb", "depth"):
        # Images: mean deviation only, since single pixels may differ a lot: a soft-mask value near
        # 0.5 can round across the binarisation threshold, which moves that pixel's targets.
        if ref[k] is not None:
            err = (out[k].detach().float() - ref[k]).abs().mean().item()
            print(f"{k}: mean |half - fp32| = {err:.2e}")
            assert err < IMAGE_ATOL, k

    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert grads
    for n, g in grads.items():
        assert g.dtype == dtype and torch.isfinite(g).all(), n
    # buffers stay as they were: int64 counters, and fp32 grids when only parameters were cast
    assert m.init_counter.num_updates.dtype == torch.int64
    assert m.position_in_mask.x_coords.dtype == (dtype if how == "module" else torch.float32)


@pytest.mark.parametrize("how", ["module", "parameters"])
@pytest.mark.parametrize("mode,iterations", MODES)
def test_bf16_forward_backward_every_mode(model, gen, mode, iterations, how):
    _check_half_run(model, gen, mode, iterations, torch.bfloat16, how)


@pytest.mark.parametrize("mode,iterations", MODES)
def test_fp16_forward_backward_every_mode(model, gen, mode, iterations):
    _check_half_run(model, gen, mode, iterations, torch.float16, "module")


def test_trainer_bf16_deepspeed_config(tmp_path):
    """`loci-fast train` with configs/deepspeed/bf16.json: the tiny stage-1 model trains 3 steps."""
    data = tmp_path / "data"
    proc = run(launcher("python") + ["data", "synth", "--out", str(data), "--videos", "2", "--frames", "4",
                                     "--size", "64", "--objects", "1", "2", "--shard-videos", "1",
                                     "--workers", "1", "--no-progress"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "run"
    proc = run(launcher("python") + [
        "train", "--config", str(REPO / "configs" / "tiny" / "pretrain-encoder-decoder-stage1.json"),
        "--deepspeed", str(REPO / "configs" / "deepspeed" / "bf16.json"), "--set", "model.mixed_precision=true",
        "--data", str(data / "train-*.tar"), "--out", str(out), "--max-steps", "3", "--no-progress",
        "--image-every", "1000", "--save-every", "1000"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stage stage1: 1 rank(s), bf16" in proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["skipped_nonfinite"] == 0
        for k in ("loss", "mask_loss", "rgb_loss", "depth_loss", "position_loss", "z_loss"):
            assert math.isfinite(r[k]), (r["step"], k, r[k])
        assert r["loss"] > 0


@pytest.mark.parametrize("how", ["module", "parameters"])
def test_bf16_multi_slot_encoder_and_decoder(gen, how):
    """The full model's slot path with 3 slots: encoder (hypernetwork weights, priority) and decoder
    (occlusion by priority, raw masks), in bf16, against fp32 on the same weights and inputs."""
    from loci_fast.model import LociDecoder

    from .test_decoder import CFG
    from .test_encoder import make_inputs, tiny

    torch.manual_seed(0)
    enc = tiny(o=3, gestalt_size=32)
    dec = LociDecoder.from_config({**CFG, "input_size": [64, 64]})
    inputs = make_inputs(gen, 2, 3, 64, 32)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        e, d = (_half(m, dtype, how) if dtype != torch.float32 else copy.deepcopy(m) for m in (enc, dec))
        with K.use_backend("reference"):
            torch.manual_seed(3)  # Binarize and priority noise
            position, gestalt, priority = e(**{k: v.to(dtype) for k, v in inputs.items()})
            outs = d(position, gestalt, priority, compute_raw=True)
            sum(o.float().mean() for o in outs).backward()
        for t in (position, gestalt, priority, *outs):
            assert t.dtype == dtype and torch.isfinite(t).all()
        for m in (e, d):
            assert all(p.grad.dtype == dtype and torch.isfinite(p.grad).all()
                       for p in m.parameters() if p.grad is not None)
        results[dtype] = [t.detach().float() for t in (position, gestalt, priority, *outs)]
    for name, a, b in zip(("position", "gestalt", "priority", "mask", "rgb", "depth", "mask_raw", "depth_raw"),
                          results[torch.float32], results[torch.bfloat16]):
        err = (a - b).abs().mean().item()
        print(f"{name}: mean |bf16 - fp32| = {err:.2e}")
        assert err < 5e-2 * max(1.0, a.abs().mean().item()), name


def test_inputs_in_another_dtype_than_the_parameters_are_named(model, gen):
    rgb, depth, mask = batch(gen)
    m = _half(model, torch.bfloat16, "parameters")
    with pytest.raises(ValueError, match=r"must have the parameters' dtype torch.bfloat16.*torch.float32"):
        m(rgb, depth, mask, 0, "mask")
    with pytest.raises(ValueError, match="parameters' dtype torch.float32"):
        model(rgb, depth.to(torch.bfloat16), mask, 0, "mask")
