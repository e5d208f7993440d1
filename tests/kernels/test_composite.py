"""composite_slots: the Triton kernels (interpreted on CPU) against the float64 reference."""
from __future__ import annotations

import time

import pytest
import torch

from loci_fast.kernels import composite_slots, composite_slots_reference, use_backend
from loci_fast.kernels.dispatch import poison_outputs
from tests.kernels.helpers import assert_close, run_reference, run_triton

NAMES = ("mask_logits", "slot_rgb", "slot_depth", "bg_rgb", "bg_depth")


def make_inputs(gen: torch.Generator, B: int, O: int, H: int, W: int, *, layout: str = "5d",
                logit_scale: float = 3.0) -> list[torch.Tensor]:
    """Fresh random float64 inputs (never zeros); slot_rgb in the (B, O, 3, H, W) or (B, 3O, H, W) layout."""
    rgb_shape = (B, O, 3, H, W) if layout == "5d" else (B, 3 * O, H, W)
    return [
        torch.randn(B, O, H, W, generator=gen, dtype=torch.float64) * logit_scale,
        torch.rand(rgb_shape, generator=gen, dtype=torch.float64) * 2 - 1,
        torch.rand(B, O, H, W, generator=gen, dtype=torch.float64) * 4 + 0.5,
        torch.rand(B, 3, H, W, generator=gen, dtype=torch.float64) * 2 - 1,
        torch.rand(B, 1, H, W, generator=gen, dtype=torch.float64) * 4 + 0.5,
    ]


def compare(gen: torch.Generator, inputs: list[torch.Tensor], dtype: torch.dtype, *, bg_logit: float = 1.0,
            return_mask: bool = True, grad_mask: bool = True) -> None:
    """Triton (poisoned outputs, forward and backward) in ``dtype`` vs the reference in float64.

    ``inputs`` may be non-contiguous views; they are used as given (cast only when ``dtype`` differs).
    The reference sees the inputs and upstream gradients rounded to ``dtype``, so the tolerance
    measures the kernel's arithmetic and output rounding, not the rounding of its inputs.
    """
    ref_in = [x.detach().to(dtype).double().requires_grad_(True) for x in inputs]
    ours_in = [x.detach().requires_grad_(True) if x.dtype == dtype else x.detach().to(dtype).requires_grad_(True)
               for x in inputs]
    ref = composite_slots_reference(*ref_in, bg_logit=bg_logit)
    ours = run_triton(composite_slots, *ours_in, bg_logit=bg_logit, return_mask=return_mask)
    assert len(ours) == 3
    if return_mask:
        assert_close(ours[0], ref[0], dtype, "mask")
        assert ours[0].dtype == dtype and ours[0].shape == ref[0].shape
    else:
        assert ours[0] is None
    assert_close(ours[1], ref[1], dtype, "rgb")
    assert_close(ours[2], ref[2], dtype, "depth")

    # Upstream gradients for rgb and depth, and for the mask unless it is not returned or not used.
    device = inputs[0].device
    g_rgb = torch.randn(ref[1].shape, generator=gen, dtype=torch.float64).to(device)
    g_depth = torch.randn(ref[2].shape, generator=gen, dtype=torch.float64).to(device)
    ref_outs, our_outs, grads = [ref[1], ref[2]], [ours[1], ours[2]], [g_rgb, g_depth]
    if return_mask and grad_mask:
        ref_outs.append(ref[0])
        our_outs.append(ours[0])
        grads.append(torch.randn(ref[0].shape, generator=gen, dtype=torch.float64).to(device))
    grads = [g.to(dtype) for g in grads]
    ref_g = torch.autograd.grad(ref_outs, ref_in, [g.double() for g in grads])
    with use_backend("triton"), poison_outputs():  # gradient buffers are poisoned too
        our_g = torch.autograd.grad(our_outs, ours_in, grads)
    for name, o, r, x in zip(NAMES, our_g, ref_g, inputs):
        assert o.shape == x.shape, f"grad {name}: shape {tuple(o.shape)} != input {tuple(x.shape)}"
        assert_close(o, r, dtype, f"grad {name}")


