"""gaussian_maps / slot_gaussian_merge: Triton (interpreted on CPU) against the float64 reference."""
from __future__ import annotations

import pytest
import torch

from loci_fast.kernels import (gaussian_maps, gaussian_maps_reference, slot_gaussian_merge,
                               slot_gaussian_merge_reference, use_backend)
from loci_fast.kernels import gaussian as gaussian_module
from loci_fast.kernels._common import gpu_plan
from loci_fast.kernels.dispatch import poison_outputs
from tests.kernels.helpers import assert_close, run_triton

NAMES = ("position", "gestalt", "priority")


def make_inputs(gen: torch.Generator, B: int, O: int, C: int, k: int, *, prio: bool = True,
                prio_scale: float = 2.0, spread: float = 0.8) -> list[torch.Tensor | None]:
    """Fresh float64 inputs: positions mostly inside the grid, stds in the unclipped range."""
    n = B * O
    pos = (torch.rand(n, k, generator=gen, dtype=torch.float64) * 2 - 1) * spread
    if k >= 3:
        pos[:, -1] = torch.rand(n, generator=gen, dtype=torch.float64) * 0.3 + 0.15
    if k == 4:
        pos[:, 2] = torch.randn(n, generator=gen, dtype=torch.float64)  # depth: ignored
    gest = torch.randn(n, C, generator=gen, dtype=torch.float64)
    pri = torch.randn(B, O, generator=gen, dtype=torch.float64) * prio_scale if prio else None
    return [pos, gest, pri]


def compare_merge(gen, inputs, dtype, *, size, num_slots, with_raw=False, **kw):
    """Triton in ``dtype`` (outputs and gradient buffers poisoned) vs the reference in float64.

    The reference sees the inputs rounded to ``dtype`` (then widened): the test measures the
    kernel, not input rounding, which a narrow Gaussian amplifies (its position gradient scales
    with 1/σ²: bf16-rounded positions alone move it by ~10%).
    ``inputs`` may be non-contiguous; they are used as given when already in ``dtype``.
    Returns (our gradients, reference gradients) for further checks.
    """
    ref_in = [None if x is None else x.detach().to(dtype).double().requires_grad_(True) for x in inputs]
    ours_in = [None if x is None else (x.detach() if x.dtype == dtype else x.detach().to(dtype)).requires_grad_(True)
               for x in inputs]
    ref = slot_gaussian_merge_reference(*ref_in, size=size, num_slots=num_slots, with_raw=with_raw, **kw)
    ours = run_triton(slot_gaussian_merge, *ours_in, size=size, num_slots=num_slots, with_raw=with_raw, **kw)
    assert ours.dtype == dtype and ours.shape == ref.shape
    assert_close(ours, ref, dtype, "output")
    gout = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(ref.device)
    live = [i for i, x in enumerate(ref_in) if x is not None]
    ref_g = torch.autograd.grad(ref, [ref_in[i] for i in live], gout)
    with use_backend("triton"), poison_outputs():
        our_g = torch.autograd.grad(ours, [ours_in[i] for i in live], gout.to(dtype))
    for i, o, r in zip(live, our_g, ref_g):
        assert o.shape == inputs[i].shape and o.dtype == dtype, f"grad {NAMES[i]}: {o.shape} {o.dtype}"
        assert_close(o, r, dtype, f"grad {NAMES[i]}")
    return dict(zip((NAMES[i] for i in live), our_g)), dict(zip((NAMES[i] for i in live), ref_g))


def compare_maps(gen, pos, dtype, *, size, **kw):
    """As :func:`compare_merge`, for ``gaussian_maps``; returns our position gradient."""
    ref_in = pos.detach().to(dtype).double().requires_grad_(True)
    ours_in = pos.detach().to(dtype).requires_grad_(True)
    ref = gaussian_maps_reference(ref_in, size, **kw)
    ours = run_triton(gaussian_maps, ours_in, size, **kw)
    assert ours.shape == (pos.shape[0], 1, *size) and ours.dtype == dtype
    assert_close(ours, ref, dtype, "maps")
    gout = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(ref.device)
    (ref_g,) = torch.autograd.grad(ref, ref_in, gout)
    with use_backend("triton"), poison_outputs():
        (our_g,) = torch.autograd.grad(ours, ours_in, gout.to(dtype))
    assert_close(our_g, ref_g, dtype, "grad position")
    return our_g


