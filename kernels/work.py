"""How much attention work each 3DNA backend does, counted without running it (no GPU needed).

A backend computes a score for every query-key pair inside the tiles it runs, visible or not: the dense
reference all Nq × (G + Nk) pairs, `blocked` its tiles × tile queries × slab keys (padding and masked
pairs included), FlexAttention 128 × 128 for every (query block, key block) pair its block mask keeps,
`fused` every query's window slots (its table's width, empty slots included) and the global keys.
Divided by the visible pairs (those the canonical mask allows), this multiple is the factor by which a
backend's arithmetic exceeds the ideal; for the tile-based backends, compute-bound on a GPU, it predicts
their speed (the fused kernel's scores run on the vector units, so its speed has to be measured).
tools/bench_3dna.py --work prints it.
"""
from __future__ import annotations

import torch

from kernels.attention import BACKENDS
from kernels.blocked import build_plan
from kernels.mask import NO_WRAP, axis_visibility
from kernels.neighbours import build_window_plan

CPU = torch.device("cpu")
FLEX_BLOCK = 128
"""FlexAttention's block size (kernels/flex.py keeps its default)."""


def visible_pairs(q_grid, kv_grid, extent, causal: bool, n_global: int, wrap=NO_WRAP) -> int:
    """Query-key pairs the canonical 3DNA mask allows (every query sees each global key), counted per axis:
    the window is a product of per-axis windows, and a causal key precedes its query in raster order when it
    does on the first axis where they differ."""
    if causal and tuple(q_grid) != tuple(kv_grid):
        raise ValueError("a causal mask needs the query and key grids to be one grid")
    seen, before, itself = [], [], []
    for n_q, n_k, e, w in zip(q_grid, kv_grid, extent, wrap):
        vis = axis_visibility(n_q, n_k, e, wrap=w)
        seen.append(vis.sum(1).double())
        if causal:
            before.append(vis.tril(-1).sum(1).double())
            itself.append(vis.diagonal().double())
    (vs, vh, vw) = seen
    if causal:
        (bs, bh, bw), (es, eh, _) = before, itself
        count = (bs[:, None, None] * vh[None, :, None] * vw[None, None, :]
                 + es[:, None, None] * (bh[None, :, None] * vw[None, None, :] + eh[None, :, None] * bw[None, None, :]))
    else:
        count = vs[:, None, None] * vh[None, :, None] * vw[None, None, :]
    return int(count.sum()) + n_global * _size(q_grid)


def computed_pairs(backend: str, q_grid, kv_grid, extent, causal: bool, n_global: int, wrap=NO_WRAP) -> int:
    """Query-key pairs whose score `backend` computes."""
    q_grid, kv_grid, extent, wrap = tuple(q_grid), tuple(kv_grid), tuple(extent), tuple(wrap)
    if backend == "reference":
        return _size(q_grid) * (n_global + _size(kv_grid))
    if backend == "blocked":
        plan = build_plan(q_grid, kv_grid, extent, causal, n_global, CPU, None, wrap)
        return plan.n_tiles * plan.tile_q * plan.tile_k
    if backend == "flex":
        return flex_blocks(q_grid, kv_grid, extent, causal, n_global, wrap) * FLEX_BLOCK ** 2
    if backend == "fused":
        plan = build_window_plan(q_grid, kv_grid, extent, causal, CPU, wrap)
        return _size(q_grid) * (plan.slots + n_global)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def flex_blocks(q_grid, kv_grid, extent, causal: bool, n_global: int, wrap=NO_WRAP) -> int:
    """(query block, key block) pairs FlexAttention computes: those holding at least one visible pair, in
    kernels/flex.py's layout (raster order, globals first, FLEX_BLOCK tokens a block). What its
    `create_block_mask` finds, counted a block row at a time (that function holds the whole Nq × Nk mask:
    over 24 GB at 40×21×21)."""
    axes = [axis_visibility(n_q, n_k, e, wrap=w) for n_q, n_k, e, w in zip(q_grid, kv_grid, extent, wrap)]
    (_, Hq, Wq), (_, Hk, Wk) = q_grid, kv_grid
    n_q, n_k = _size(q_grid), _size(kv_grid)
    key = torch.arange(n_k)
    ks, kh, kw = key // (Hk * Wk), key // Wk % Hk, key % Wk
    key_blocks = -(-(n_global + n_k) // FLEX_BLOCK)
    total = 0
    for start in range(0, n_q, FLEX_BLOCK):
        q = torch.arange(start, min(start + FLEX_BLOCK, n_q))
        rows = axes[0][q // (Hq * Wq)][:, ks] & axes[1][q // Wq % Hq][:, kh] & axes[2][q % Wq][:, kw]  # [b, Nk]
        if causal:
            rows &= key[None, :] < q[:, None]
        rows = torch.cat([torch.ones(len(q), n_global, dtype=torch.bool), rows], 1)
        rows = torch.nn.functional.pad(rows, (0, key_blocks * FLEX_BLOCK - rows.shape[1]))
        total += int(rows.view(len(q), key_blocks, FLEX_BLOCK).any(2).any(0).sum())
    return total


def work_multiple(backend: str, q_grid, kv_grid, extent, causal: bool, n_global: int, wrap=NO_WRAP) -> float:
    """Computed over visible pairs: 1 is the ideal."""
    return (computed_pairs(backend, q_grid, kv_grid, extent, causal, n_global, wrap)
            / visible_pairs(q_grid, kv_grid, extent, causal, n_global, wrap))


def _size(grid) -> int:
    return grid[0] * grid[1] * grid[2]
