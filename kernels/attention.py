"""`nearby_attention`: the one attention entry point the model calls, with backend dispatch.

Backends, all computing the same function (DESIGN.md):
- "reference": dense SDPA with the `nearby_mask` matrix; O(N²), the judge of the others.
- "blocked": query tiles against the keys their windows reach (kernels/blocked.py); CPU and CUDA.
- "flex": FlexAttention with a cached block mask (kernels/flex.py); CUDA, the least memory.
- "fused": a Triton kernel in which each query reads only its window's keys (kernels/fused.py); CUDA,
  the least work (CPU only under Triton's interpreter, for tests).
`backend=None` picks "blocked" on every device: it is the fastest path for video grids on CPU and
CUDA, while flex uses the least memory (docs/benchmarks.md has the measurements, docs/3dna.md how to
choose).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from kernels.blocked import blocked_attention
from kernels.mask import NO_WRAP, check_extent, check_grid, check_wrap, nearby_mask

BACKENDS = ("reference", "blocked", "flex", "fused")


@torch.compiler.disable  # built once per shape, outside any compiled graph
@functools.lru_cache(maxsize=64)
def reference_mask(q_grid, kv_grid, extent, causal, n_global, device, wrap=NO_WRAP):
    mask = nearby_mask(q_grid, kv_grid, extent, causal, wrap)
    if n_global:
        mask = torch.cat([torch.ones(mask.shape[0], n_global, dtype=torch.bool), mask], 1)
    return mask.to(device)


def reference_attention(q, k, v, q_grid, kv_grid, extent, causal, k_global=None, v_global=None, key_mask=None,
                        wrap=NO_WRAP):
    """Dense SDPA over [globals, grid keys] with the canonical mask (and the grid keys' key_mask [B, Nk])."""
    n_global = 0 if k_global is None else k_global.shape[2]
    if n_global:
        k, v = torch.cat([k_global, k], 2), torch.cat([v_global, v], 2)
    mask = reference_mask(q_grid, kv_grid, extent, causal, n_global, q.device, tuple(wrap))
    if key_mask is not None:
        key_mask = F.pad(key_mask, (n_global, 0), value=True)  # globals are always keys
        mask = mask & key_mask[:, None, None, :]  # (B, 1, Nq, G + Nk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _is_full(q_grid, kv_grid, extent) -> bool:
    """True when every query sees every key (e.g. text, or windows wider than the grid)."""
    return all(e is None or (e - 1) // 2 >= nk - 1 for e, nk in zip(extent, kv_grid))


def _check_tensors(q, k, v, q_grid, kv_grid, k_global, v_global, key_mask):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, heads, N, D], got shape {tuple(t.shape)}")
    if q.shape[2] != math.prod(q_grid):
        raise ValueError(f"q has {q.shape[2]} tokens but q_grid {q_grid} holds {math.prod(q_grid)}")
    if k.shape[2] != math.prod(kv_grid) or v.shape[2] != k.shape[2]:
        raise ValueError(f"k/v have {k.shape[2]}/{v.shape[2]} tokens but kv_grid {kv_grid} holds {math.prod(kv_grid)}")
    if (k_global is None) != (v_global is None):
        raise ValueError("k_global and v_global must be given together")
    if k_global is not None and (k_global.dim() != 4 or k_global.shape != v_global.shape
                                 or k_global.shape[:2] != k.shape[:2] or k_global.shape[3] != k.shape[3]):
        raise ValueError(f"k_global/v_global must be [B, heads, G, D] matching k, got "
                         f"{tuple(k_global.shape)} and {tuple(v_global.shape)}")
    if key_mask is not None and (key_mask.dtype != torch.bool or key_mask.shape != (k.shape[0], k.shape[2])):
        raise ValueError(f"key_mask must be bool [B, Nk] = {(k.shape[0], k.shape[2])}, got "
                         f"{key_mask.dtype} {tuple(key_mask.shape)}")


def nearby_attention(q, k, v, q_grid, kv_grid, extent, causal: bool = False, backend: str | None = None,
                     k_global=None, v_global=None, key_mask=None, wrap=NO_WRAP) -> torch.Tensor:
    """3D nearby attention: q [B,h,Nq,D], k/v [B,h,Nk,D] → [B,h,Nq,D].

    k_global/v_global [B,h,G,D] are keys every query sees (the decoder's <bos>). Causal attention
    must come with at least one global key: the first query has no earlier key of its own.
    key_mask [B, Nk] (False = padding, which no query reads) is for short condition grids, the
    77-slot text: such calls take the dense path unless `backend` is "fused". `wrap` (time, row, column)
    continues windows past the border on the other side (kernels/mask.py).
    """
    q_grid, kv_grid = check_grid(q_grid, "q_grid"), check_grid(kv_grid, "kv_grid")
    extent = check_extent(extent)
    wrap = check_wrap(wrap, q_grid, kv_grid)
    _check_tensors(q, k, v, q_grid, kv_grid, k_global, v_global, key_mask)
    if causal and q_grid != kv_grid:
        raise ValueError(f"causal attention needs q_grid == kv_grid, got {q_grid} and {kv_grid}")
    if causal and k_global is None:
        raise ValueError("causal=True needs k_global/v_global: the first query has no earlier key")
    if backend == "fused":
        from kernels.fused import fused_nearby_attention
        return fused_nearby_attention(q, k, v, q_grid, kv_grid, extent, causal, k_global, v_global, key_mask, wrap)
    if key_mask is not None:
        return reference_attention(q, k, v, q_grid, kv_grid, extent, causal, k_global, v_global, key_mask, wrap)
    if backend is None:
        if not causal and _is_full(q_grid, kv_grid, extent):  # no mask at all: plain SDPA is optimal
            if k_global is not None:
                k, v = torch.cat([k_global, k], 2), torch.cat([v_global, v], 2)
            return F.scaled_dot_product_attention(q, k, v)
        backend = "blocked"
    if backend == "reference":
        return reference_attention(q, k, v, q_grid, kv_grid, extent, causal, k_global, v_global, wrap=wrap)
    if backend == "blocked":
        return blocked_attention(q, k, v, q_grid, kv_grid, extent, causal, k_global, v_global, wrap=wrap)
    if backend == "flex":
        from kernels.flex import flex_nearby_attention
        return flex_nearby_attention(q, k, v, q_grid, kv_grid, extent, causal, k_global, v_global, wrap)
    raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")

