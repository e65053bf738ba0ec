"""Which keys each query reads, and which queries read each key: the index tables of the fused 3DNA kernel.

A 3DNA window holds a few dozen keys at most, so the fused kernel (kernels/fused.py) does not cut the grid
into dense tiles: every query reads exactly the keys in its own window, listed in `keys`, and the backward
pass reads, for every key, exactly the queries whose window holds it, listed in `readers`. The tables come
from the per-axis rule of kernels/mask.py (`axis_visibility`), so they hold every case the definition has:
cross-grid projections, whole axes, windows cut at the border or wrapped, causal order. Global keys are not
in the tables: every query reads them.

The kernel takes queries (and, backward, keys) in a 3D-tiled order: a program's block of queries is a compact
box of the grid, so the key rows its windows read overlap and stay in cache. The order is one cached index
the kernel reads through; q, k and v are never permuted in memory.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from kernels.mask import NO_WRAP, Extent, Grid, axis_visibility

TILE = (1, 8, 8)
"""The (time, row, column) box of queries one program takes (64 at a block of 64): at extent (3, 3, 3) its
windows read a 3×10×10 box of keys, 75 KiB of K and V rows in bf16 at head size 64."""


@dataclass(frozen=True)
class WindowPlan:
    """Index tables for one (grids, extent, causal, wrap) combination; int32, -1 = an unused slot."""
    q_order: torch.Tensor  # [Nq] query raster ids in tiled order
    keys: torch.Tensor     # [Nq, slots] raster ids of the grid keys each query sees, ascending
    k_order: torch.Tensor  # [Nk] key raster ids in tiled order
    readers: torch.Tensor  # [Nk, n_readers] raster ids of the queries that see each key, ascending

    @property
    def slots(self) -> int:
        return self.keys.shape[1]


def _axis_keys(n_q: int, n_k: int, e: int | None, wrap: bool) -> torch.Tensor:
    """[n_q, L] the key coordinates each query coordinate sees on one axis, ascending, -1 after the last."""
    vis = axis_visibility(n_q, n_k, e, wrap=wrap)
    width = int(vis.sum(1).max())
    order = torch.argsort((~vis).to(torch.int8), dim=1, stable=True)[:, :width]  # seen keys first, in order
    return order.masked_fill(~torch.gather(vis, 1, order), -1)


def tiled_order(grid: Grid) -> torch.Tensor:
    """[N] raster ids sorted by the TILE box that holds them, boxes in raster order, raster order inside."""
    S, H, W = grid
    idx = torch.arange(S * H * W)
    s, h, w = idx // (H * W), idx // W % H, idx % W
    ts, th, tw = TILE
    n_h, n_w = -(-H // th), -(-W // tw)
    box = (s // ts * n_h + h // th) * n_w + w // tw
    return torch.argsort(box * (S * H * W) + idx)


def _compact(ids: torch.Tensor) -> torch.Tensor:
    """Rows of ids with -1 holes → the valid ids first (ascending), cut to the longest row (at least one)."""
    ids = torch.where(ids >= 0, ids, torch.iinfo(ids.dtype).max).sort(1).values
    width = max(int((ids != torch.iinfo(ids.dtype).max).sum(1).max()), 1)  # no empty table for the kernel
    ids = ids[:, :width]
    return ids.masked_fill(ids == torch.iinfo(ids.dtype).max, -1)


@torch.compiler.disable  # built once per shape, outside any compiled graph
@functools.lru_cache(maxsize=64)
def build_window_plan(q_grid: Grid, kv_grid: Grid, extent: Extent, causal: bool, device: torch.device,
                      wrap=NO_WRAP) -> WindowPlan:
    (Sq, Hq, Wq), (Sk, Hk, Wk) = q_grid, kv_grid
    s, h, w = (_axis_keys(nq, nk, e, r) for nq, nk, e, r in zip(q_grid, kv_grid, extent, wrap))
    n_q, n_k = Sq * Hq * Wq, Sk * Hk * Wk
    q = torch.arange(n_q)
    qs, qh, qw = q // (Hq * Wq), q // Wq % Hq, q % Wq
    # The window is a product of per-axis windows: [Nq, Ls, Lh, Lw] raster ids, -1 where any axis has none.
    ks, kh, kw = s[qs][:, :, None, None], h[qh][:, None, :, None], w[qw][:, None, None, :]
    keys = ks * (Hk * Wk) + kh * Wk + kw
    keys = keys.masked_fill((ks < 0) | (kh < 0) | (kw < 0), -1).reshape(n_q, -1)
    if causal:
        keys = keys.masked_fill(keys >= q[:, None], -1)
    keys = _compact(keys)
    # Invert: the (key, query) pairs sorted by key, each key's queries in a row.
    key_of_pair, query_of_pair = keys.reshape(-1), q.repeat_interleave(keys.shape[1])
    valid = key_of_pair >= 0
    key_of_pair, query_of_pair = key_of_pair[valid], query_of_pair[valid]
    by_key = torch.argsort(key_of_pair * n_q + query_of_pair)
    key_of_pair, query_of_pair = key_of_pair[by_key], query_of_pair[by_key]
    counts = torch.bincount(key_of_pair, minlength=n_k)
    start = torch.cumsum(counts, 0) - counts
    readers = torch.full((n_k, max(int(counts.max()), 1)), -1, dtype=torch.long)
    readers[key_of_pair, torch.arange(len(key_of_pair)) - start[key_of_pair]] = query_of_pair
    return WindowPlan(*(t.to(torch.int32).contiguous().to(device)
                        for t in (tiled_order(q_grid), keys, tiled_order(kv_grid), readers)))
