"""Gaussian position masks, priority occlusion and gestalt broadcast in one fused op
(reference/loci-segmented.md §1.1 ``Gaus2D``, §1.2 ``Prioritize``, §8.4 ``GestaltPositionMerge``).

Upstream renders one Gaussian map per slot, occludes it with a grouped 1x1 convolution, stacks the
raw and occluded maps and multiplies them by the gestalt code: every step a pass over memory and
the last one producing the biggest tensor (2·N·C·h·w values). Here one Triton program owns all O
slots of one sample for a tile of pixels and a chunk of channels: it computes the O Gaussians in
registers, the occlusion sum as one [O, O] x [O, pixels] product, and writes only the output.

The backward reads the output gradient once. A first kernel reduces it over channels (map
gradient, partial per channel chunk, into a small fp32 scratch of (chunks, N, h·w)) and over
pixels (gestalt gradient); a second kernel sums the chunks, recomputes the maps and pushes the
gradient through relu, the occlusion weights (priority gradient) and the Gaussian (position and
std gradients, zero where the clamps cut, as ``torch.clamp``).

Conventions beyond DESIGN.md:
- a grid axis of size 1 has the single coordinate 0 (the centre), not the 0/0 of the formula;
- ``slot_gaussian_merge`` without a priority ignores ``with_raw`` (as upstream's merge does);
- an explicit ``min_std`` above ``max_std`` is an error; when the default ``1/min(h, w)`` exceeds
  ``max_std`` (a 1-pixel axis, or a small explicit ``max_std``) the std is ``max_std`` with zero
  gradient (``torch.clamp``'s rule for min > max).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from . import dispatch
from ._common import compute_dtype, flat_pixels, jit, next_pow2, planning_gpu, sm_count, tl  # noqa: F401

__all__ = ["gaussian_maps", "gaussian_maps_reference", "slot_gaussian_merge", "slot_gaussian_merge_reference"]


# ---------------------------------------------------------------- arguments

@dataclass(frozen=True)
class _Geometry:
    """Validated, defaulted scalar arguments shared by both ops."""

    h: int
    w: int
    std_col: int  # column of the std in position, -1 when there is none (k = 2)
    position_limit: float
    min_std: float
    max_std: float


def _check_geometry(position, size, position_limit, min_std, max_std) -> _Geometry:
    dispatch.check_tensor("position", position, ndim=2)
    k = position.shape[1]
    if k not in (2, 3, 4):
        raise ValueError(f"position: expected shape (N, k) with k in {{2, 3, 4}} (x, y[, depth], [std]), "
                         f"received {tuple(position.shape)}")
    h, w = dispatch.check_size("size", size)
    dispatch.check_positive("position_limit", position_limit)
    dispatch.check_positive("max_std", max_std)
    dispatch.check_positive("min_std", min_std, allow_none=True)
    if min_std is None:
        min_std = 1.0 / min(h, w)
    elif min_std > max_std:
        raise ValueError(f"min_std: expected at most max_std ({max_std!r}), received {min_std!r}")
    std_col = {2: -1, 3: 2, 4: 3}[k]
    return _Geometry(h, w, std_col, float(position_limit), float(min_std), float(max_std))


def _check_merge(position, gestalt, priority, num_slots, with_raw) -> int:
    """Check the merge-only arguments; returns the number of samples B = N / num_slots."""
    n = position.shape[0]
    dispatch.check_tensor("gestalt", gestalt, shape=(n, None))
    if priority is not None:
        dispatch.check_tensor("priority", priority, ndim=2)
    dispatch.check_same("position", position, gestalt=gestalt, priority=priority)
    if not isinstance(num_slots, int) or isinstance(num_slots, bool) or num_slots < 1 or n % num_slots:
        raise ValueError(f"num_slots: expected a positive int dividing N = {n} (the rows of position), "
                         f"received {num_slots!r}")
    if not isinstance(with_raw, bool):
        raise ValueError(f"with_raw: expected a bool, received {with_raw!r}")
    b = n // num_slots
    if priority is not None:
        dispatch.check_tensor("priority", priority, shape=(b, num_slots))
    return b


# ---------------------------------------------------------------- reference

def _grid(n: int, like: torch.Tensor) -> torch.Tensor:
    """Pixel-centre coordinates 2i/(n-1) - 1 in [-1, 1]; the single coordinate 0 when n == 1."""
    if n == 1:
        return torch.zeros(1, dtype=like.dtype, device=like.device)
    return torch.arange(n, dtype=like.dtype, device=like.device) * (2.0 / (n - 1)) - 1.0


def _maps(position: torch.Tensor, geo: _Geometry) -> torch.Tensor:
    lim = geo.position_limit
    x = position[:, 0].clamp(-lim, lim)[:, None, None]
    y = position[:, 1].clamp(-lim, lim)[:, None, None]
    std = position[:, geo.std_col] if geo.std_col >= 0 else torch.zeros_like(position[:, 0])
    sy = std.clamp(geo.min_std, geo.max_std)[:, None, None]
    sx = sy * (geo.h / geo.w)
    gx = _grid(geo.w, position)[None, None, :]
    gy = _grid(geo.h, position)[None, :, None]
    return torch.exp(-(gx - x) ** 2 / (2 * sx ** 2) - (gy - y) ** 2 / (2 * sy ** 2)).unsqueeze(1)


def _merge(position, gestalt, priority, geo: _Geometry, num_slots: int, with_raw: bool) -> torch.Tensor:
    g = _maps(position, geo)  # (N, 1, h, w)
    code = gestalt[:, :, None, None]
    if priority is None:
        return g * code
    b, o = priority.shape
    flat = g.reshape(b, o, geo.h * geo.w)
    # weight[b, o, i] = sigmoid(p_i - p_o): how much slot i (if in front) hides slot o.
    off_diag = 1.0 - torch.eye(o, dtype=g.dtype, device=g.device)
    weight = torch.sigmoid(priority[:, None, :] - priority[:, :, None]) * off_diag
    occluded = torch.relu(flat - weight @ flat).reshape_as(g)
    if with_raw:
        return torch.cat([g * code, occluded * code], dim=0)
    return occluded * code


def _maps_fp32(position: torch.Tensor, geo: _Geometry) -> torch.Tensor:
    return _maps(dispatch.upcast(position), geo).to(position.dtype)


def _merge_fp32(position, gestalt, priority, geo: _Geometry, num_slots: int, with_raw: bool) -> torch.Tensor:
    priority = None if priority is None else dispatch.upcast(priority)
    return _merge(dispatch.upcast(position), dispatch.upcast(gestalt), priority, geo, num_slots, with_raw).to(position.dtype)


def gaussian_maps_reference(position: torch.Tensor, size, *, position_limit: float = 1.0,
                            min_std: float | None = None, max_std: float = 0.5) -> torch.Tensor:
    """Plain-PyTorch Gaussian maps (any float dtype, autograd); the oracle for :func:`gaussian_maps`.

    fp16/bf16 inputs compute in fp32 like the kernel: in fp16 the std gradient overflows where the
    Gaussian underflows (0 · inf = NaN).
    """
    geo = _check_geometry(position, size, position_limit, min_std, max_std)
    return _maps_fp32(position, geo)


def slot_gaussian_merge_reference(position: torch.Tensor, gestalt: torch.Tensor,
                                  priority: torch.Tensor | None = None, *, size, num_slots: int,
                                  with_raw: bool = False, position_limit: float = 1.0,
                                  min_std: float | None = None, max_std: float = 0.5) -> torch.Tensor:
    """Plain-PyTorch merge (any float dtype, autograd); the oracle for :func:`slot_gaussian_merge`."""
    geo = _check_geometry(position, size, position_limit, min_std, max_std)
    _check_merge(position, gestalt, priority, num_slots, with_raw)
    return _merge_fp32(position, gestalt, priority, geo, num_slots, with_raw)


# ---------------------------------------------------------------- Triton kernels

@jit
def _slot_gaussians(pos_ptr, s_pn, s_pk, const_ptr, rows, rmask, q, H, W,
                    STD_COL: tl.constexpr, CDT: tl.constexpr):
    """Gaussians of the rows `rows` at flat pixels `q`: G [rows, pixels], plus what the backward needs.

    const_ptr holds [position_limit, min_std, max_std, h/w, step_x, step_y, start_x, start_y] in the
    compute dtype (a tensor, not float arguments, so that fp64 runs keep full precision); the grid
    is start + step·index.
    """
    lim = tl.load(const_ptr).to(CDT)
    lo = tl.load(const_ptr + 1).to(CDT)
    hi = tl.load(const_ptr + 2).to(CDT)
    aspect = tl.load(const_ptr + 3).to(CDT)
    step_x = tl.load(const_ptr + 4).to(CDT)
    step_y = tl.load(const_ptr + 5).to(CDT)
    start_x = tl.load(const_ptr + 6).to(CDT)
    start_y = tl.load(const_ptr + 7).to(CDT)
    base = pos_ptr + rows.to(tl.int64) * s_pn
    x_raw = tl.load(base, mask=rmask, other=0.0).to(CDT)
    y_raw = tl.load(base + s_pk, mask=rmask, other=0.0).to(CDT)
    if STD_COL >= 0:
        s_raw = tl.load(base + STD_COL * s_pk, mask=rmask, other=1.0).to(CDT)
    else:
        s_raw = tl.zeros_like(x_raw)
    x = tl.minimum(tl.maximum(x_raw, -lim), lim)
    y = tl.minimum(tl.maximum(y_raw, -lim), lim)
    sy = tl.minimum(tl.maximum(s_raw, lo), hi)
    sx = sy * aspect
    gx = start_x + (q % W).to(CDT) * step_x
    gy = start_y + (q // W).to(CDT) * step_y
    dx = gx[None, :] - x[:, None]
    dy = gy[None, :] - y[:, None]
    inv_x2 = 1.0 / (sx * sx)
    inv_y2 = 1.0 / (sy * sy)
    g = tl.exp(-0.5 * (dx * dx * inv_x2[:, None] + dy * dy * inv_y2[:, None]))
    g = tl.where(rmask[:, None], g, 0.0)
    # torch.clamp passes the gradient where lo <= v <= hi (inclusive at both ends).
    pass_x = (x_raw >= -lim) & (x_raw <= lim)
    pass_y = (y_raw >= -lim) & (y_raw <= lim)
    pass_s = (s_raw >= lo) & (s_raw <= hi)
    return g, dx, dy, inv_x2, inv_y2, sy, pass_x, pass_y, pass_s


@jit
def _occlusion_weights(prio_ptr, s_rb, s_ro, grp, offs_o, rmask, CDT: tl.constexpr):
    """W [o, i] = sigmoid(p_i - p_o) off the diagonal, 0 on it and on padding rows/columns."""
    p = tl.load(prio_ptr + grp.to(tl.int64) * s_rb + offs_o * s_ro, mask=rmask, other=0.0).to(CDT)
    z = p[None, :] - p[:, None]
    e = tl.exp(-tl.abs(z))  # sigmoid without overflow: priorities come scaled by 250
    wt = tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    keep = rmask[:, None] & rmask[None, :] & (offs_o[:, None] != offs_o[None, :])
    return tl.where(keep, wt, 0.0)


@jit
def _gaussian_fwd_kernel(pos_ptr, s_pn, s_pk, gest_ptr, s_gn, s_gc, prio_ptr, s_rb, s_ro, const_ptr, out_ptr,
                      N, C, H, W, HW, raw_offset,
                      GROUP: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr,
                      CHUNK_C: tl.constexpr, STD_COL: tl.constexpr, HAS_GEST: tl.constexpr,
                      HAS_PRIO: tl.constexpr, WITH_RAW: tl.constexpr, CDT: tl.constexpr):
    """Program (group, pixel tile, channel chunk): out[n, c, q] = map[n, q] · gestalt[n, c].

    A group is the O slots of one sample (with priority) or GROUP consecutive rows (without).
    Without gestalt the map itself is written (C = 1). With WITH_RAW the unoccluded product goes to
    rows [0, N) and the occluded one to rows [N, 2N) (raw_offset = N·C·HW elements further).
    """
    grp = tl.program_id(0)
    offs_o = tl.arange(0, BLOCK_O)
    rows = grp * GROUP + offs_o
    rmask = (offs_o < GROUP) & (rows < N)
    q = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    qmask = q < HW
    g, _, _, _, _, _, _, _, _ = _slot_gaussians(pos_ptr, s_pn, s_pk, const_ptr, rows, rmask, q, H, W,
                                                STD_COL, CDT)
    if HAS_PRIO:
        wt = _occlusion_weights(prio_ptr, s_rb, s_ro, grp, offs_o, rmask, CDT)
        m = tl.maximum(g - tl.dot(wt, g, input_precision="ieee"), 0.0)
    else:
        m = g
    tile_mask = rmask[:, None] & qmask[None, :]
    out_offs = rows.to(tl.int64)[:, None] * C * HW + q[None, :]
    if HAS_GEST:
        c0 = tl.program_id(2).to(tl.int64) * CHUNK_C  # int64: c·HW can pass 2^31 on big maps
        for cc in range(CHUNK_C):
            c = c0 + cc
            code = tl.load(gest_ptr + rows.to(tl.int64) * s_gn + c * s_gc, mask=rmask & (c < C), other=0.0)
            code = code.to(CDT)[:, None]
            ptrs = out_ptr + out_offs + c * HW
            if WITH_RAW:
                tl.store(ptrs, (g * code).to(out_ptr.dtype.element_ty), mask=tile_mask & (c < C))
                tl.store(ptrs + raw_offset, (m * code).to(out_ptr.dtype.element_ty), mask=tile_mask & (c < C))
            else:
                tl.store(ptrs, (m * code).to(out_ptr.dtype.element_ty), mask=tile_mask & (c < C))
    else:
        tl.store(out_ptr + out_offs, m.to(out_ptr.dtype.element_ty), mask=tile_mask)


@jit
def _gaussian_bwd_reduce_kernel(pos_ptr, s_pn, s_pk, gest_ptr, s_gn, s_gc, prio_ptr, s_rb, s_ro, const_ptr,
                             gout_ptr, s_on, s_oc, raw_offset, dgest_ptr, dmap_ptr, dmap_raw_ptr,
                             N, C, H, W, HW,
                             GROUP: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr,
                             CHUNK_C: tl.constexpr, STD_COL: tl.constexpr,
                             HAS_PRIO: tl.constexpr, WITH_RAW: tl.constexpr, CDT: tl.constexpr):
    """Program (group, pixel tile t, channel chunk k): the two reductions of the output gradient.

    dgest[t, n, c]   = Σ_{q in tile} gout[n, c, q] · map[n, q]   (+ the raw half against G)
    dmap[k, n, q]    = Σ_{c in chunk} gout[n, c, q] · gestalt[n, c]
    dmap_raw[k, n, q] likewise for the raw half. All fp32 (or fp64) partial sums; the host or the
    next kernel adds the partials, so no two programs write the same element (no atomics).
    """
    grp = tl.program_id(0)
    tile = tl.program_id(1)
    chunk = tl.program_id(2)
    offs_o = tl.arange(0, BLOCK_O)
    rows = grp * GROUP + offs_o
    rmask = (offs_o < GROUP) & (rows < N)
    q = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    qmask = q < HW
    tile_mask = rmask[:, None] & qmask[None, :]
    g, _, _, _, _, _, _, _, _ = _slot_gaussians(pos_ptr, s_pn, s_pk, const_ptr, rows, rmask, q, H, W,
                                                STD_COL, CDT)
    if HAS_PRIO:
        wt = _occlusion_weights(prio_ptr, s_rb, s_ro, grp, offs_o, rmask, CDT)
        m = tl.maximum(g - tl.dot(wt, g, input_precision="ieee"), 0.0)
    else:
        m = g
    rows64 = rows.to(tl.int64)
    gout_offs = rows64[:, None] * s_on + q[None, :]
    acc = tl.zeros([BLOCK_O, BLOCK_P], dtype=CDT)
    acc_raw = tl.zeros([BLOCK_O, BLOCK_P], dtype=CDT)
    c0 = chunk.to(tl.int64) * CHUNK_C  # int64: c·HW can pass 2^31 on big maps
    for cc in range(CHUNK_C):
        c = c0 + cc
        cmask = rmask & (c < C)
        code = tl.load(gest_ptr + rows64 * s_gn + c * s_gc, mask=cmask, other=0.0).to(CDT)
        if WITH_RAW:
            go_raw = tl.load(gout_ptr + gout_offs + c * s_oc, mask=tile_mask & (c < C), other=0.0).to(CDT)
            go = tl.load(gout_ptr + raw_offset + gout_offs + c * s_oc, mask=tile_mask & (c < C),
                         other=0.0).to(CDT)
            acc_raw += go_raw * code[:, None]
            dcode = tl.sum(go * m + go_raw * g, axis=1)
        else:
            go = tl.load(gout_ptr + gout_offs + c * s_oc, mask=tile_mask & (c < C), other=0.0).to(CDT)
            dcode = tl.sum(go * m, axis=1)
        acc += go * code[:, None]
        tl.store(dgest_ptr + (tile * N + rows64) * C + c, dcode, mask=cmask)
    part_offs = (chunk * N + rows64)[:, None] * HW + q[None, :]
    tl.store(dmap_ptr + part_offs, acc, mask=tile_mask)
    if WITH_RAW:
        tl.store(dmap_raw_ptr + part_offs, acc_raw, mask=tile_mask)


@jit
def _gaussian_bwd_position_kernel(pos_ptr, s_pn, s_pk, prio_ptr, s_rb, s_ro, const_ptr,
                               dmap_ptr, dmap_raw_ptr, s_dk, s_dn, n_chunks, dpos_ptr, dprio_ptr,
                               N, K, H, W, HW,
                               GROUP: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr,
                               STD_COL: tl.constexpr, HAS_PRIO: tl.constexpr, WITH_RAW: tl.constexpr,
                               CDT: tl.constexpr):
    """Program (group, pixel tile t): map gradient -> priority and position gradients of the tile.

    dmap holds n_chunks partial map gradients, chunk k of row n at dmap + k·s_dk + n·s_dn (pixels
    contiguous). Writes dpos[t, n, :K] (zero in the ignored depth column) and dprio[t, n]; the host
    sums over tiles when there is more than one.
    """
    grp = tl.program_id(0)
    tile = tl.program_id(1)
    offs_o = tl.arange(0, BLOCK_O)
    rows = grp * GROUP + offs_o
    rmask = (offs_o < GROUP) & (rows < N)
    q = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    qmask = q < HW
    tile_mask = rmask[:, None] & qmask[None, :]
    g, dx, dy, inv_x2, inv_y2, sy, pass_x, pass_y, pass_s = _slot_gaussians(
        pos_ptr, s_pn, s_pk, const_ptr, rows, rmask, q, H, W, STD_COL, CDT)
    g = tl.where(qmask[None, :], g, 0.0)  # padding pixels must not enter the pixel sums below
    rows64 = rows.to(tl.int64)
    offs = rows64[:, None] * s_dn + q[None, :]
    dmap = tl.zeros([BLOCK_O, BLOCK_P], dtype=CDT)
    dmap_raw = tl.zeros([BLOCK_O, BLOCK_P], dtype=CDT)
    d_ptrs = dmap_ptr + offs
    r_ptrs = dmap_raw_ptr + offs
    for _ in range(n_chunks):  # advancing 64-bit pointers: k·s_dk could overflow int32
        dmap += tl.load(d_ptrs, mask=tile_mask, other=0.0).to(CDT)
        d_ptrs += s_dk
        if WITH_RAW:
            dmap_raw += tl.load(r_ptrs, mask=tile_mask, other=0.0).to(CDT)
            r_ptrs += s_dk
    if HAS_PRIO:
        wt = _occlusion_weights(prio_ptr, s_rb, s_ro, grp, offs_o, rmask, CDT)
        pre = g - tl.dot(wt, g, input_precision="ieee")
        d_pre = tl.where(pre > 0.0, dmap, 0.0)  # relu'(0) = 0, as torch
        dg = d_pre - tl.dot(tl.trans(wt), d_pre, input_precision="ieee") + dmap_raw
        # dL/dW[o, i] = -Σ_q d_pre[o, q] g[i, q]; W = sigmoid(p_i - p_o) gives dp_i += z, dp_o -= z.
        dz = -tl.dot(d_pre, tl.trans(g), input_precision="ieee") * wt * (1.0 - wt)
        dprio = tl.sum(dz, axis=0) - tl.sum(dz, axis=1)
        tl.store(dprio_ptr + tile * N + rows, dprio, mask=rmask)
    else:
        dg = dmap
    dgg = dg * g
    d_x = tl.sum(dgg * dx, axis=1) * inv_x2
    d_y = tl.sum(dgg * dy, axis=1) * inv_y2
    # dG/dsy = G/sy · ((gx-x)²/sx² + (gy-y)²/sy²), since sx = sy·h/w scales with sy.
    d_s = tl.sum(dgg * (dx * dx * inv_x2[:, None] + dy * dy * inv_y2[:, None]), axis=1) / sy
    out = dpos_ptr + (tile * N + rows64) * K
    tl.store(out, tl.where(pass_x, d_x, 0.0), mask=rmask)
    tl.store(out + 1, tl.where(pass_y, d_y, 0.0), mask=rmask)
    if STD_COL == 3:
        tl.store(out + 2, tl.zeros_like(d_x), mask=rmask)  # depth column: not used, zero gradient
    if STD_COL >= 0:
        tl.store(out + STD_COL, tl.where(pass_s, d_s, 0.0), mask=rmask)


# ---------------------------------------------------------------- launch planning

@dataclass(frozen=True)
class _Plan:
    group: int     # rows per program (the O slots of a sample with priority)
    block_o: int   # group padded to a power of two (>= 16 with priority: tl.dot's minimum)
    block_p: int   # pixels per program
    n_groups: int
    n_tiles: int
    chunk_c: int   # channels per program
    n_chunks: int
    num_warps: int = 4           # forward and channel-reduction kernels
    position_warps: int = 4      # the backward's occlusion/position kernel (three small tl.dot)


def _plan(n: int, c: int, hw: int, num_slots: int, has_prio: bool, device: torch.device) -> _Plan:
    interpret = device.type != "cuda" and not planning_gpu()
    if has_prio:
        group, block_o = num_slots, max(16, next_pow2(num_slots))
    else:
        # Rows are independent: take several short maps per program, one row of a long map.
        group = min(next_pow2(n), 16) if interpret else max(1, min(16, 1024 // next_pow2(hw)))
        block_o = next_pow2(group)
    # Tile elements per program: the interpreter wants few, big programs (~1.5 ms each); the GPU
    # wants many small ones. [16 slots, 64 pixels] compiles to ~72 registers a thread at 4 warps
    # with 16-byte stores (sm_90), so ~7 programs fit an SM and every launch fills the GPU.
    budget = 16384 if interpret else (1024 if has_prio else 2048)
    block_p = min(next_pow2(hw), max(16, budget // block_o))
    if has_prio:
        block_p = max(block_p, 16)  # tl.dot needs every dimension >= 16
        if block_o >= 32 and not interpret:
            # [32 slots, 32 pixels] made the channel reduction spill 4 B at 4 warps (bf16/fp16,
            # triton 3.7.1) and at 8 warps (fp32, triton 3.6.0): sm_90, compile gate --shapes all.
            block_p = 16
    n_groups = -(-n // group)
    n_tiles = -(-hw // block_p)
    if interpret:
        chunk_c = max(c, 1)
    else:
        # Split channels until there are about 4 programs per SM; each chunk adds an (N, h·w) fp32
        # scratch to the backward, so keep chunks of at least 8 channels.
        target = 4 * sm_count(device)
        want = max(1, -(-target // (n_groups * n_tiles)))
        n_chunks = max(1, min(want, c // 8))
        chunk_c = -(-c // n_chunks)
    # The position kernel holds [O, O] and several [O, pixels] tiles at once: 8 warps keep it
    # under ~100 registers a thread (4 warps need ~170 at O = 16, 64 pixels; sm_90 compile).
    position_warps = 8 if has_prio and not interpret else 4
    return _Plan(group, block_o, block_p, n_groups, n_tiles, chunk_c, -(-max(c, 1) // chunk_c),
                 position_warps=position_warps)


@functools.lru_cache(maxsize=64)
def _constants(geo: _Geometry, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The kernels' scalar parameters as a tensor in the compute dtype (cached: no copy per call)."""
    def axis(n: int) -> tuple[float, float]:  # (step, start); a 1-pixel axis sits at 0
        return (2.0 / (n - 1), -1.0) if n > 1 else (0.0, 0.0)

    (step_x, start_x), (step_y, start_y) = axis(geo.w), axis(geo.h)
    values = [geo.position_limit, geo.min_std, geo.max_std, geo.h / geo.w, step_x, step_y, start_x, start_y]
    return torch.tensor(values, dtype=dtype, device=device)


