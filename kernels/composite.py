"""Slot compositing: softmax over O slot logits plus a constant background logit, then the
mask-weighted blend of slot and background RGB and depth (reference/loci-segmented.md §8.5).

Upstream builds this from concatenations, a softmax and broadcast products: several passes over
the largest tensors of the model. Here one Triton program owns a tile of pixels of one sample and
holds all O slot logits of that tile in registers ([O_PAD, BLOCK]), so the softmax max and sum
need no second read of memory. Forward reads every input once and writes every output once; the
backward recomputes the softmax from the logits (O values per pixel) rather than reading a saved
mask (O + 1 values per pixel) and again touches every tensor exactly once. On a GPU the pixels per
program and the warps are autotuned per (O, H·W).
"""
from __future__ import annotations

import math

import torch

from . import dispatch
from ._common import cdiv, compute_dtype, flat_pixels, jit, next_pow2, plan_for_gpu, tl, triton  # noqa: F401 (tl: kernel globals)

__all__ = ["composite_slots", "composite_slots_reference"]

# Default [O_PAD, BLOCK] register tile (the interpreter's, and the GPU's when no tuned config
# fits): 4096 fp32 values over 4 warps is 32 registers a thread per tile, and the backward keeps
# about four such tiles alive.
_TILE_ELEMENTS = 4096
_MIN_BLOCK, _MAX_BLOCK = 32, 1024


def composite_slots_reference(mask_logits: torch.Tensor, slot_rgb: torch.Tensor, slot_depth: torch.Tensor,
                              bg_rgb: torch.Tensor, bg_depth: torch.Tensor, *, bg_logit: float = 1.0,
                              return_mask: bool = True):
    """Plain-PyTorch compositing, the oracle for the fused op (any float dtype, autograd).

    Args:
        mask_logits: (B, O, H, W) slot mask logits.
        slot_rgb: (B, O, 3, H, W), or the same memory as (B, 3O, H, W) (channel 3·o + c).
        slot_depth: (B, O, H, W).
        bg_rgb: (B, 3, H, W).
        bg_depth: (B, 1, H, W).
        bg_logit: the constant background logit.
        return_mask: when False, ``None`` is returned in place of the mask.

    Returns:
        (mask (B, O+1, H, W) with the background last, or None; rgb (B, 3, H, W); depth (B, 1, H, W)),
        in the input dtype; fp16/bf16 inputs compute in fp32, like the kernels.

    Raises:
        ValueError naming the argument, as :func:`composite_slots`.
    """
    _check_args(mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth, bg_logit)
    return _reference(mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth, bg_logit, return_mask)


def _reference(mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth, bg_logit: float, return_mask: bool):
    dtype = mask_logits.dtype
    mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth = (
        dispatch.upcast(t) for t in (mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth))
    B, O, H, W = mask_logits.shape
    bg = torch.full((B, 1, H, W), float(bg_logit), dtype=mask_logits.dtype, device=mask_logits.device)
    mask = torch.softmax(torch.cat([mask_logits, bg], dim=1), dim=1)
    rgb_all = torch.cat([slot_rgb.reshape(B, O, 3, H, W), bg_rgb.unsqueeze(1)], dim=1)
    rgb = (mask.unsqueeze(2) * rgb_all).sum(dim=1)
    depth = (mask * torch.cat([slot_depth, bg_depth], dim=1)).sum(dim=1, keepdim=True)
    return (mask.to(dtype) if return_mask else None), rgb.to(dtype), depth.to(dtype)


# ---------------------------------------------------------------- Triton kernels

@jit
def _softmax_tile(logit_ptr, s_lb, s_lo, b, offs_o, offs_p, O, HW, bg_hi, bg_lo, ACC: tl.constexpr,
                  BLOCK: tl.constexpr):
    """Softmax weights of one tile: m [O_PAD, BLOCK] for the slots, m_bg [BLOCK] for the background.

    Padding rows (o >= O) and pixels (p >= HW) load -inf, so their weight is exactly 0 and the
    maximum is never below the (finite) background logit: no inf - inf.
    """
    valid = (offs_o < O) & (offs_p < HW)
    logits = tl.load(logit_ptr + b * s_lb + offs_o * s_lo + offs_p, mask=valid, other=float("-inf")).to(ACC)
    bg = (tl.zeros([BLOCK], dtype=ACC) + bg_hi) + bg_lo
    mx = tl.maximum(tl.max(logits, axis=0), bg)
    e = tl.exp(logits - mx[None, :])
    e_bg = tl.exp(bg - mx)
    inv = 1.0 / (tl.sum(e, axis=0) + e_bg)
    return e * inv[None, :], e_bg * inv


