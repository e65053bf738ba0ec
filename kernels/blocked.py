"""The fast 3DNA path for CPU and CUDA: tiles of queries against the keys their windows reach.

The query grid is cut into boxes of (t_s, t_h, t_w) positions. Each box gathers exactly the
keys that at least one of its queries may see (its "key slab", padded to a common length),
then runs one batched SDPA over all boxes with a small per-box mask. Work and memory grow
with N × slab, not N²; the plan (gather indices and masks) depends only on the grid shapes,
so it is built once per shape and cached.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.mask import NO_WRAP, Extent, Grid, axis_visibility


@dataclass(frozen=True)
class BlockPlan:
    """Precomputed gather indices and masks for one (grids, extent, causal, globals) combination."""
    q_index: torch.Tensor      # [n_tiles * tile_q] long: query gathered into each tile slot
    q_inverse: torch.Tensor    # [Nq] long: where each query's output lands in the tiled layout
    kv_index: torch.Tensor     # [n_tiles * tile_k] long: key (globals appended after Nk) per slot
    mask: torch.Tensor         # [1, n_tiles, tile_q, tile_k] bool (4-D so CPU SDPA takes its flash kernel)
    n_tiles: int
    tile_q: int
    tile_k: int


def _axis_tiles(n_q: int, n_k: int, e: int | None, t: int, wrap: bool):
    """Cut one axis into tiles of t queries and find the keys each tile reaches on that axis.

    Returns query ids [T, t] and key ids [T, L] (-1 where a tile overhangs or has fewer keys)
    and the visibility between them [T, t, L].
    """
    n_tiles = -(-n_q // t)
    q_ids = torch.arange(n_tiles * t).view(n_tiles, t)
    q_valid = q_ids < n_q
    vis = axis_visibility(n_q, n_k, e, wrap=wrap)[q_ids.clamp(max=n_q - 1)] & q_valid[..., None]  # [T, t, n_k]
    seen = vis.any(1)
    slab = int(seen.sum(1).max())
    k_ids = torch.argsort((~seen).to(torch.int8), dim=1, stable=True)[:, :slab]  # reached keys first, in order
    k_valid = torch.gather(seen, 1, k_ids)
    vis = torch.gather(vis, 2, k_ids[:, None, :].expand(-1, t, -1))
    return q_ids.masked_fill(~q_valid, -1), k_ids.masked_fill(~k_valid, -1), vis


def _estimated_cost(q_grid: Grid, kv_grid: Grid, extent: Extent, tile: tuple[int, int, int], wrap) -> float:
    """Scores computed (tiles × tile_q × slab) plus a per-tile overhead, from per-axis slabs."""
    n_tiles, tile_q, slab = 1, 1, 1
    for n_q, n_k, e, t, w in zip(q_grid, kv_grid, extent, tile, wrap):
        q_ids, k_ids, _ = _axis_tiles(n_q, n_k, e, t, w)
        n_tiles, tile_q, slab = n_tiles * q_ids.shape[0], tile_q * t, slab * k_ids.shape[1]
    return n_tiles * (tile_q * slab + 64 * (tile_q + slab))


def _tile_candidates(n: int) -> list[int]:
    return sorted({t for t in (1, 2, 3, 4, 5, 6, 7, 8, 11, 16) if t <= n} | {n})


def choose_tile(q_grid: Grid, kv_grid: Grid, extent: Extent, wrap=NO_WRAP) -> tuple[int, int, int]:
    """The query box minimising the estimated cost (small search: a few sizes per axis)."""
    candidates = itertools.product(*(_tile_candidates(n) for n in q_grid))
    return min(candidates, key=lambda tile: _estimated_cost(q_grid, kv_grid, extent, tile, wrap))


def _outer(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, op):
    """Combine per-axis [Ta, ...] tensors into [Ta,Tb,Tc, ...a,...b,...c] (one trailing dim each)."""
    return op(op(a[:, None, None, :, None, None], b[None, :, None, None, :, None]), c[None, None, :, None, None, :])


@torch.compiler.disable  # built once per shape, outside any compiled graph
@functools.lru_cache(maxsize=64)
def build_plan(q_grid: Grid, kv_grid: Grid, extent: Extent, causal: bool, n_global: int,
               device: torch.device, tile: tuple[int, int, int] | None = None, wrap=NO_WRAP) -> BlockPlan:
    tile = tile or choose_tile(q_grid, kv_grid, extent, wrap)
    (qs, ks, vs), (qh, kh, vh), (qw, kw, vw) = (
        _axis_tiles(nq, nk, e, t, w) for nq, nk, e, t, w in zip(q_grid, kv_grid, extent, tile, wrap))
    (Hq, Wq), (Hk, Wk) = q_grid[1:], kv_grid[1:]
    n_q, n_k = q_grid[0] * Hq * Wq, kv_grid[0] * Hk * Wk
    # Flat raster ids per tile, [n_tiles, tile_q] and [n_tiles, slab]; invalid where any axis is -1.
    q_flat = _outer(qs * Hq * Wq, qh * Wq, qw, torch.add)
    q_valid = _outer(qs >= 0, qh >= 0, qw >= 0, torch.logical_and)
    k_flat = _outer(ks * Hk * Wk, kh * Wk, kw, torch.add)
    k_valid = _outer(ks >= 0, kh >= 0, kw >= 0, torch.logical_and)
    n_tiles = q_flat.shape[0] * q_flat.shape[1] * q_flat.shape[2]
    q_flat, q_valid = q_flat.reshape(n_tiles, -1), q_valid.reshape(n_tiles, -1)
    k_flat, k_valid = k_flat.reshape(n_tiles, -1), k_valid.reshape(n_tiles, -1)
    # Separable visibility: [Ts,ts,Ls] x [Th,th,Lh] x [Tw,tw,Lw] → [n_tiles, tile_q, slab].
    vis = (vs[:, None, None, :, None, None, :, None, None] & vh[None, :, None, None, :, None, None, :, None]
           & vw[None, None, :, None, None, :, None, None, :]).reshape(n_tiles, q_flat.shape[1], -1)
    vis &= k_valid[:, None, :]
    if causal:
        vis &= k_flat[:, None, :] < q_flat[:, :, None]
    # Drop slab keys no query of the tile sees (causal cuts about half), then pad to the longest.
    seen = vis.any(1)
    slab = int(seen.sum(1).max())
    order = torch.argsort((~seen).to(torch.int8), dim=1, stable=True)[:, :slab]
    slot_valid = torch.gather(seen, 1, order)
    mask = torch.gather(vis, 2, order[:, None, :].expand(-1, vis.shape[1], -1))
    kv_index = torch.gather(k_flat, 1, order).masked_fill(~slot_valid, 0)
    if n_global:  # global keys sit after the grid keys in k/v, and first in every tile
        kv_index = torch.cat([torch.arange(n_k, n_k + n_global).expand(n_tiles, -1), kv_index], 1)
        mask = torch.cat([torch.ones(n_tiles, mask.shape[1], n_global, dtype=torch.bool), mask], 2)
    # Overhanging query slots see everything (never a fully masked row); their output is dropped.
    mask |= ~q_valid[:, :, None]
    q_index = q_flat.masked_fill(~q_valid, 0).reshape(-1)
    q_inverse = torch.empty(n_q, dtype=torch.long)
    q_inverse[q_flat[q_valid]] = torch.arange(q_flat.numel()).view_as(q_flat)[q_valid]
    return BlockPlan(q_index.to(device), q_inverse.to(device), kv_index.reshape(-1).to(device), mask[None].to(device),
                     n_tiles, q_flat.shape[1], mask.shape[2])


def blocked_attention(q, k, v, q_grid: Grid, kv_grid: Grid, extent: Extent, causal: bool,
                      k_global=None, v_global=None, tile=None, wrap=NO_WRAP) -> torch.Tensor:
    """q [B,h,Nq,D], k/v [B,h,Nk,D], optional k/v_global [B,h,G,D] → [B,h,Nq,D]."""
    B, H, _, D = q.shape
    n_global = 0 if k_global is None else k_global.shape[2]
    plan = build_plan(tuple(q_grid), tuple(kv_grid), tuple(extent), causal, n_global, q.device,
                      None if tile is None else tuple(tile), tuple(wrap))
    if n_global:
        k, v = torch.cat([k, k_global], 2), torch.cat([v, v_global], 2)  # globals after the grid keys
    q_t = q.index_select(2, plan.q_index).view(B * H, plan.n_tiles, plan.tile_q, D)
    k_t = k.index_select(2, plan.kv_index).view(B * H, plan.n_tiles, plan.tile_k, D)
    v_t = v.index_select(2, plan.kv_index).view(B * H, plan.n_tiles, plan.tile_k, D)
    out = F.scaled_dot_product_attention(q_t, k_t, v_t, attn_mask=plan.mask)  # [B*h, tiles, tile_q, D]
    # CUDA's SDPA may return a non-contiguous layout, hence reshape
    return out.reshape(B, H, plan.n_tiles * plan.tile_q, D).index_select(2, plan.q_inverse)