# ---------------------------------------------------------------- autograd

class _GaussianFunction(torch.autograd.Function):
    """Fused forward/backward of ``slot_gaussian_merge`` (gestalt given) and ``gaussian_maps`` (None)."""

    @staticmethod
    def forward(ctx, position, gestalt, priority, geo: _Geometry, num_slots: int, with_raw: bool):
        n, k = position.shape
        c = gestalt.shape[1] if gestalt is not None else 1
        hw = geo.h * geo.w
        has_prio = priority is not None
        with_raw = with_raw and has_prio
        plan = _plan(n, c, hw, num_slots, has_prio, position.device)
        cdt, ctorch = compute_dtype(position.dtype)
        consts = _constants(geo, ctorch, position.device)
        rows_out = 2 * n if with_raw else n
        out = dispatch.empty((rows_out, c, geo.h, geo.w), dtype=position.dtype, device=position.device)
        gest = gestalt if gestalt is not None else position  # unread placeholder when HAS_GEST is off
        prio = priority if has_prio else position
        grid = (plan.n_groups, plan.n_tiles, plan.n_chunks)
        _gaussian_fwd_kernel[grid](
            position, position.stride(0), position.stride(1), gest, gest.stride(0), gest.stride(1),
            prio, prio.stride(0), prio.stride(1), consts, out, n, c, geo.h, geo.w, hw, n * c * hw,
            GROUP=plan.group, BLOCK_O=plan.block_o, BLOCK_P=plan.block_p, CHUNK_C=plan.chunk_c,
            STD_COL=geo.std_col, HAS_GEST=gestalt is not None, HAS_PRIO=has_prio, WITH_RAW=with_raw, CDT=cdt,
            num_warps=plan.num_warps)
        ctx.save_for_backward(position, gestalt, priority)
        ctx.geo, ctx.plan, ctx.with_raw = geo, plan, with_raw
        return out

    @staticmethod
    @once_differentiable  # the backward kernels are not themselves differentiable
    def backward(ctx, gout):
        position, gestalt, priority = ctx.saved_tensors
        geo, plan, with_raw = ctx.geo, ctx.plan, ctx.with_raw
        n, k = position.shape
        hw = geo.h * geo.w
        dev = position.device
        has_prio = priority is not None
        cdt, ctorch = compute_dtype(position.dtype)
        consts = _constants(geo, ctorch, dev)
        gout = flat_pixels(gout)  # (rows, C, h·w), pixels contiguous
        prio = priority if has_prio else position
        common = dict(GROUP=plan.group, BLOCK_O=plan.block_o, BLOCK_P=plan.block_p, STD_COL=geo.std_col,
                      HAS_PRIO=has_prio, WITH_RAW=with_raw, CDT=cdt)
        dgest = None
        if gestalt is not None:
            c = gestalt.shape[1]
            dgest_part = dispatch.empty((plan.n_tiles, n, c), dtype=ctorch, device=dev)
            dmap = dispatch.empty((plan.n_chunks, n, hw), dtype=ctorch, device=dev)
            dmap_raw = dispatch.empty((plan.n_chunks, n, hw), dtype=ctorch, device=dev) if with_raw else dmap
            _gaussian_bwd_reduce_kernel[(plan.n_groups, plan.n_tiles, plan.n_chunks)](
                position, position.stride(0), position.stride(1), gestalt, gestalt.stride(0), gestalt.stride(1),
                prio, prio.stride(0), prio.stride(1), consts, gout, gout.stride(0), gout.stride(1),
                n * gout.stride(0), dgest_part, dmap, dmap_raw, n, c, geo.h, geo.w, hw,
                CHUNK_C=plan.chunk_c, num_warps=plan.num_warps, **common)
            dgest = (dgest_part[0] if plan.n_tiles == 1 else dgest_part.sum(0)).to(gestalt.dtype)
            n_chunks, s_dk, s_dn = plan.n_chunks, n * hw, hw
        else:
            # gaussian_maps: the output gradient is the map gradient, one "chunk" read in place.
            dmap = dmap_raw = gout
            n_chunks, s_dk, s_dn = 1, 0, gout.stride(0)
        dpos_part = dispatch.empty((plan.n_tiles, n, k), dtype=ctorch, device=dev)
        dprio_part = dispatch.empty((plan.n_tiles, n), dtype=ctorch, device=dev) if has_prio else dpos_part
        _gaussian_bwd_position_kernel[(plan.n_groups, plan.n_tiles)](
            position, position.stride(0), position.stride(1), prio, prio.stride(0), prio.stride(1), consts,
            dmap, dmap_raw, s_dk, s_dn, n_chunks, dpos_part, dprio_part, n, k, geo.h, geo.w, hw,
            num_warps=plan.position_warps, **common)
        dpos = (dpos_part[0] if plan.n_tiles == 1 else dpos_part.sum(0)).to(position.dtype)
        dprio = None
        if has_prio:
            dprio = (dprio_part[0] if plan.n_tiles == 1 else dprio_part.sum(0)).view_as(priority)
            dprio = dprio.to(priority.dtype)
        return dpos, dgest, dprio, None, None, None


