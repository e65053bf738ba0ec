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


NO_WRAP = (False, False, False)


def check_wrap(wrap, q_grid: Grid, kv_grid: Grid) -> tuple[bool, bool, bool]:
    """wrap is three bools (time, row, column); an axis may wrap only where both grids have its length."""
    if not isinstance(wrap, (tuple, list)) or len(wrap) != 3 or not all(isinstance(w, bool) for w in wrap):
        raise ValueError(f"wrap must be a tuple of 3 bools (time, row, column), got {wrap!r}")
    for axis, (w, n_q, n_k) in enumerate(zip(wrap, q_grid, kv_grid)):
        if w and n_q != n_k:
            raise ValueError(f"wrap on axis {axis} needs the same length in q_grid and kv_grid, got {n_q} and {n_k}")
    return tuple(wrap)


def axis_visibility(n_q: int, n_k: int, e: int | None, device=None, wrap: bool = False) -> torch.Tensor:
    """[n_q, n_k] bool: key c is within radius (e-1)/2 of the query's floor projection ⌊k·n_k/n_q⌋,
    measured the short way round the axis when it wraps."""
    q = torch.arange(n_q, device=device)
    c = torch.arange(n_k, device=device)
    if e is None:
        return torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    centre = q * n_k // n_q  # integer floor projection onto the key axis
    distance = (c[None, :] - centre[:, None]).abs()
    if wrap:
        distance = torch.minimum(distance, n_k - distance)
    return distance <= (e - 1) // 2


def nearby_mask(q_grid: Grid, kv_grid: Grid, extent: Extent, causal: bool, wrap=NO_WRAP) -> torch.Tensor:
    """[Nq, Nk] bool, True = query may attend to key (DESIGN.md, "3D nearby attention").

    Grids are flattened in raster order (time, row, column). The window is cut at the grid
    border (no shifting inward). `causal` keeps only keys whose raster index is strictly
    smaller than the query's, so it needs q_grid == kv_grid.

    `wrap` (an extension of the paper's definition, off by default) continues the window past the
    border on the other side along the axes it marks: for grids whose content wraps around, where
    what leaves on the right comes back on the left (columns only for a 360° panorama; rows and
    columns for tiling textures or periodic simulations), as circular padding does for the VQ-GAN.
    Causality stays raster order.
    """
    q_grid, kv_grid = check_grid(q_grid, "q_grid"), check_grid(kv_grid, "kv_grid")
    extent = check_extent(extent)
    wrap = check_wrap(wrap, q_grid, kv_grid)
    if causal and q_grid != kv_grid:
        raise ValueError(f"causal attention needs q_grid == kv_grid, got {q_grid} and {kv_grid}")
    s, h, w = (axis_visibility(nq, nk, e, wrap=r) for nq, nk, e, r in zip(q_grid, kv_grid, extent, wrap))
    # Separable window: [Sq,Sk] x [Hq,Hk] x [Wq,Wk] → [Sq,Hq,Wq, Sk,Hk,Wk].
    mask = (s[:, None, None, :, None, None] & h[None, :, None, None, :, None] & w[None, None, :, None, None, :])
    mask = mask.reshape(q_grid[0] * q_grid[1] * q_grid[2], kv_grid[0] * kv_grid[1] * kv_grid[2])
    if causal:
        mask &= torch.ones_like(mask).tril(diagonal=-1)
    return mask
