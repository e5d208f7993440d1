"""Per-sample depthwise 2-D convolution with generated ("hyper") weights, fused in Triton.

``hyper_depthwise_conv2d(x, weight, bias)`` convolves every channel of every sample with its own
k x k kernel (cross-correlation, as ``torch.nn.functional.conv2d``), zero 'same' padding:

    out[n, c, i, j] = bias[n, c] + sum_{a, b} weight[n, c, a, b] * x[n, c, i + a - k//2, j + b - k//2]

Upstream (reference/loci-segmented.md §6.1) folds the batch into the channel groups of one grouped
``conv2d``; that is ``hyper_depthwise_conv2d_reference`` here.

Triton design:
* Forward: one program per (sample, channel block, spatial tile). The tile is a 2-D block
  [BLOCK_C channels, TILE_H * TILE_W pixels]; each of the k*k taps is one shifted, masked load of the
  tile. Triton exposes neither shared memory nor register shifts, so "load the halo once, then shift"
  cannot be written directly; the k*k shifted tiles overlap except for the halo, so after the first
  tap they are served from L1/L2 and DRAM still sees about one read of the tile plus its halo.
* Backward, one fused kernel per (sample, channel block, spatial tile):
  - grad x: the same tap loop over grad out with the kernel flipped (negated offsets);
  - grad weight / bias: per tap, the sum over the tile's pixels of grad_out * shifted x (and of
    grad_out). When one tile covers the image (the usual case up to 32x32) the program owns the
    whole (sample, channel block) reduction and writes the final gradient directly; otherwise it
    writes per-tile partial sums and a second, tiny reduction over tiles follows. No atomics.
Accumulation is fp32 for fp16/bf16/fp32 storage (fp64 for fp64 inputs, which makes the Triton path
gradcheck-able in the interpreter).

Registers: the k*k taps are a loop, not unrolled (``tl.static_range``). Unrolled, ptxas hoisted the
shifted loads of many taps at once: the backward took ~190 registers and spilled under triton 3.6.0
(8-32 B at the encoder shapes, sm_90), the forward took ~148 in bf16/fp16 against 72 in fp32. As a
loop both kernels take 48-80 registers in every dtype with no spills (``loci-fast bench --compile``,
triton 3.6.0 and 3.7.1), so 2-3x more blocks fit an SM to hide the load latency, and compile in
about 1 s instead of 20-50 s. ``num_stages=1``: there is nothing to software-pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import dispatch
from ._common import cdiv, compute_dtype, jit, next_pow2, plan_for_gpu, tl

KERNEL_SIZES = (3, 5, 7)

__all__ = ["hyper_depthwise_conv2d", "hyper_depthwise_conv2d_reference"]


# ---------------------------------------------------------------- reference

def hyper_depthwise_conv2d_reference(x: torch.Tensor, weight: torch.Tensor,
                                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample depthwise convolution in plain PyTorch (the oracle; autograd, any float dtype).

    Folds the batch into the channel groups of a single grouped ``conv2d``, as upstream does:
    x (N, C, H, W) -> (1, N*C, H, W), weight (N, C, k, k) -> (N*C, 1, k, k), groups = N*C.

    Args:
        x: input (N, C, H, W).
        weight: per-sample depthwise kernels (N, C, k, k), k odd.
        bias: per-sample biases (N, C) or None.
    Returns:
        (N, C, H, W) in the dtype of ``x``; fp16/bf16 inputs compute in fp32, like the kernels.
    Raises:
        ValueError naming the argument, as :func:`hyper_depthwise_conv2d`.
    """
    _check_args(x, weight, bias)
    return _reference(x, weight, bias)


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    n, c, h, w = x.shape
    k = weight.shape[-1]
    bias = None if bias is None else dispatch.upcast(bias).reshape(n * c)
    out = F.conv2d(dispatch.upcast(x).reshape(1, n * c, h, w), dispatch.upcast(weight).reshape(n * c, 1, k, k),
                   bias, padding=k // 2, groups=n * c)
    return out.reshape(n, c, h, w).to(x.dtype)


# ---------------------------------------------------------------- block shapes

@dataclass(frozen=True)
class Blocks:
    """Launch shape: channels per program, spatial tile (powers of two) and warps."""

    block_c: int
    tile_h: int
    tile_w: int
    num_warps: int


def pick_blocks(c: int, h: int, w: int, interpret: bool, backward: bool = False) -> Blocks:
    """Choose block shapes for C channels of H x W images.

    Forward: about 1024 elements per program on a GPU (8 fp32 values per thread with 4 warps):
    8x8 images take 16 channels of the whole image, 16x16 take 4, 32x32 one whole image, 64x64 a
    16x64 band. The fused backward holds twice the live tiles (shifted x and grad out) and takes half
    (chosen when its taps were unrolled and spilled at 1024; as a loop it has room to grow, which
    only a GPU benchmark can decide). The interpreter costs ~1.5 ms per program
    whatever its size, so there blocks are 4x larger.
    """
    budget = 4096 if interpret else 1024
    if backward and not interpret:
        budget //= 2
    tile_w = min(next_pow2(w), 64)
    tile_h = min(next_pow2(h), max(1, budget // tile_w))
    block_c = min(next_pow2(c), max(1, budget // (tile_h * tile_w)))
    return Blocks(block_c, tile_h, tile_w, num_warps=4 if block_c * tile_h * tile_w <= 1024 else 8)


# ---------------------------------------------------------------- Triton kernels

@jit
def _tile_coords(pid, C, H, W, tiles_w, num_tiles, num_cblocks,
                 BLOCK_C: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Decode a program id into its (sample*C + channel) rows, pixel rows/cols and masks."""
    tile = pid % num_tiles  # tiles innermost: neighbouring programs share halos in L2
    nc = pid // num_tiles
    n = nc // num_cblocks
    c = (nc % num_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.arange(0, TILE_H * TILE_W)
    h = (tile // tiles_w) * TILE_H + p // TILE_W
    w = (tile % tiles_w) * TILE_W + p % TILE_W
    row = (n * C + c).to(tl.int64)  # int64: N*C*H*W may exceed 2**31
    return tile, row, c < C, h, w, (h < H) & (w < W)

@jit
def _hyperconv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, C, H, W, tiles_w, num_tiles, num_cblocks,
                          K: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_C: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    tile, row, c_ok, h, w, pix_ok = _tile_coords(tl.program_id(0), C, H, W, tiles_w, num_tiles,
                                                 num_cblocks, BLOCK_C, TILE_H, TILE_W)
    center = row[:, None] * (H * W) + (h * W + w)[None, :]
    acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), dtype=ACC)
    for t in range(K * K):  # a loop over the taps, not unrolled: see "Registers" in the module docstring
        a = t // K
        b = t % K
        hh = h + (a - K // 2)
        ww = w + (b - K // 2)
        # In-image shifted positions only: this also keeps every address inside x.
        ok = c_ok[:, None] & ((hh >= 0) & (hh < H) & (ww >= 0) & (ww < W))[None, :]
        xv = tl.load(x_ptr + center + ((a - K // 2) * W + (b - K // 2)), mask=ok, other=0.0)
        wv = tl.load(w_ptr + row * (K * K) + t, mask=c_ok, other=0.0)
        acc += xv.to(ACC) * wv.to(ACC)[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + row, mask=c_ok, other=0.0).to(ACC)[:, None]
    tl.store(out_ptr + center, acc, mask=c_ok[:, None] & pix_ok[None, :])

@jit
def _hyperconv_bwd_kernel(x_ptr, w_ptr, g_ptr, dx_ptr, dw_ptr, db_ptr,
                          C, H, W, tiles_w, num_tiles, num_cblocks,
                          K: tl.constexpr, NEED_DX: tl.constexpr, NEED_DW: tl.constexpr,
                          NEED_DB: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_C: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    tile, row, c_ok, h, w, pix_ok = _tile_coords(tl.program_id(0), C, H, W, tiles_w, num_tiles,
                                                 num_cblocks, BLOCK_C, TILE_H, TILE_W)
    center = row[:, None] * (H * W) + (h * W + w)[None, :]
    # dw/db rows: (row, tile) -> one partial per tile; with one tile this is the final layout.
    part = row * num_tiles + tile
    if NEED_DW or NEED_DB:
        # Zero outside the image / channel range, so masked-off pixels add nothing to the sums.
        g = tl.load(g_ptr + center, mask=c_ok[:, None] & pix_ok[None, :], other=0.0).to(ACC)
        if NEED_DB:
            tl.store(db_ptr + part, tl.sum(g, axis=1), mask=c_ok)
    if NEED_DX:
        acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), dtype=ACC)
    for t in range(K * K):  # a loop over the taps, not unrolled: see "Registers" in the module docstring
        dy = t // K - K // 2
        dx_ = t % K - K // 2
        if NEED_DW:  # x[h + dy, w + dx] for grad weight
            ok = c_ok[:, None] & ((h + dy >= 0) & (h + dy < H) & (w + dx_ >= 0) & (w + dx_ < W))[None, :]
            xv = tl.load(x_ptr + center + (dy * W + dx_), mask=ok, other=0.0).to(ACC)
            tl.store(dw_ptr + part * (K * K) + t, tl.sum(g * xv, axis=1), mask=c_ok)
        if NEED_DX:  # grad_out[h - dy, w - dx] for grad x (the flipped kernel)
            ok = c_ok[:, None] & ((h - dy >= 0) & (h - dy < H) & (w - dx_ >= 0) & (w - dx_ < W))[None, :]
            gv = tl.load(g_ptr + center - (dy * W + dx_), mask=ok, other=0.0).to(ACC)
            wv = tl.load(w_ptr + row * (K * K) + t, mask=c_ok, other=0.0).to(ACC)
            acc += gv * wv[:, None]
    if NEED_DX:
        tl.store(dx_ptr + center, acc, mask=c_ok[:, None] & pix_ok[None, :])


def _launch_geometry(x: torch.Tensor, backward: bool) -> tuple[Blocks, int, int, int]:
    """Blocks, tiles along W, spatial tiles per image and channel blocks for ``x`` (N, C, H, W)."""
    _, c, h, w = x.shape
    blocks = pick_blocks(c, h, w, interpret=not plan_for_gpu(x), backward=backward)
    tiles_w = cdiv(w, blocks.tile_w)
    num_tiles = cdiv(h, blocks.tile_h) * tiles_w
    return blocks, tiles_w, num_tiles, cdiv(c, blocks.block_c)


def _forward_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    n, c, h, w = x.shape
    k = weight.shape[-1]
    blocks, tiles_w, num_tiles, num_cblocks = _launch_geometry(x, backward=False)
    out = dispatch.empty((n, c, h, w), dtype=x.dtype, device=x.device)
    grid = (n * num_cblocks * num_tiles,)
    _hyperconv_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, out, c, h, w, tiles_w, num_tiles, num_cblocks,
        K=k, HAS_BIAS=bias is not None, ACC=compute_dtype(x.dtype)[0], BLOCK_C=blocks.block_c,
        TILE_H=blocks.tile_h, TILE_W=blocks.tile_w, num_warps=blocks.num_warps, num_stages=1)
    return out


def _backward_triton(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, need_dx: bool,
                     need_dw: bool, need_db: bool):
    n, c, h, w = x.shape
    k = weight.shape[-1]
    blocks, tiles_w, num_tiles, num_cblocks = _launch_geometry(x, backward=True)
    dev, dt = x.device, x.dtype
    # One tile per image: the kernel writes final gradients. Several: per-tile partials, summed below.
    part_dt = dt if num_tiles == 1 else (torch.float64 if dt == torch.float64 else torch.float32)
    dx = dispatch.empty((n, c, h, w), dtype=dt, device=dev) if need_dx else None
    dw_part = dispatch.empty((n, c, num_tiles, k * k), dtype=part_dt, device=dev) if need_dw else None
    db_part = dispatch.empty((n, c, num_tiles), dtype=part_dt, device=dev) if need_db else None
    dummy = grad_out  # never dereferenced when the matching NEED_* flag is off
    grid = (n * num_cblocks * num_tiles,)
    _hyperconv_bwd_kernel[grid](
        x, weight, grad_out, dx if need_dx else dummy, dw_part if need_dw else dummy,
        db_part if need_db else dummy, c, h, w, tiles_w, num_tiles, num_cblocks,
        K=k, NEED_DX=need_dx, NEED_DW=need_dw, NEED_DB=need_db, ACC=compute_dtype(dt)[0],
        BLOCK_C=blocks.block_c, TILE_H=blocks.tile_h, TILE_W=blocks.tile_w, num_warps=blocks.num_warps, num_stages=1)
    dw = db = None
    if need_dw:
        dw = dw_part.view(n, c, k, k) if num_tiles == 1 else _sum_tiles(dw_part, (n, c, k, k), dt)
    if need_db:
        db = db_part.view(n, c) if num_tiles == 1 else _sum_tiles(db_part, (n, c), dt)
    return dx, dw, db


def _sum_tiles(part: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Second reduction stage: sum per-tile partials (dim 2) into a fresh gradient buffer."""
    out = dispatch.empty(shape, dtype=dtype, device=part.device)
    torch.sum(part, dim=2, out=out.view(part.shape[:2] + part.shape[3:]))  # casts to out's dtype
    return out


class _HyperconvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x, weight = x.contiguous(), weight.contiguous()
        bias = bias.contiguous() if bias is not None else None
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _forward_triton(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad
        need_db = need_db and ctx.has_bias
        if not (need_dx or need_dw or need_db):
            return None, None, None
        return _backward_triton(x, weight, grad_out.contiguous(), need_dx, need_dw, need_db)


# ---------------------------------------------------------------- public op

def _check_args(x, weight, bias) -> None:
    dispatch.check_tensor("x", x, shape=(None, None, None, None))
    n, c = x.shape[:2]
    dispatch.check_tensor("weight", weight, shape=(n, c, None, None))
    kh, kw = weight.shape[2:]
    if kh != kw:
        raise ValueError(f"weight: expected square kernels (N, C, k, k), received shape "
                         f"({', '.join(str(s) for s in weight.shape)})")
    if kh not in KERNEL_SIZES:
        raise ValueError(f"weight: expected kernel size k in {KERNEL_SIZES} (odd, for 'same' padding), "
                         f"received k = {kh}")
    if bias is not None:
        dispatch.check_tensor("bias", bias, shape=(n, c))
    dispatch.check_same("x", x, weight=weight, bias=bias)


def hyper_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise convolution with a separate k x k kernel per (sample, channel), zero 'same' padding.

    Args:
        x: input (N, C, H, W), float16/bfloat16/float32/float64.
        weight: kernels (N, C, k, k), k in {3, 5, 7}; cross-correlation as ``torch.conv2d``.
        bias: biases (N, C) or None.
    Returns:
        (N, C, H, W) in the dtype of ``x``; differentiable in x, weight and bias.
    Raises:
        ValueError naming the argument on a wrong shape, kernel size, dtype or device.
    """
    _check_args(x, weight, bias)
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if not dispatch.use_triton(*tensors):
        return _reference(x, weight, bias)
    return _HyperconvFunction.apply(x, weight, bias)