# ---------------------------------------------------------------- public ops

def gaussian_maps(position: torch.Tensor, size, *, position_limit: float = 1.0,
                  min_std: float | None = None, max_std: float = 0.5) -> torch.Tensor:
    """Render one unnormalised Gaussian (peak 1) per row of ``position`` on an (h, w) grid.

    Args:
        position: (N, k), k in {2, 3, 4}: x, y in [-1, 1] grid units; the std is column 2 (k = 3)
            or column 3 (k = 4, column 2 is depth and ignored), 0 for k = 2. fp32, fp16, bf16 or fp64.
        size: (h, w) of the grid, pixel centres at 2i/(n-1) - 1 (0 for a 1-pixel axis).
        position_limit: x and y are clamped to ±position_limit.
        min_std, max_std: the std (σ_y; σ_x = σ_y·h/w) is clamped to [min_std, max_std];
            min_std defaults to 1/min(h, w).

    Returns:
        (N, 1, h, w) in the dtype of ``position``; differentiable w.r.t. ``position``.
    """
    geo = _check_geometry(position, size, position_limit, min_std, max_std)
    if position.shape[0] == 0 or not dispatch.use_triton(position):
        return _maps_fp32(position, geo)
    return _GaussianFunction.apply(position, None, None, geo, 1, False)