@jit
def _composite_fwd_kernel(
    logit_ptr, rgb_ptr, depth_ptr, bg_rgb_ptr, bg_depth_ptr,
    mask_out_ptr, rgb_out_ptr, depth_out_ptr,
    O, HW, bg_hi, bg_lo,
    s_lb, s_lo, s_rb, s_ro, s_rc, s_db, s_do, s_bb, s_bc, s_bdb,
    WRITE_MASK: tl.constexpr, ACC: tl.constexpr, O_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)  # int64 batch offsets: large batches exceed 2**31 elements
    p = pid_p * BLOCK + tl.arange(0, BLOCK)
    offs_p = p[None, :]
    offs_o = tl.arange(0, O_PAD)[:, None]
    valid_p = p < HW
    valid = (offs_o < O) & (offs_p < HW)

    m, m_bg = _softmax_tile(logit_ptr, s_lb, s_lo, b, offs_o, offs_p, O, HW, bg_hi, bg_lo, ACC, BLOCK)
    if WRITE_MASK:
        mask_base = mask_out_ptr + b * (O + 1) * HW
        tl.store(mask_base + offs_o * HW + offs_p, m, mask=valid)
        tl.store(mask_base + O * HW + p, m_bg, mask=valid_p)

    for c in tl.static_range(3):
        r = tl.load(rgb_ptr + b * s_rb + offs_o * s_ro + c * s_rc + offs_p, mask=valid, other=0.0).to(ACC)
        r_bg = tl.load(bg_rgb_ptr + b * s_bb + c * s_bc + p, mask=valid_p, other=0.0).to(ACC)
        tl.store(rgb_out_ptr + (b * 3 + c) * HW + p, tl.sum(m * r, axis=0) + m_bg * r_bg, mask=valid_p)

    d = tl.load(depth_ptr + b * s_db + offs_o * s_do + offs_p, mask=valid, other=0.0).to(ACC)
    d_bg = tl.load(bg_depth_ptr + b * s_bdb + p, mask=valid_p, other=0.0).to(ACC)
    tl.store(depth_out_ptr + b * HW + p, tl.sum(m * d, axis=0) + m_bg * d_bg, mask=valid_p)