MODES = {"plain": (False, False), "priority": (True, False), "raw": (True, True)}


# ---------------------------------------------------------------- values and gradients

@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("k", [2, 3, 4])
def test_merge_matches_reference(gen, k, mode):
    prio, raw = MODES[mode]
    compare_merge(gen, make_inputs(gen, 2, 3, 4, k, prio=prio), torch.float32,
                  size=(15, 20), num_slots=3, with_raw=raw)


@pytest.mark.parametrize("size", [(8, 8), (16, 16), (20, 15), (1, 7), (6, 1)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_merge_sizes_and_dtypes(gen, size, dtype):
    """Square, non-square, and 1-pixel axes (whose single coordinate is 0), fp32 and fp64 compute."""
    compare_merge(gen, make_inputs(gen, 2, 5, 3, 4), dtype, size=size, num_slots=5, with_raw=True)


def test_merge_many_slots(gen):
    """O = 17 pads the slot block to 32; the occlusion product spans all of them."""
    compare_merge(gen, make_inputs(gen, 1, 17, 2, 3), torch.float32, size=(5, 6), num_slots=17, with_raw=True)


def test_merge_hard_priorities(gen):
    """Upstream's scale: logits ×250 make the occlusion weights 0/1 (sigmoid saturates, no NaN)."""
    inputs = make_inputs(gen, 2, 4, 3, 4, prio_scale=250.0)
    compare_merge(gen, inputs, torch.float32, size=(9, 11), num_slots=4, with_raw=True)


def test_merge_without_priority_ignores_with_raw(gen):
    inputs = make_inputs(gen, 2, 3, 4, 4, prio=False)
    compare_merge(gen, inputs, torch.float32, size=(7, 5), num_slots=3, with_raw=True)


@pytest.mark.parametrize("mode", ["plain", "raw"])
def test_merge_tiled_plan(gen, monkeypatch, mode):
    """The GPU-style launch plan (several pixel tiles and channel chunks, partial sums) in the interpreter."""
    real_plan = gaussian_module._plan

    def small_plan(n, c, hw, num_slots, has_prio, device):
        p = real_plan(n, c, hw, num_slots, has_prio, device)
        block_p, chunk_c = 32 if has_prio else 64, 2
        return gaussian_module._Plan(p.group, p.block_o, block_p, p.n_groups, -(-hw // block_p), chunk_c,
                                     -(-c // chunk_c))

    monkeypatch.setattr(gaussian_module, "_plan", small_plan)
    prio, raw = MODES[mode]
    # C = 5 over chunks of 2 leaves a partial last chunk; 15x20 = 300 pixels leaves a partial tile.
    compare_merge(gen, make_inputs(gen, 2, 3, 5, 4, prio=prio), torch.float32, size=(15, 20),
                  num_slots=3, with_raw=raw)
    compare_maps(gen, make_inputs(gen, 3, 1, 1, 3)[0], torch.float32, size=(15, 20))


def test_gpu_plan_in_interpreter(gen, monkeypatch):
    """The plan a GPU would get (here for a pretend 4-SM device), run by the interpreter: the
    heuristics' tiles, chunks and warps must give the same numbers as the reference."""
    real_plan = gaussian_module._plan
    gpu = torch.device("cuda", 0)
    with gpu_plan(sm_count=4):
        plan = real_plan(6, 18, 7 * 20, 3, True, gpu)
        maps_plan = real_plan(512, 1, 256 * 256, 1, False, gpu)
    assert (plan.block_o, plan.block_p, plan.n_tiles) == (16, 64, 3)  # [16 slots, 64 pixels] tiles
    assert (plan.chunk_c, plan.n_chunks, plan.position_warps) == (9, 2, 8)
    assert (maps_plan.group, maps_plan.block_p, maps_plan.n_tiles) == (1, 2048, 32)

    def pretend_gpu_plan(n, c, hw, o, has_prio, device):
        with gpu_plan(sm_count=4):
            return real_plan(n, c, hw, o, has_prio, gpu)

    monkeypatch.setattr(gaussian_module, "_plan", pretend_gpu_plan)
    compare_merge(gen, make_inputs(gen, 2, 3, 18, 4), torch.float32, size=(7, 20), num_slots=3, with_raw=True)
    compare_maps(gen, make_inputs(gen, 3, 1, 1, 4)[0], torch.float32, size=(7, 20))


def test_gpu_plan_with_many_slots_in_interpreter(gen, monkeypatch):
    """From 32 padded slots the GPU plan takes 16-pixel tiles (sm_90 spills otherwise): still right."""
    real_plan = gaussian_module._plan
    gpu = torch.device("cuda", 0)

    def pretend_gpu_plan(n, c, hw, o, has_prio, device):
        with gpu_plan(sm_count=4):
            return real_plan(n, c, hw, o, has_prio, gpu)

    plan = pretend_gpu_plan(24, 8, 5 * 9, 24, True, None)
    assert (plan.block_o, plan.block_p, plan.n_tiles) == (32, 16, 3)
    monkeypatch.setattr(gaussian_module, "_plan", pretend_gpu_plan)
    compare_merge(gen, make_inputs(gen, 1, 24, 8, 4), torch.float32, size=(5, 9), num_slots=24, with_raw=True)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_maps_match_reference(gen, k, dtype):
    compare_maps(gen, make_inputs(gen, 5, 1, 1, k)[0], dtype, size=(15, 20))


@pytest.mark.parametrize("size", [(1, 9), (9, 1), (1, 1)], ids=lambda s: "x".join(map(str, s)))
def test_maps_degenerate_axes(gen, size):
    """A 1-pixel axis has the single coordinate 0. Its default min_std, 1/min(h, w) = 1, exceeds
    max_std = 0.5, so the std is 0.5 (torch.clamp's rule) and gets no gradient."""
    pos = make_inputs(gen, 4, 1, 1, 3)[0]
    grad = compare_maps(gen, pos, torch.float64, size=size)
    assert (grad[:, 2] == 0).all() and (grad[:, :2] != 0).any()
    h, w = size
    gx = torch.linspace(-1, 1, w, dtype=torch.float64) if w > 1 else torch.zeros(1, dtype=torch.float64)
    gy = torch.linspace(-1, 1, h, dtype=torch.float64) if h > 1 else torch.zeros(1, dtype=torch.float64)
    sy, sx = 0.5, 0.5 * h / w
    x, y = pos[:, 0, None, None], pos[:, 1, None, None]
    expect = torch.exp(-(gx[None, None, :] - x) ** 2 / (2 * sx ** 2) - (gy[None, :, None] - y) ** 2 / (2 * sy ** 2))
    assert_close(run_triton(gaussian_maps, pos, size)[:, 0], expect, torch.float64, "maps on a 1-pixel axis")


def test_maps_known_values():
    """A Gaussian centred on a grid point peaks at exactly 1 there; one pixel away it follows σ_x = σ_y·h/w."""
    pos = torch.tensor([[0.0, 0.0, 0.25], [1.0, -1.0, 0.25]])
    maps = run_triton(gaussian_maps, pos, (9, 17))
    assert maps[0, 0, 4, 8] == 1.0 and maps[1, 0, 0, 16] == 1.0
    sx = 0.25 * 9 / 17
    right = torch.exp(torch.tensor(-0.5 * (0.125 / sx) ** 2))   # Δx = 2/16
    down = torch.exp(torch.tensor(-0.5 * (0.25 / 0.25) ** 2))   # Δy = 2/8
    assert_close(maps[0, 0, 4, 9], right, torch.float32, "one pixel right")
    assert_close(maps[0, 0, 5, 8], down, torch.float32, "one pixel down")


# ---------------------------------------------------------------- clamps

def test_clamped_positions_and_stds_get_zero_gradient(gen):
    """x, y outside ±position_limit and stds outside [min_std, max_std]: the clamped value is used
    and no gradient flows; exactly on a bound the gradient flows (torch.clamp's convention)."""
    lim, lo, hi = 0.75, 0.125, 0.375  # exact in binary, so fp32 and fp64 agree on the boundaries
    pos, gest, pri = make_inputs(gen, 2, 4, 3, 4)
    pos[0, 0], pos[1, 1] = 1.5, -2.0            # clipped
    pos[2, 0], pos[3, 1] = lim, -lim            # on the bound
    pos[4, 3], pos[5, 3] = 0.05, 0.9            # std clipped
    pos[6, 3], pos[7, 3] = lo, hi               # std on the bound
    ours, ref = compare_merge(gen, [pos, gest, pri], torch.float32, size=(10, 12), num_slots=4, with_raw=True,
                              position_limit=lim, min_std=lo, max_std=hi)
    g = ours["position"]
    assert g[0, 0] == 0 and g[1, 1] == 0 and g[4, 3] == 0 and g[5, 3] == 0
    assert (g[:, 2] == 0).all()  # the depth column never gets a gradient
    assert g[0, 1] != 0 and g[2, 0] != 0 and g[3, 1] != 0 and g[6, 3] != 0 and g[7, 3] != 0
    # clipped positions render exactly as the clamped ones
    clamped = pos.clone()
    clamped[0, 0], clamped[1, 1], clamped[4, 3], clamped[5, 3] = lim, -lim, lo, hi
    kw = dict(size=(10, 12), num_slots=4, with_raw=True, position_limit=lim, min_std=lo, max_std=hi)
    a = run_triton(slot_gaussian_merge, pos.float(), gest.float(), pri.float(), **kw)
    b = run_triton(slot_gaussian_merge, clamped.float(), gest.float(), pri.float(), **kw)
    assert torch.equal(a, b)


def test_k2_std_is_min_std(gen):
    """k = 2: std 0 clipped up to min_std (default 1/min(h, w))."""
    pos = make_inputs(gen, 3, 1, 1, 2)[0]
    with_std = torch.cat([pos, torch.full((3, 1), 1.0 / 6, dtype=torch.float64)], dim=1)
    a = run_triton(gaussian_maps, pos, (6, 9))
    b = gaussian_maps_reference(with_std, (6, 9), min_std=1 / 6)
    assert_close(a, b, torch.float64, "k=2 maps")


# ---------------------------------------------------------------- layouts

def test_non_contiguous_inputs(gen):
    B, O, C, k = 2, 3, 4, 4
    pos, gest, pri = make_inputs(gen, B, O, C, k)
    wide = torch.randn(B * O, k + 3, generator=gen, dtype=torch.float32)
    wide[:, 1:1 + k] = pos.float()
    pos_v = wide[:, 1:1 + k]                           # row stride k + 3
    gest_v = gest.float().t().contiguous().t()         # column-major
    pri_v = pri.float().t().contiguous().t()
    assert not (pos_v.is_contiguous() or gest_v.is_contiguous() or pri_v.is_contiguous())
    compare_merge(gen, [pos_v, gest_v, pri_v], torch.float32, size=(6, 7), num_slots=O, with_raw=True)
    compare_maps(gen, wide[:, 1:1 + k], torch.float32, size=(6, 7))


def test_non_contiguous_output_gradients(gen):
    """Output gradients that are permuted or expanded (from .sum()) give the same gradients."""
    pos, gest, pri = (x.float().requires_grad_(True) for x in make_inputs(gen, 2, 3, 4, 3))
    kw = dict(size=(5, 6), num_slots=3, with_raw=True)
    out = run_triton(slot_gaussian_merge, pos, gest, pri, **kw)
    gout = torch.randn(12, 4, 6, 5, generator=gen).transpose(2, 3)  # (2N, C, h, w) with h, w swapped in memory
    with use_backend("triton"), poison_outputs():
        ours = torch.autograd.grad(out, (pos, gest, pri), gout, retain_graph=True)
        ours_sum = torch.autograd.grad(out.sum(), (pos, gest, pri))
    ref_in = [x.detach().double().requires_grad_(True) for x in (pos, gest, pri)]
    ref_out = slot_gaussian_merge_reference(*ref_in, **kw)
    ref = torch.autograd.grad(ref_out, ref_in, gout.double(), retain_graph=True)
    ref_sum = torch.autograd.grad(ref_out.sum(), ref_in)
    for name, o, r, os_, rs in zip(NAMES, ours, ref, ours_sum, ref_sum):
        assert_close(o, r, torch.float32, f"grad {name} (permuted)")
        assert_close(os_, rs, torch.float32, f"grad {name} (expanded)")


def test_empty_batch():
    pos, gest, pri = torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0, 2)
    out = run_triton(slot_gaussian_merge, pos, gest, pri, size=(4, 5), num_slots=2, with_raw=True)
    assert out.shape == (0, 3, 4, 5)
    assert run_triton(gaussian_maps, pos, (4, 5)).shape == (0, 1, 4, 5)


# ---------------------------------------------------------------- autograd checks

def test_gradcheck_references(gen):
    pos, gest, pri = (x.requires_grad_(True) for x in make_inputs(gen, 2, 3, 2, 4, spread=0.6))
    kw = dict(size=(4, 5), num_slots=3)
    assert torch.autograd.gradcheck(lambda p, g, q: slot_gaussian_merge_reference(p, g, q, with_raw=True, **kw),
                                    (pos, gest, pri))
    assert torch.autograd.gradcheck(lambda p, g: slot_gaussian_merge_reference(p, g, **kw), (pos, gest))
    assert torch.autograd.gradcheck(lambda p: gaussian_maps_reference(p, (4, 5)), (pos,))


def test_gradcheck_triton_fp64(gen):
    """The fused autograd.Function in float64 (fp64 compute in the kernels), fast-mode gradcheck."""
    pos, gest, pri = (x.requires_grad_(True) for x in make_inputs(gen, 2, 3, 2, 4, spread=0.6))
    with use_backend("triton"):
        assert torch.autograd.gradcheck(
            lambda p, g, q: slot_gaussian_merge(p, g, q, size=(4, 5), num_slots=3, with_raw=True),
            (pos, gest, pri), fast_mode=True)


# ---------------------------------------------------------------- dispatch

def _is_fused(out: torch.Tensor) -> bool:
    return type(out.grad_fn).__name__.startswith("_GaussianFunction")


def test_backend_switching(gen, monkeypatch):
    pos, gest, pri = (x.float().requires_grad_(True) for x in make_inputs(gen, 1, 2, 3, 3))
    kw = dict(size=(4, 4), num_slots=2, with_raw=True)
    with use_backend("reference"):
        assert not _is_fused(slot_gaussian_merge(pos, gest, pri, **kw))
        assert not _is_fused(gaussian_maps(pos, (4, 4)))
    with use_backend("triton"):
        assert _is_fused(slot_gaussian_merge(pos, gest, pri, **kw))
        assert _is_fused(gaussian_maps(pos, (4, 4)))
    with use_backend("auto"):  # CPU tensors: auto means the reference
        assert not _is_fused(slot_gaussian_merge(pos, gest, pri, **kw))
    monkeypatch.setenv("LOCI_FAST_KERNELS", "reference")
    assert not _is_fused(slot_gaussian_merge(pos, gest, pri, **kw))
    monkeypatch.setenv("LOCI_FAST_KERNELS", "triton")
    assert _is_fused(slot_gaussian_merge(pos, gest, pri, **kw))
    monkeypatch.setenv("LOCI_FAST_KERNELS", "bogus")
    with pytest.raises(ValueError, match="LOCI_FAST_KERNELS"):
        slot_gaussian_merge(pos, gest, pri, **kw)


# ---------------------------------------------------------------- bad arguments

def _good():
    return dict(position=torch.rand(6, 4), gestalt=torch.rand(6, 3), priority=torch.rand(2, 3),
                size=(4, 5), num_slots=3)


BAD_MERGE = [
    ("position", dict(position=[[0.0, 0.0]])),
    ("position", dict(position=torch.rand(6))),
    ("position", dict(position=torch.rand(6, 5))),
    ("position", dict(position=torch.rand(6, 1))),
    ("position", dict(position=torch.zeros(6, 4, dtype=torch.int64))),
    ("size", dict(size=(0, 5))),
    ("size", dict(size=(4,))),
    ("size", dict(size=(4.5, 5))),
    ("size", dict(size="ab")),
    ("size", dict(size=None)),
    ("gestalt", dict(gestalt=torch.rand(5, 3))),
    ("gestalt", dict(gestalt=torch.rand(6))),
    ("gestalt", dict(gestalt=torch.rand(6, 3, dtype=torch.float64))),
    ("gestalt", dict(gestalt=torch.rand(6, 3, device="meta"))),
    ("priority", dict(priority=torch.rand(3, 2))),
    ("priority", dict(priority=torch.rand(6))),
    ("priority", dict(priority=torch.rand(2, 3, dtype=torch.float64))),
    ("priority", dict(priority=torch.rand(2, 3, device="meta"))),
    ("num_slots", dict(num_slots=4)),
    ("num_slots", dict(num_slots=0)),
    ("num_slots", dict(num_slots=3.0)),
    ("num_slots", dict(num_slots=True)),
    ("with_raw", dict(with_raw="yes")),
    ("position_limit", dict(position_limit=0.0)),
    ("position_limit", dict(position_limit=-1.0)),
    ("min_std", dict(min_std=0.0)),
    ("min_std", dict(min_std=0.6)),       # above max_std = 0.5
    ("max_std", dict(max_std=-0.1)),
    ("max_std", dict(max_std="big")),
]


@pytest.mark.parametrize("name,bad", BAD_MERGE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_MERGE)])
@pytest.mark.parametrize("fn", ["fused", "reference"])
def test_bad_arguments_raise(name, bad, fn):
    args = {**_good(), **bad}
    op = slot_gaussian_merge if fn == "fused" else slot_gaussian_merge_reference
    with use_backend("triton"), pytest.raises(ValueError, match=f"^{name}"):
        op(args.pop("position"), args.pop("gestalt"), args.pop("priority"), **args)


@pytest.mark.parametrize("name,bad", [b for b in BAD_MERGE if b[0] in ("position", "size", "position_limit",
                                                                       "min_std", "max_std")])
def test_maps_bad_arguments_raise(name, bad):
    args = {**_good(), **bad}
    with use_backend("triton"), pytest.raises(ValueError, match=f"^{name}"):
        gaussian_maps(args["position"], args["size"], **{k: v for k, v in args.items()
                                                         if k in ("position_limit", "min_std", "max_std")})


# ---------------------------------------------------------------- GPU

CUDA = torch.device("cuda")


def _gpu_compare(gen, B, O, C, h, w, dtype, *, prio=True, raw=True):
    inputs = [None if x is None else x.to(CUDA) for x in make_inputs(gen, B, O, C, 4, prio=prio)]
    compare_merge(gen, inputs, dtype, size=(h, w), num_slots=O, with_raw=raw)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", [(32, 16, 256, 16, 16), (8, 16, 256, 15, 20), (1, 16, 256, 16, 16),
                                   (4, 5, 33, 64, 48), (2, 64, 8, 16, 16)], ids=lambda s: "x".join(map(str, s)))