# O = 1 and 3 run 1024 pixels a program, O = 16 runs 256: each list has a shape with two pixel
# blocks, so the tail masks and the second program's offsets are exercised.
SHAPES = [(2, 1, 9, 13), (1, 1, 33, 37), (2, 3, 6, 11), (1, 3, 37, 29), (2, 16, 5, 3), (1, 16, 17, 19)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layout", ["5d", "4d"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(gen, shape, layout, dtype):
    compare(gen, make_inputs(gen, *shape, layout=layout), dtype, bg_logit=0.3)


def test_many_slots(gen):
    """O = 33 pads to 64 rows and runs 64 pixels a program: two tiles for 9 x 8 pixels."""
    compare(gen, make_inputs(gen, 1, 33, 9, 8, layout="4d"), torch.float32, bg_logit=-0.5)


@pytest.mark.parametrize("bg_logit", [1.0, -80.0, 80.0])
def test_extreme_logits(gen, bg_logit):
    """Logits of ±80 (exp overflows fp32 without the max shift), mixed per pixel and per slot."""
    B, O, H, W = 2, 3, 5, 6
    inputs = make_inputs(gen, B, O, H, W)
    sign = torch.randint(0, 2, (B, O, H, W), generator=gen).double() * 2 - 1
    logits = sign * 80 + torch.randn(B, O, H, W, generator=gen, dtype=torch.float64) * 0.5
    logits[0, :, 0, 0] = -80.0  # every slot at -80: the background (or a tie) takes the pixel
    logits[1, :, 0, 0] = 80.0  # every slot at +80: ties among the slots
    inputs[0] = logits
    compare(gen, inputs, torch.float32, bg_logit=bg_logit)


def test_extreme_logits_mask_is_exact(gen):
    """Dominant logits give a one-hot mask without NaN, background last."""
    B, O, H, W = 1, 3, 4, 5
    inputs = make_inputs(gen, B, O, H, W)
    inputs[0] = torch.full((B, O, H, W), -80.0, dtype=torch.float64)
    inputs[0][:, 1, :, :2] = 80.0
    mask, rgb, depth = run_triton(composite_slots, *[x.float() for x in inputs])
    expect = torch.zeros(B, O + 1, H, W)
    expect[:, 1, :, :2] = 1.0
    expect[:, O, :, 2:] = 1.0
    torch.testing.assert_close(mask, expect, atol=1e-30, rtol=0)
    torch.testing.assert_close(rgb[..., :2], inputs[1][:, 1, :, :, :2].float())
    torch.testing.assert_close(depth[..., 2:], inputs[4][..., 2:].float())


@pytest.mark.parametrize("layout", ["5d", "4d"])
def test_without_mask_output(gen, layout):
    """return_mask=False: no mask (None), values and all five gradients still right."""
    compare(gen, make_inputs(gen, 2, 3, 7, 5, layout=layout), torch.float32, return_mask=False)


def test_unused_mask_and_single_output_gradients(gen):
    """Backward with the mask returned but unused, and with only one of rgb/depth used."""
    inputs = make_inputs(gen, 2, 3, 4, 5)
    compare(gen, inputs, torch.float32, grad_mask=False)
    for which in (1, 2):
        ref_in = [x.clone().requires_grad_(True) for x in inputs]
        ours_in = [x.float().requires_grad_(True) for x in inputs]
        ref_out = composite_slots_reference(*ref_in)[which]
        ours_out = run_triton(composite_slots, *ours_in)[which]
        weight = torch.randn(ref_out.shape, generator=gen, dtype=torch.float64)
        ref_g = torch.autograd.grad((ref_out * weight).sum(), ref_in, allow_unused=True)
        with use_backend("triton"), poison_outputs():
            our_g = torch.autograd.grad((ours_out * weight.float()).sum(), ours_in, allow_unused=True)
        for name, o, r, x in zip(NAMES, our_g, ref_g, ref_in):
            r = torch.zeros_like(x) if r is None else r  # rgb does not depend on depth and vice versa
            o = torch.zeros_like(x) if o is None else o
            assert_close(o, r, torch.float32, f"grad {name} (output {which} only)")


def test_non_contiguous_inputs_and_grads(gen):
    """Strided slices, a channels-last tensor, transposed pixels, a batch-broadcast background and
    non-contiguous upstream gradients (transposed, and stride-0 from a sum)."""
    B, O, H, W = 2, 3, 6, 5
    base = make_inputs(gen, B, O, H, W)
    logits = torch.cat([base[0], base[0].flip(1)], dim=1)[:, ::2]  # slot stride 2·HW
    rgb = base[1].flatten(1, 2).contiguous(memory_format=torch.channels_last).unflatten(1, (O, 3))
    depth = base[2].transpose(-1, -2).contiguous().transpose(-1, -2)  # pixels not unit-stride
    bg_rgb = torch.cat([base[3], base[3]], dim=1)[:, 1:4]  # batch stride 6·HW
    bg_depth = base[4][:1].expand(B, 1, H, W)  # batch stride 0
    inputs = [logits, rgb, depth, bg_rgb, bg_depth]
    assert not any(x.is_contiguous() for x in inputs)
    compare(gen, inputs, torch.float32)

    ref_in = [x.detach().clone().requires_grad_(True) for x in inputs]
    ours_in = [x.detach().float().requires_grad_(True) for x in inputs]
    ref_m, ref_rgb, ref_d = composite_slots_reference(*ref_in)
    our_m, our_rgb, our_d = run_triton(composite_slots, *ours_in)
    g = torch.randn(B, 3, W, H, generator=gen, dtype=torch.float64)
    gm = torch.randn(B, W, H, O + 1, generator=gen, dtype=torch.float64)
    # transpose -> transposed upstream grad; sum -> expanded (stride 0) grad; permute -> permuted grad
    ref_loss = (ref_rgb.transpose(-1, -2) * g).sum() + ref_d.sum() + (ref_m.permute(0, 3, 2, 1) * gm).sum()
    ref_g = torch.autograd.grad(ref_loss, ref_in)
    with use_backend("triton"):
        our_loss = (our_rgb.transpose(-1, -2) * g.float()).sum() + our_d.sum() + \
            (our_m.permute(0, 3, 2, 1) * gm.float()).sum()
        our_g = torch.autograd.grad(our_loss, ours_in)
    for name, o, r in zip(NAMES, our_g, ref_g):
        assert_close(o, r, torch.float32, f"grad {name} (non-contiguous upstream grads)")


def test_reference_semantics(gen):
    """The oracle itself: one slot gives sigmoid(l - bg_logit); the mask sums to one."""
    inputs = make_inputs(gen, 2, 1, 3, 4)
    mask, rgb, depth = composite_slots_reference(*inputs, bg_logit=0.7)
    m = torch.sigmoid(inputs[0] - 0.7)
    torch.testing.assert_close(mask, torch.cat([m, 1 - m], dim=1))
    torch.testing.assert_close(rgb, m * inputs[1][:, 0] + (1 - m) * inputs[3])
    torch.testing.assert_close(depth, m * inputs[2] + (1 - m) * inputs[4])
    mask3 = composite_slots_reference(*make_inputs(gen, 2, 3, 3, 4))[0]
    torch.testing.assert_close(mask3.sum(1), torch.ones(2, 3, 4, dtype=torch.float64))
    assert composite_slots_reference(*inputs, return_mask=False)[0] is None


def test_gradcheck_reference(gen):
    inputs = [x.requires_grad_(True) for x in make_inputs(gen, 1, 2, 2, 3)]
    assert torch.autograd.gradcheck(lambda *a: composite_slots_reference(*a, bg_logit=0.4), inputs)


def test_gradcheck_triton_fp64(gen):
    """The fused backward is the derivative of the fused forward (fp64 compute for fp64 storage)."""
    inputs = [x.requires_grad_(True) for x in make_inputs(gen, 1, 2, 2, 3, layout="4d")]
    with use_backend("triton"):  # fast mode: a random projection of the Jacobian, few interpreted launches
        assert torch.autograd.gradcheck(lambda *a: composite_slots(*a, bg_logit=0.4), inputs, fast_mode=True)


def test_backend_switching(gen, monkeypatch):
    inputs = [x.float().requires_grad_(True) for x in make_inputs(gen, 1, 3, 4, 5)]
    fused = "_CompositeFunction"
    with use_backend("triton"):
        assert fused in type(composite_slots(*inputs)[1].grad_fn).__name__
    with use_backend("reference"):
        assert fused not in type(composite_slots(*inputs)[1].grad_fn).__name__
    # auto: Triton only for CUDA tensors
    assert fused not in type(composite_slots(*inputs)[1].grad_fn).__name__
    monkeypatch.setenv("LOCI_FAST_KERNELS", "triton")
    assert fused in type(composite_slots(*inputs)[1].grad_fn).__name__
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        composite_slots(*inputs)
    monkeypatch.setenv("LOCI_FAST_KERNELS", "reference")
    out = composite_slots(*inputs)  # the reference needs no interpreter
    torch.testing.assert_close(out[1], run_reference(composite_slots_reference, *inputs)[1])


def test_empty_batch():
    inputs = [torch.zeros(s) for s in [(0, 2, 3, 4), (0, 2, 3, 3, 4), (0, 2, 3, 4), (0, 3, 3, 4), (0, 1, 3, 4)]]
    mask, rgb, depth = run_triton(composite_slots, *inputs)
    assert mask.shape == (0, 3, 3, 4) and rgb.shape == (0, 3, 3, 4) and depth.shape == (0, 1, 3, 4)


def _bad_cases():
    B, O, H, W = 2, 3, 4, 5

    def good():
        return {"mask_logits": torch.randn(B, O, H, W), "slot_rgb": torch.randn(B, O, 3, H, W),
                "slot_depth": torch.randn(B, O, H, W), "bg_rgb": torch.randn(B, 3, H, W),
                "bg_depth": torch.randn(B, 1, H, W)}

    def with_(**kw):
        args = good()
        args.update(kw)
        return args

    return [
        ("mask_logits", with_(mask_logits=torch.randn(B, O, H))),
        ("mask_logits", with_(mask_logits=torch.randn(B, 0, H, W))),
        ("mask_logits", with_(mask_logits=torch.randint(0, 3, (B, O, H, W)))),
        ("mask_logits", with_(mask_logits=[1.0, 2.0])),
        ("slot_rgb", with_(slot_rgb=torch.randn(B, O, 4, H, W))),
        ("slot_rgb", with_(slot_rgb=torch.randn(B, 3 * O + 1, H, W))),
        ("slot_rgb", with_(slot_rgb=torch.randn(B, O, 3, W, H))),
        ("slot_rgb", with_(slot_rgb=torch.randn(B, 3 * O, H * W))),
        ("slot_depth", with_(slot_depth=torch.randn(B, O + 1, H, W))),
        ("slot_depth", with_(slot_depth=torch.randn(B, O, H, W, dtype=torch.float64))),
        ("bg_rgb", with_(bg_rgb=torch.randn(B, 4, H, W))),
        ("bg_rgb", with_(bg_rgb=torch.randn(B + 1, 3, H, W))),
        ("bg_rgb", with_(bg_rgb=torch.randn(B, 3, H, W, device="meta"))),
        ("bg_depth", with_(bg_depth=torch.randn(B, H, W))),
        ("bg_depth", with_(bg_depth=torch.randn(B, 1, H, W, dtype=torch.float16))),
        ("bg_logit", {**good(), "bg_logit": float("nan")}),
        ("bg_logit", {**good(), "bg_logit": "1.0"}),
        ("bg_logit", {**good(), "bg_logit": torch.tensor(1.0)}),
    ]


@pytest.mark.parametrize("name,kwargs", _bad_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_arguments(name, kwargs):
    with use_backend("triton"), pytest.raises(ValueError, match=f"^{name}:"):
        composite_slots(**kwargs)


# ---------------------------------------------------------------- GPU only

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", [(8, 16, 256, 256), (1, 16, 256, 256), (32, 1, 128, 128), (3, 10, 97, 131)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gpu_matches_reference(gen, shape, dtype):
    inputs = [x.cuda() for x in make_inputs(gen, *shape, layout="4d")]
    compare(gen, inputs, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_extreme_logits_half(gen, dtype):
    inputs = [x.cuda() for x in make_inputs(gen, 2, 16, 64, 48)]
    sign = torch.randint(0, 2, inputs[0].shape, generator=gen).double().cuda() * 2 - 1
    inputs[0] = sign * 80
    compare(gen, inputs, dtype, bg_logit=80.0, return_mask=False)


@pytest.mark.gpu
def test_gpu_auto_backend_uses_triton(gen):
    inputs = [x.float().cuda().requires_grad_(True) for x in make_inputs(gen, 1, 3, 8, 8)]
    assert "_CompositeFunction" in type(composite_slots(*inputs)[1].grad_fn).__name__


def test_bench_cases_pass_their_gates_on_cpu():
    """The suite's cpu-gate cases build valid inputs and pass the runner's gate (Triton interpreted)."""
    from loci_fast.bench.composite import cases, minimal_elements
    from loci_fast.bench.runner import check_case

    cpu = torch.device("cpu")
    assert len(cases(quick=True, device=cpu)) == 1
    assert [c.shape["O"] for c in cases(quick=True, device=torch.device("cuda"))] == [16]
    for case in cases(quick=False, device=cpu):
        gate = check_case(case, torch.float32, cpu)
        assert gate["ok"], gate["errors"]
        assert set(gate["errors"]) >= {"out0", "out1", "out2", "grad_mask_logits", "grad_bg_depth"}
    # (8, 16, 256, 256) fp32: 105 elements per pixel forward (6·16 + 9), 189 backward (11·16 + 13)
    assert minimal_elements(8, 16, 256, 256) == (8 * 65536 * 105, 8 * 65536 * 189)


@pytest.mark.parametrize("o_pad", [1, 2, 4, 16, 64, 256, 1024])
def test_gpu_autotune_configs_keep_a_bounded_tile(o_pad):
    """The GPU autotuner (not runnable in the interpreter) always keeps a config, within register bounds."""
    from loci_fast.kernels import composite

    keep = composite._prune_configs(composite._GPU_CONFIGS, {}, O_PAD=o_pad)
    assert keep
    lo, hi = composite._PER_THREAD
    per_thread = [o_pad * c.kwargs["BLOCK"] // (32 * c.num_warps) for c in keep]
    if o_pad <= 64:
        assert all(lo <= v <= hi for v in per_thread), per_thread
    else:  # no tuned config fits: the fixed default tile
        assert [c.kwargs["BLOCK"] for c in keep] == [composite._tile(o_pad)[1]]


def test_autotuned_launch_path(gen, monkeypatch):
    """The GPU launch path (autotuner, its pruning, the grid from the chosen BLOCK) run in the
    interpreter with a CPU stopwatch in place of CUDA-event timing."""
    from loci_fast.kernels import composite

    def stopwatch(kernel_call, quantiles):
        start = time.perf_counter()
        kernel_call()
        return [time.perf_counter() - start] * len(quantiles)

    fwd = composite._autotuned(composite._composite_fwd_kernel, "WRITE_MASK", do_bench=stopwatch)
    bwd = composite._autotuned(composite._composite_bwd_kernel, "HAS_GMASK", do_bench=stopwatch)
    monkeypatch.setattr(composite, "_fwd_tuned", fwd)
    monkeypatch.setattr(composite, "_bwd_tuned", bwd)
    monkeypatch.setattr(composite, "plan_for_gpu", lambda t: True)  # CPU tensors take the GPU launch path
    compare(gen, make_inputs(gen, 2, 3, 5, 7, layout="4d"), torch.float32)
    assert fwd.best_config is not None and bwd.best_config is not None  # the tuned path really ran
    assert fwd.best_config in composite._prune_configs(composite._GPU_CONFIGS, {}, O_PAD=4)