@jit
def _composite_bwd_kernel(
    logit_ptr, rgb_ptr, depth_ptr, bg_rgb_ptr, bg_depth_ptr,
    g_mask_ptr, g_rgb_ptr, g_depth_ptr,
    d_logit_ptr, d_rgb_ptr, d_depth_ptr, d_bg_rgb_ptr, d_bg_depth_ptr,
    O, HW, bg_hi, bg_lo,
    s_lb, s_lo, s_rb, s_ro, s_rc, s_db, s_do, s_bb, s_bc, s_bdb,
    s_gmb, s_gmo, s_grb, s_grc, s_gdb,
    HAS_GMASK: tl.constexpr, ACC: tl.constexpr, O_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    # With m the softmax and g_k = dL/dm_k (through rgb, depth and the mask output):
    #   dL/dlogit_k = m_k (g_k - sum_j m_j g_j),  dL/drgb_k = m_k grgb,  dL/ddepth_k = m_k gdepth.
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    p = pid_p * BLOCK + tl.arange(0, BLOCK)
    offs_p = p[None, :]
    offs_o = tl.arange(0, O_PAD)[:, None]
    valid_p = p < HW
    valid = (offs_o < O) & (offs_p < HW)

    m, m_bg = _softmax_tile(logit_ptr, s_lb, s_lo, b, offs_o, offs_p, O, HW, bg_hi, bg_lo, ACC, BLOCK)
    if HAS_GMASK:
        g = tl.load(g_mask_ptr + b * s_gmb + offs_o * s_gmo + offs_p, mask=valid, other=0.0).to(ACC)
        g_bg = tl.load(g_mask_ptr + b * s_gmb + O * s_gmo + p, mask=valid_p, other=0.0).to(ACC)
    else:
        g = tl.zeros([O_PAD, BLOCK], dtype=ACC)
        g_bg = tl.zeros([BLOCK], dtype=ACC)

    for c in tl.static_range(3):
        gr = tl.load(g_rgb_ptr + b * s_grb + c * s_grc + p, mask=valid_p, other=0.0).to(ACC)
        r = tl.load(rgb_ptr + b * s_rb + offs_o * s_ro + c * s_rc + offs_p, mask=valid, other=0.0).to(ACC)
        r_bg = tl.load(bg_rgb_ptr + b * s_bb + c * s_bc + p, mask=valid_p, other=0.0).to(ACC)
        g += r * gr[None, :]
        g_bg += r_bg * gr
        # Gradients are written contiguous: (B, O, 3, HW) and (B, 3, HW).
        tl.store(d_rgb_ptr + ((b * O + offs_o) * 3 + c) * HW + offs_p, m * gr[None, :], mask=valid)
        tl.store(d_bg_rgb_ptr + (b * 3 + c) * HW + p, m_bg * gr, mask=valid_p)

    gd = tl.load(g_depth_ptr + b * s_gdb + p, mask=valid_p, other=0.0).to(ACC)
    d = tl.load(depth_ptr + b * s_db + offs_o * s_do + offs_p, mask=valid, other=0.0).to(ACC)
    d_bg = tl.load(bg_depth_ptr + b * s_bdb + p, mask=valid_p, other=0.0).to(ACC)
    g += d * gd[None, :]
    g_bg += d_bg * gd
    tl.store(d_depth_ptr + (b * O + offs_o) * HW + offs_p, m * gd[None, :], mask=valid)
    tl.store(d_bg_depth_ptr + b * HW + p, m_bg * gd, mask=valid_p)

    g_mean = tl.sum(m * g, axis=0) + m_bg * g_bg
    tl.store(d_logit_ptr + (b * O + offs_o) * HW + offs_p, m * (g - g_mean[None, :]), mask=valid)


# ---------------------------------------------------------------- launch helpers

def _tile(num_slots: int) -> tuple[int, int]:
    """(O_PAD, BLOCK): slots padded to a power of two, and pixels per program for a fixed tile size."""
    o_pad = next_pow2(num_slots)
    block = max(_MIN_BLOCK, min(_MAX_BLOCK, _TILE_ELEMENTS // o_pad))
    return o_pad, block


# On a GPU the pixels per program and warps are autotuned per (O, HW); the interpreter cannot
# autotune over several configs, so there the fixed _tile() choice runs (large blocks, few programs).
_GPU_CONFIGS = ([triton.Config({"BLOCK": b}, num_warps=w) for b in (64, 128, 256, 512, 1024) for w in (4, 8)]
                if triton is not None else [])
# Tile values per thread: fewer starves the memory system of loads in flight; at 32 the fp32
# backward sits at 254-255 registers on sm_90 (one block per SM, a step from spilling; compile
# gate, triton 3.7.1), at 64 it spilled; 16 keeps it near 130.
_PER_THREAD = (4, 16)


def _prune_configs(configs, named_args, **kwargs):
    """Keep the configs whose [O_PAD, BLOCK] tile gives each thread 4..32 values (else the default tile)."""
    o_pad = kwargs.get("O_PAD", named_args.get("O_PAD"))
    lo, hi = _PER_THREAD
    keep = [c for c in configs if lo <= o_pad * c.kwargs["BLOCK"] // (32 * c.num_warps) <= hi]
    return keep or [triton.Config({"BLOCK": _tile(o_pad)[1]}, num_warps=4)]


def _launch(kernel, tuned, gpu: bool, B: int, HW: int, o_pad: int, *args, **constexprs) -> None:
    """Launch ``kernel`` over (pixel tiles, batch): autotuned on a GPU (``gpu``), the fixed tile when
    interpreted. Decided per call, so neither import order nor ``TRITON_INTERPRET`` at import matter."""
    if not gpu:
        block = _tile(o_pad)[1]
        kernel[(cdiv(HW, block), B)](*args, **constexprs, O_PAD=o_pad, BLOCK=block, num_warps=4)
    else:
        tuned[lambda meta: (cdiv(HW, meta["BLOCK"]), B)](*args, **constexprs, O_PAD=o_pad)


def _autotuned(kernel, flag: str, *, do_bench=None):
    """``kernel`` autotuned over _GPU_CONFIGS, keyed on the slot count, the image size and ``flag``."""
    timing = {"do_bench": do_bench} if do_bench is not None else {}  # tests pass a CPU stopwatch
    return triton.autotune(configs=_GPU_CONFIGS, key=["O", "HW", flag], **timing,
                           prune_configs_by={"early_config_prune": _prune_configs})(kernel)


# Built whatever TRITON_INTERPRET says (building runs nothing); _launch picks per call.
_fwd_tuned = _autotuned(_composite_fwd_kernel, "WRITE_MASK") if triton is not None else None
_bwd_tuned = _autotuned(_composite_bwd_kernel, "HAS_GMASK") if triton is not None else None


def _split(x: float) -> tuple[float, float]:
    """``x`` as hi + lo, both exact in fp32: Triton passes python floats as fp32 scalars, and fp64
    inputs need the background logit to fp64 precision (hi + lo carries about 48 bits)."""
    hi = float(torch.tensor(x, dtype=torch.float32))
    return hi, float(torch.tensor(x - hi, dtype=torch.float32))


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride()[:-1])


class _CompositeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth, bg_logit: float, write_mask: bool):
        B, O, H, W = mask_logits.shape
        HW = H * W
        rgb_shape = slot_rgb.shape
        # Views (B, O, HW), (B, O, 3, HW), (B, O, HW), (B, 3, HW), (B, 1, HW) with unit pixel stride.
        logits = flat_pixels(mask_logits)
        rgb = flat_pixels(slot_rgb.unflatten(1, (O, 3)) if slot_rgb.dim() == 4 else slot_rgb)
        depth = flat_pixels(slot_depth)
        bg_c, bg_d = flat_pixels(bg_rgb), flat_pixels(bg_depth)

        dtype, device = mask_logits.dtype, mask_logits.device
        mask_out = dispatch.empty((B, O + 1, H, W), dtype=dtype, device=device) if write_mask else None
        rgb_out = dispatch.empty((B, 3, H, W), dtype=dtype, device=device)
        depth_out = dispatch.empty((B, 1, H, W), dtype=dtype, device=device)

        _launch(
            _composite_fwd_kernel, _fwd_tuned, plan_for_gpu(mask_logits), B, HW, next_pow2(O),
            logits, rgb, depth, bg_c, bg_d,
            mask_out if write_mask else rgb_out, rgb_out, depth_out,  # placeholder pointer, never written
            O, HW, *_split(bg_logit),
            *_strides(logits), *_strides(rgb), *_strides(depth), *_strides(bg_c), bg_d.stride(0),
            WRITE_MASK=write_mask, ACC=compute_dtype(dtype)[0],
        )
        ctx.save_for_backward(logits, rgb, depth, bg_c, bg_d)
        ctx.meta = (B, O, H, W, rgb_shape, float(bg_logit), write_mask)
        # None grads stay None (a mask nobody reads must not cost a zero-filled (B, O+1, H, W) read).
        ctx.set_materialize_grads(False)
        return (mask_out, rgb_out, depth_out) if write_mask else (rgb_out, depth_out)

    @staticmethod
    def backward(ctx, *grads):
        B, O, H, W, rgb_shape, bg_logit, write_mask = ctx.meta
        g_mask, g_rgb, g_depth = grads if write_mask else (None, *grads)
        logits, rgb, depth, bg_c, bg_d = ctx.saved_tensors
        dtype, device = logits.dtype, logits.device
        HW = H * W
        if g_rgb is None:
            g_rgb = torch.zeros((B, 3, H, W), dtype=dtype, device=device)
        if g_depth is None:
            g_depth = torch.zeros((B, 1, H, W), dtype=dtype, device=device)
        g_rgb, g_depth = flat_pixels(g_rgb.to(dtype)), flat_pixels(g_depth.to(dtype))
        has_gmask = g_mask is not None
        g_mask = flat_pixels(g_mask.to(dtype)) if has_gmask else g_rgb  # placeholder pointer, never read

        d_logits = dispatch.empty((B, O, H, W), dtype=dtype, device=device)
        d_rgb = dispatch.empty((B, O, 3, H, W), dtype=dtype, device=device)
        d_depth = dispatch.empty((B, O, H, W), dtype=dtype, device=device)
        d_bg_rgb = dispatch.empty((B, 3, H, W), dtype=dtype, device=device)
        d_bg_depth = dispatch.empty((B, 1, H, W), dtype=dtype, device=device)

        _launch(
            _composite_bwd_kernel, _bwd_tuned, plan_for_gpu(logits), B, HW, next_pow2(O),
            logits, rgb, depth, bg_c, bg_d,
            g_mask, g_rgb, g_depth,
            d_logits, d_rgb, d_depth, d_bg_rgb, d_bg_depth,
            O, HW, *_split(bg_logit),
            *_strides(logits), *_strides(rgb), *_strides(depth), *_strides(bg_c), bg_d.stride(0),
            *(_strides(g_mask)[:2] if has_gmask else (0, 0)), *_strides(g_rgb), g_depth.stride(0),
            HAS_GMASK=has_gmask, ACC=compute_dtype(dtype)[0],
        )
        return d_logits, d_rgb.view(rgb_shape), d_depth, d_bg_rgb, d_bg_depth, None, None


# ---------------------------------------------------------------- public op

def _check_args(mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth, bg_logit) -> None:
    dispatch.check_tensor("mask_logits", mask_logits, ndim=4)
    B, O, H, W = mask_logits.shape
    if O < 1:
        raise ValueError(f"mask_logits: expected at least one slot, shape (B, O >= 1, H, W), "
                         f"received {tuple(mask_logits.shape)}")
    dispatch.check_tensor("slot_rgb", slot_rgb)
    if slot_rgb.dim() == 5:
        dispatch.check_tensor("slot_rgb", slot_rgb, shape=(B, O, 3, H, W))
    elif slot_rgb.dim() == 4:
        dispatch.check_tensor("slot_rgb", slot_rgb, shape=(B, 3 * O, H, W))
    else:
        raise ValueError(f"slot_rgb: expected shape ({B}, {O}, 3, {H}, {W}) or ({B}, {3 * O}, {H}, {W}), "
                         f"received {tuple(slot_rgb.shape)}")
    dispatch.check_tensor("slot_depth", slot_depth, shape=(B, O, H, W))
    dispatch.check_tensor("bg_rgb", bg_rgb, shape=(B, 3, H, W))
    dispatch.check_tensor("bg_depth", bg_depth, shape=(B, 1, H, W))
    dispatch.check_same("mask_logits", mask_logits, slot_rgb=slot_rgb, slot_depth=slot_depth,
                        bg_rgb=bg_rgb, bg_depth=bg_depth)
    if isinstance(bg_logit, bool) or not isinstance(bg_logit, (int, float)) or not math.isfinite(bg_logit):
        raise ValueError(f"bg_logit: expected a finite python number, received {bg_logit!r}")


def composite_slots(mask_logits: torch.Tensor, slot_rgb: torch.Tensor, slot_depth: torch.Tensor,
                    bg_rgb: torch.Tensor, bg_depth: torch.Tensor, *, bg_logit: float = 1.0,
                    return_mask: bool = True):
    """Composite O slots over a background: softmax mask, blended RGB and blended depth.

    mask = softmax over [mask_logits ; bg_logit] along the slot axis (background last);
    rgb = Σ_k mask_k · rgb_k and depth = Σ_k mask_k · depth_k over the slots and the background.
    Differentiable in all five tensors (``bg_logit`` is a constant). fp32 compute inside the
    kernels for fp32/fp16/bf16 storage; outputs take the input dtype.

    Args:
        mask_logits: (B, O, H, W) slot mask logits.
        slot_rgb: (B, O, 3, H, W), or the same memory as (B, 3O, H, W) (channel 3·o + c).
        slot_depth: (B, O, H, W).
        bg_rgb: (B, 3, H, W).
        bg_depth: (B, 1, H, W).
        bg_logit: the constant background logit (a finite python number).
        return_mask: when False the (B, O+1, H, W) mask is never written and ``None`` is returned
            in its place; gradients stay correct.

    Returns:
        (mask (B, O+1, H, W) or None, rgb (B, 3, H, W), depth (B, 1, H, W)).

    Raises:
        ValueError: an argument of the wrong type, shape, dtype or device (the message names it).
    """
    _check_args(mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth, bg_logit)
    tensors = (mask_logits, slot_rgb, slot_depth, bg_rgb, bg_depth)
    if mask_logits.numel() == 0 or not dispatch.use_triton(*tensors):
        return _reference(*tensors, float(bg_logit), return_mask)
    outs = _CompositeFunction.apply(*tensors, float(bg_logit), bool(return_mask))
    return tuple(outs) if return_mask else (None, *outs)