def test_gpu_merge(gen, shape, dtype):
    _gpu_compare(gen, *shape, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_merge_without_priority(gen, dtype):
    _gpu_compare(gen, 32, 1, 256, 16, 16, dtype, prio=False, raw=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_gpu_maps(gen, dtype):
    compare_maps(gen, make_inputs(gen, 512, 1, 1, 4)[0].to(CUDA), dtype, size=(256, 256))


def test_reference_computes_half_inputs_in_fp32():
    """fp16 storage, fp32 compute (as the kernels): the std gradient of a narrow Gaussian far from
    most pixels overflows fp16 if computed there, and 0 · inf would make it NaN."""
    pos64 = torch.tensor([[-0.9, 0.8, 0.0, 1 / 64], [0.3, -0.2, 0.0, 0.05]], dtype=torch.float64)
    pos16 = pos64.to(torch.float16).requires_grad_(True)
    out = gaussian_maps_reference(pos16, (64, 64))
    assert out.dtype == torch.float16
    (g16,) = torch.autograd.grad(out.float().sum(), pos16)
    ref_in = pos16.detach().double().requires_grad_(True)
    (g64,) = torch.autograd.grad(gaussian_maps_reference(ref_in, (64, 64)).sum(), ref_in)
    assert torch.isfinite(g16).all()
    assert_close(g16, g64, torch.float16, "fp16 position gradient")
