"""The CUDA 3DNA path: FlexAttention with a block-sparse mask built once per grid shape.

The mask_mod looks the canonical per-axis windows up (kernels/mask.py's `axis_visibility`, small
[n_q, n_k] tables per axis), so FlexAttention skips every (query block, key block) pair with no
visible key. Global keys are placed first. Blocks are FlexAttention's default 128 tokens (about 6
rows of a 21×21 frame). On an H200 (torch 2.11) smaller blocks did not compile: 64-token blocks
fail against the kernel's 128-wide tiles, and with 64-wide tiles passed as `kernel_options`
inductor found no valid configuration. Compiled flex needs head sizes of at least 16. On CPU,
FlexAttention runs forward only (tests use that).
"""
from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from kernels.mask import NO_WRAP, Extent, Grid, axis_visibility


@functools.lru_cache(maxsize=64)
def build_block_mask(q_grid: Grid, kv_grid: Grid, extent: Extent, causal: bool, n_global: int,
                     device: torch.device, wrap=NO_WRAP) -> BlockMask:
    """BlockMask over [G globals, Nk grid keys] for queries in raster order."""
    (_, Hq, Wq), (_, Hk, Wk) = q_grid, kv_grid
    # The canonical per-axis windows (kernels/mask.py), looked up per (query, key) coordinate pair.
    s, h, w = (axis_visibility(nq, nk, e, device, r) for nq, nk, e, r in zip(q_grid, kv_grid, extent, wrap))

    def mask_mod(b, h_, q_idx, kv_idx):
        k = (kv_idx - n_global).clamp(min=0)
        near = (s[q_idx // (Hq * Wq), k // (Hk * Wk)] & h[q_idx // Wq % Hq, k // Wk % Hk] & w[q_idx % Wq, k % Wk])
        if causal:
            near = near & (k < q_idx)
        return (kv_idx < n_global) | ((kv_idx >= n_global) & near)

    return create_block_mask(mask_mod, None, None, q_grid[0] * Hq * Wq, n_global + kv_grid[0] * Hk * Wk,
                             device=device)


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
