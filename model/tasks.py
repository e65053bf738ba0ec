"""The generation tasks of NÜWA as a code grid plus a keep mask (see model/sampling.py).

S2I and S2V generate everything from a sketch (a label map's codes) instead of a caption.

T2I and T2V generate everything; V2V and TV2V keep the first frames of a given video (V2V under
the "None" text, TV2V under new text); I2I keeps the top rows of an image; TI2I keeps everything
outside a rectangle and regenerates inside it under new text. Pixel arguments are converted to
code positions here and checked against the image/video they refer to.
"""
from __future__ import annotations

import math

import torch

TASKS = ("t2i", "t2v", "v2v", "i2i", "ti2i", "tv2v", "s2i", "s2v")
TEXT_TASKS = ("t2i", "t2v", "ti2i", "tv2v")
VIDEO_TASKS = ("t2v", "v2v", "tv2v", "s2v")
INPUT_TASKS = ("v2v", "i2i", "ti2i", "tv2v")
SKETCH_TASKS = ("s2i", "s2v")  # conditioned on a label map's sketch codes (a VQ-GAN-Seg's)


def keep_first_frames(grid: tuple[int, int, int], frames: int) -> torch.Tensor:
    """V2V/TV2V: frames [0, frames) are given, the rest is generated."""
    if not 1 <= frames < grid[0]:
        raise ValueError(f"frame index {frames} is outside the video: give 1..{grid[0] - 1} of its {grid[0]} frames")
    keep = torch.zeros(grid, dtype=torch.bool)
    keep[:frames] = True
    return keep


def keep_top_rows(grid: tuple[int, int, int], pixel_rows: int, downsample: int) -> torch.Tensor:
    """I2I: the top `pixel_rows` pixels (rounded down to whole code rows) are kept."""
    height = grid[1] * downsample
    rows = pixel_rows // downsample
    if not 1 <= rows < grid[1]:
        raise ValueError(f"--rows {pixel_rows} must keep at least one code row ({downsample} px) and leave one, "
                         f"inside the {height}-pixel image")
    keep = torch.zeros(grid, dtype=torch.bool)
    keep[:, :rows] = True
    return keep


def keep_outside_region(grid: tuple[int, int, int], region: tuple[int, int, int, int], downsample: int) -> torch.Tensor:
    """TI2I: `region` = (top, left, bottom, right) in pixels is regenerated (grown to whole codes)."""
    top, left, bottom, right = region
    height, width = grid[1] * downsample, grid[2] * downsample
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"region {region} (top, left, bottom, right) is not a non-empty rectangle inside the "
                         f"{height}x{width} image")
    keep = torch.ones(grid, dtype=torch.bool)
    keep[:, top // downsample: math.ceil(bottom / downsample), left // downsample: math.ceil(right / downsample)] = False
    return keep
