"""The CUDA 3DNA path: FlexAttention with a block-sparse mask built once per grid shape.

The mask_mod reads the canonical rule (DESIGN.md) from small per-token lookup tables, so
FlexAttention skips every (query block, key block) pair with no visible key. Global keys are
placed first. Blocks are FlexAttention's default 128 tokens (about 6 rows of a 21×21 frame).
On an H200 (torch 2.11) smaller blocks did not compile: 64-token blocks fail against the
kernel's 128-wide tiles, and with 64-wide tiles passed as `kernel_options` inductor found no
valid configuration. Compiled flex needs head sizes of at least 16. On CPU, FlexAttention runs
forward only (tests use that).
"""
from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from kernels.mask import NO_WRAP, Extent, Grid


@functools.lru_cache(maxsize=64)
def build_block_mask(q_grid: Grid, kv_grid: Grid, extent: Extent, causal: bool, n_global: int,
                     device: torch.device, wrap=NO_WRAP) -> BlockMask:
    """BlockMask over [G globals, Nk grid keys] for queries in raster order."""
    (Sq, Hq, Wq), (Sk, Hk, Wk) = q_grid, kv_grid
    q = torch.arange(Sq * Hq * Wq, device=device)
    # Floor projection of each query onto the key grid, per axis.
    centre = (q // (Hq * Wq) * Sk // Sq, q // Wq % Hq * Hk // Hq, q % Wq * Wk // Wq)
    radius = [n if e is None else (e - 1) // 2 for e, n in zip(extent, kv_grid)]

    def within(k_axis, axis, q_idx):
        distance = (k_axis - centre[axis][q_idx]).abs()
        if wrap[axis]:  # the short way round
            distance = torch.minimum(distance, kv_grid[axis] - distance)
        return distance <= radius[axis]

    def mask_mod(b, h, q_idx, kv_idx):
        k = kv_idx - n_global
        k_s, k_h, k_w = k // (Hk * Wk), k // Wk % Hk, k % Wk
        near = within(k_s, 0, q_idx) & within(k_h, 1, q_idx) & within(k_w, 2, q_idx)
        if causal:
            near = near & (k < q_idx)
        return (kv_idx < n_global) | ((k >= 0) & near)

    return create_block_mask(mask_mod, None, None, Sq * Hq * Wq, n_global + Sk * Hk * Wk, device=device)


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def flex_nearby_attention(q, k, v, q_grid: Grid, kv_grid: Grid, extent: Extent, causal: bool,
                          k_global=None, v_global=None, wrap=NO_WRAP):
    """Same contract as `nearby_attention`; compiled FlexAttention on CUDA, eager elsewhere."""
    if q.is_cuda and q.shape[-1] < 16:
        raise ValueError(f"compiled FlexAttention needs a head size of at least 16, got {q.shape[-1]}; "
                         f"use backend='blocked'")
    n_global = 0 if k_global is None else k_global.shape[2]
    if n_global:
        k, v = torch.cat([k_global, k], 2), torch.cat([v_global, v], 2)
    block_mask = build_block_mask(tuple(q_grid), tuple(kv_grid), tuple(extent), causal, n_global, q.device,
                                  tuple(wrap))
    attend = _compiled_flex() if q.is_cuda else flex_attention
    return attend(q, k, v, block_mask=block_mask)
