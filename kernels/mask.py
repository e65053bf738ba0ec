"""The canonical definition of 3D nearby attention (3DNA) visibility, and its argument checks.

Every fast backend is judged against `nearby_mask`; keep this file the plain, obvious version.
"""
from __future__ import annotations

import torch

Grid = tuple[int, int, int]
Extent = tuple["int | None", "int | None", "int | None"]


def check_grid(grid, name: str) -> Grid:
    """A grid is three positive ints (S, H, W)."""
    if not isinstance(grid, (tuple, list)) or len(grid) != 3:
        raise ValueError(f"{name} must be a tuple (S, H, W) of 3 ints, got {grid!r}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in grid):
        raise ValueError(f"{name} must hold positive ints, got {grid!r}")
    return tuple(grid)


def check_extent(extent, name: str = "extent") -> Extent:
    """An extent is three odd positive window widths (e_s, e_h, e_w); None means the whole axis."""
    if not isinstance(extent, (tuple, list)) or len(extent) != 3:
        raise ValueError(f"{name} must be a tuple (e_s, e_h, e_w) of 3 odd ints or None, got {extent!r}")
    for e in extent:
        if e is None:
            continue
        if not isinstance(e, int) or isinstance(e, bool) or e <= 0 or e % 2 == 0:
            raise ValueError(f"{name} must hold odd positive window widths or None, got {extent!r}")
    return tuple(extent)


def axis_visibility(n_q: int, n_k: int, e: int | None, device=None) -> torch.Tensor:
    """[n_q, n_k] bool: key c is within radius (e-1)/2 of the query's floor projection ⌊k·n_k/n_q⌋."""
    q = torch.arange(n_q, device=device)
    c = torch.arange(n_k, device=device)
    if e is None:
        return torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    centre = q * n_k // n_q  # integer floor projection onto the key axis
    return (c[None, :] - centre[:, None]).abs() <= (e - 1) // 2


def nearby_mask(q_grid: Grid, kv_grid: Grid, extent: Extent, causal: bool) -> torch.Tensor:
    """[Nq, Nk] bool, True = query may attend to key (DESIGN.md, "3D nearby attention").

    Grids are flattened in raster order (time, row, column). The window is cut at the grid
    border (no shifting inward). `causal` keeps only keys whose raster index is strictly
    smaller than the query's, so it needs q_grid == kv_grid.
    """
    q_grid, kv_grid = check_grid(q_grid, "q_grid"), check_grid(kv_grid, "kv_grid")
    extent = check_extent(extent)
    if causal and q_grid != kv_grid:
        raise ValueError(f"causal attention needs q_grid == kv_grid, got {q_grid} and {kv_grid}")
    s, h, w = (axis_visibility(nq, nk, e) for nq, nk, e in zip(q_grid, kv_grid, extent))
    # Separable window: [Sq,Sk] x [Hq,Hk] x [Wq,Wk] → [Sq,Hq,Wq, Sk,Hk,Wk].
    mask = (s[:, None, None, :, None, None] & h[None, :, None, None, :, None] & w[None, None, :, None, None, :])
    mask = mask.reshape(q_grid[0] * q_grid[1] * q_grid[2], kv_grid[0] * kv_grid[1] * kv_grid[2])
    if causal:
        mask &= torch.ones_like(mask).tril(diagonal=-1)
    return mask