def slot_gaussian_merge(position: torch.Tensor, gestalt: torch.Tensor, priority: torch.Tensor | None = None, *,
                        size, num_slots: int, with_raw: bool = False, position_limit: float = 1.0,
                        min_std: float | None = None, max_std: float = 0.5) -> torch.Tensor:
    """Gaussian map per slot, occluded by higher-priority slots, times the slot's gestalt code.

    Args:
        position: (N, k) slot positions as in :func:`gaussian_maps`, N = B·num_slots, row b·O + o
            for slot o of sample b.
        gestalt: (N, C) codes; output channel c of row n is map[n] · gestalt[n, c].
        priority: (B, O) final priority logits (the caller scales and adds noise), or None for no
            occlusion. Slot o's map becomes relu(G_o - Σ_{i≠o} sigmoid(p_i - p_o) · G_i).
        size: (h, w) of the maps.
        num_slots: O, which must divide N.
        with_raw: with a priority, return [unoccluded ; occluded] stacked on dim 0 (2N rows).
            Ignored without a priority (as upstream).
        position_limit, min_std, max_std: clamps, as in :func:`gaussian_maps`.

    Returns:
        (N, C, h, w), or (2N, C, h, w) with ``with_raw`` and a priority; dtype of the inputs.
        Differentiable w.r.t. position, gestalt and priority.
    """
    geo = _check_geometry(position, size, position_limit, min_std, max_std)
    _check_merge(position, gestalt, priority, num_slots, with_raw)
    tensors = [t for t in (position, gestalt, priority) if t is not None]
    if position.shape[0] == 0 or gestalt.shape[1] == 0 or not dispatch.use_triton(*tensors):
        return _merge_fp32(position, gestalt, priority, geo, num_slots, with_raw)
    return _GaussianFunction.apply(position, gestalt, priority, geo, num_slots, with_raw)
