"""hyper_depthwise_conv2d: Triton (interpreted on the CPU) against the float64 reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loci_fast.kernels import hyper_depthwise_conv2d, hyper_depthwise_conv2d_reference, use_backend
from loci_fast.kernels import hyperconv

from .helpers import TOL, assert_close, leaf, rel_err, run_reference, run_triton


def _inputs(gen, n, c, h, w, k, bias=True):
    """Fresh float64 inputs (never zeros): x, weight, bias or None, and a grad_out."""
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(n, c, k, k, generator=gen, dtype=torch.float64) / k
    b = torch.randn(n, c, generator=gen, dtype=torch.float64) if bias else None
    gout = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    return x, weight, b, gout


def _grads(fn, x, weight, bias, gout, run, leaves=None):
    """Run ``fn`` (forward AND backward) under ``run``; return the output and the grads of ``leaves``.

    ``leaves`` defaults to the inputs that require grad.
    """
    if leaves is None:
        leaves = [t for t in (x, weight, bias) if t is not None and t.requires_grad]

    def fwd_bwd():
        out = fn(x, weight, bias)
        return out, torch.autograd.grad(out, leaves, gout.to(out.dtype))

    return run(fwd_bwd)


def _check_against_reference(x64, w64, b64, gout, dtype, device="cpu", prep=lambda t: t):
    """Compare ours in ``dtype`` (inputs passed through ``prep``) to float64 on the same rounded values."""
    leaves = [leaf(t.to(device), dtype) for t in (x64, w64, b64) if t is not None]
    ours_in = [prep(t) for t in leaves] + [None] * (3 - len(leaves))
    # The reference sees exactly the values ours sees (rounded to dtype), in float64.
    ref_in = [None if t is None else leaf(t.to(dtype).double(), torch.float64) for t in (x64, w64, b64)]
    out, grads = _grads(hyper_depthwise_conv2d, *ours_in, gout.to(device), run_triton, leaves=leaves)
    ref, ref_grads = _grads(hyper_depthwise_conv2d_reference, *ref_in, gout, run_reference)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, dtype, "output")
    for name, g, rg in zip(("x", "weight", "bias"), grads, ref_grads):
        assert g.dtype == dtype
        assert_close(g, rg, dtype, f"grad {name}")


# ---------------------------------------------------------------- values and gradients

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_matches_reference(gen, k, dtype):
    # H != W, odd sizes, C not a power of two: masks on every edge.
    _check_against_reference(*_inputs(gen, 2, 3, 5, 7, k), dtype)


@pytest.mark.parametrize("h, w", [(4, 4), (3, 6), (1, 1)])
def test_image_smaller_than_kernel(gen, h, w):
    _check_against_reference(*_inputs(gen, 2, 2, h, w, 7), torch.float32)


def test_bias_none(gen):
    x, weight, _, gout = _inputs(gen, 2, 3, 6, 5, 5, bias=False)
    _check_against_reference(x, weight, None, gout, torch.float32)


def test_bias_changes_output(gen):
    """The bias is really added per (sample, channel), not ignored or broadcast the wrong way."""
    x, weight, b, _ = _inputs(gen, 2, 3, 4, 5, 3)
    with_b = run_triton(hyper_depthwise_conv2d, x.float(), weight.float(), b.float())
    without = run_triton(hyper_depthwise_conv2d, x.float(), weight.float())
    assert_close(with_b - without, b.float()[:, :, None, None].expand_as(with_b), torch.float32, "bias")


def test_several_tiles_and_channel_blocks(gen, monkeypatch):
    """Small forced blocks: partial channel blocks, several spatial tiles, the two-stage reduction."""
    monkeypatch.setattr(hyperconv, "pick_blocks",
                        lambda c, h, w, interpret, backward=False: hyperconv.Blocks(block_c=2, tile_h=4, tile_w=4, num_warps=4))
    geometry = hyperconv._launch_geometry(torch.empty(1, 5, 9, 6), backward=True)
    assert geometry[1:] == (2, 6, 3)  # tiles along W, tiles per image, channel blocks
    _check_against_reference(*_inputs(gen, 1, 5, 9, 6, 5), torch.float32)


@pytest.mark.parametrize("backward", [False, True])
def test_gpu_block_shapes(backward):
    """GPU launch shapes: powers of two, within the element budget, never wider than the image."""
    budget = 512 if backward else 1024
    for c in (1, 3, 32, 64, 128, 256):
        for h, w in ((1, 1), (4, 4), (8, 8), (5, 7), (16, 16), (32, 32), (64, 64), (17, 130)):
            b = hyperconv.pick_blocks(c, h, w, interpret=False, backward=backward)
            sizes = (b.block_c, b.tile_h, b.tile_w)
            assert all(s & (s - 1) == 0 for s in sizes), sizes
            assert b.block_c * b.tile_h * b.tile_w <= budget, sizes
            assert b.block_c < 2 * c and b.tile_h < 2 * h and b.tile_w < 2 * w, (sizes, c, h, w)
    # The encoder's shapes fill the budget (no half-empty programs) and 8x8..32x32 fit one tile.
    for c, s in ((32, 64), (64, 32), (128, 16), (256, 8)):
        b = hyperconv.pick_blocks(c, s, s, interpret=False, backward=backward)
        assert b.block_c * b.tile_h * b.tile_w == budget
        assert (b.tile_h, b.tile_w) == (s, s) or s == 64 or (backward and s == 32)


def test_non_contiguous_inputs(gen):
    x, weight, b, gout = _inputs(gen, 2, 3, 6, 5, 3)
    # Same values, strided storage: x and weight transposed twice, bias a strided slice.
    def noncontig(t):
        if t.dim() == 4:
            return t.transpose(2, 3).contiguous().transpose(2, 3)
        return torch.stack([t, t], dim=-1)[..., 0]

    assert not noncontig(x).is_contiguous() and not noncontig(b).is_contiguous()
    _check_against_reference(x, weight, b, gout, torch.float32, prep=noncontig)


def test_channels_last_input(gen):
    x, weight, b, gout = _inputs(gen, 2, 4, 5, 3, 3)
    _check_against_reference(x, weight, b, gout, torch.float32,
                             prep=lambda t: t.to(memory_format=torch.channels_last) if t.dim() == 4 else t)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)])
def test_partial_gradients(gen, needs):
    """Only the requested gradients are computed, and they are still right."""
    x64, w64, b64, gout = _inputs(gen, 2, 3, 5, 4, 3)
    ours = [t.float().requires_grad_(r) for t, r in zip((x64, w64, b64), needs)]
    ref = [t.clone().requires_grad_(r) for t, r in zip((x64, w64, b64), needs)]
    _, grads = _grads(hyper_depthwise_conv2d, *ours, gout.float(), run_triton)
    _, ref_grads = _grads(hyper_depthwise_conv2d_reference, *ref, gout, run_reference)
    assert len(grads) == 1
    assert_close(grads[0], ref_grads[0], torch.float32, "gradient")


def test_gradcheck_reference(gen):
    x, weight, b, _ = _inputs(gen, 2, 2, 4, 3, 3)
    args = tuple(t.requires_grad_() for t in (x, weight, b))
    assert torch.autograd.gradcheck(hyper_depthwise_conv2d_reference, args)


def test_gradcheck_triton_float64(gen):
    """The Triton path accumulates in float64 for float64 inputs, so gradcheck applies to it too."""
    x, weight, b, _ = _inputs(gen, 1, 2, 3, 4, 3)
    args = tuple(t.requires_grad_() for t in (x, weight, b))
    with use_backend("triton"):
        assert torch.autograd.gradcheck(hyper_depthwise_conv2d, args)


def test_reference_is_per_sample_depthwise(gen):
    """The grouped-conv reference equals a loop of ordinary depthwise convs, one per sample."""
    x, weight, b, _ = _inputs(gen, 3, 4, 6, 5, 5)
    loop = torch.cat([F.conv2d(x[i:i + 1], weight[i].unsqueeze(1), b[i], padding=2, groups=4) for i in range(3)])
    assert rel_err(hyper_depthwise_conv2d_reference(x, weight, b), loop) <= TOL[torch.float64]


def test_bench_cases():
    """The suite's shapes: the encoder's on a GPU, a one-shape quick mode, cpu-gate shapes that pass."""
    from loci_fast.bench import hyperconv as bench
    from loci_fast.bench.runner import check_case

    def shapes(cs):
        return [tuple(c.shape[d] for d in "NCHW") for c in cs]

    gpu = bench.cases(quick=False, device=torch.device("cuda"))
    assert shapes(gpu) == [(n, c, s, s) for n in (16, 128) for c, s in ((32, 64), (64, 32), (128, 16), (256, 8))]
    assert all(c.shape["k"] == 7 and c.shape["bias"] for c in gpu)
    assert shapes(bench.cases(quick=True, device=torch.device("cuda"))) == [(128, 128, 16, 16)]
    case = gpu[0]  # minimal bytes: fp32 forward reads x, weight, bias and writes out
    assert case.bytes_fwd(4) == 4 * (2 * 16 * 32 * 64 * 64 + 16 * 32 * 49 + 16 * 32)
    cpu = bench.cases(quick=True, device=torch.device("cpu"))
    assert all(max(s[2:]) <= 16 for s in shapes(cpu))
    gate = check_case(cpu[0], torch.float32, torch.device("cpu"))
    assert gate["ok"] and set(gate["errors"]) == {"out0", "grad_x", "grad_weight", "grad_bias"}, gate


# ---------------------------------------------------------------- dispatch

def test_backend_switching(gen, monkeypatch):
    x, weight, b, _ = (t.float() for t in _inputs(gen, 1, 2, 4, 4, 3))
    calls = []
    real = hyperconv._forward_triton
    monkeypatch.setattr(hyperconv, "_forward_triton", lambda *a: calls.append(1) or real(*a))
    expected = hyper_depthwise_conv2d_reference(x, weight, b)
    with use_backend("reference"):
        assert torch.equal(hyper_depthwise_conv2d(x, weight, b), expected)
    with use_backend("auto"):  # CPU tensors: auto means the reference
        assert torch.equal(hyper_depthwise_conv2d(x, weight, b), expected)
    assert calls == []
    with use_backend("triton"):
        assert_close(hyper_depthwise_conv2d(x, weight, b), expected, torch.float32, "triton")
    assert calls == [1]


# ---------------------------------------------------------------- bad arguments

def _bad_cases():
    x = torch.randn(2, 3, 5, 5)
    w = torch.randn(2, 3, 3, 3)
    b = torch.randn(2, 3)
    return [
        ("weight", "odd", dict(x=x, weight=torch.randn(2, 3, 4, 4))),            # even k
        ("weight", "k = 9", dict(x=x, weight=torch.randn(2, 3, 9, 9))),         # k not in {3, 5, 7}
        ("weight", "square", dict(x=x, weight=torch.randn(2, 3, 3, 5))),        # non-square
        ("weight", "(2, 3, *, *)", dict(x=x, weight=torch.randn(2, 4, 3, 3))),  # C mismatch
        ("weight", "(2, 3, *, *)", dict(x=x, weight=torch.randn(1, 3, 3, 3))),  # N mismatch
        ("weight", "shape", dict(x=x, weight=torch.randn(2, 3, 9))),            # wrong rank
        ("x", "shape", dict(x=torch.randn(3, 5, 5), weight=w)),
        ("x", "torch.Tensor", dict(x=[[1.0]], weight=w)),
        ("x", "floating", dict(x=x.long(), weight=w.long())),
        ("bias", "(2, 3)", dict(x=x, weight=w, bias=torch.randn(2, 3, 1))),
        ("bias", "(2, 3)", dict(x=x, weight=w, bias=torch.randn(3))),
        ("weight", "float32", dict(x=x, weight=w.double())),                    # dtype mismatch
        ("bias", "float32", dict(x=x, weight=w, bias=b.half())),
        ("weight", "device", dict(x=x, weight=w.to("meta"))),                   # device mismatch
        ("bias", "device", dict(x=x, weight=w, bias=b.to("meta"))),
    ]


@pytest.mark.parametrize("arg, words, kwargs", _bad_cases())
def test_bad_arguments(arg, words, kwargs):
    with pytest.raises(ValueError) as err:
        hyper_depthwise_conv2d(**kwargs)
    msg = str(err.value)
    assert msg.startswith(f"{arg}:"), msg
    assert words in msg, msg


# ---------------------------------------------------------------- GPU (bench shapes, half precision)

BENCH_SHAPES = [(16, 32, 64, 64), (16, 64, 32, 32), (16, 128, 16, 16), (16, 256, 8, 8),
                (128, 128, 16, 16), (128, 256, 8, 8)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", BENCH_SHAPES)
def test_gpu_bench_shapes(gen, shape, dtype):
    _check_against_reference(*_inputs(gen, *shape, 7), dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k, h, w", [(3, 5, 7), (5, 9, 6), (7, 4, 4), (7, 33, 70)])
def test_gpu_half_precision_odd_shapes(gen, dtype, k, h, w):
    _check_against_reference(*_inputs(gen, 3, 37, h, w, k), dtype, device="cuda")
