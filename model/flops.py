"""Analytic FLOP count of NÜWA, for MFU: what a training step must compute, counted from the config.

A multiply-add is 2 FLOPs; training costs 3× the forward pass (the backward computes gradients for
both the inputs and the weights of every matrix product). Counted: every linear layer (attention
projections, MLPs, the head) and the attention products (q·k and attention·v, 4·d FLOPs per
query-key pair). 3DNA counts only the pairs its windows make visible (plus the decoder's <bos> key):
the useful work, whatever a backend pads or masks. Not counted: embeddings, norms, activations,
softmax and the loss, a fraction of a percent.
"""
from __future__ import annotations

import functools
import math

from kernels import nearby_mask
from kernels.mask import NO_WRAP
from model.config import NuwaConfig


@functools.lru_cache(maxsize=32)
def window_pairs(q_grid: tuple, kv_grid: tuple, extent: tuple, causal: bool, wrap: tuple = NO_WRAP) -> int:
    """Query-key pairs that 3DNA makes visible between two grids."""
    return int(nearby_mask(q_grid, kv_grid, extent, causal, wrap).sum())


def forward_flops(config: NuwaConfig, grid: tuple[int, int, int], dense_attention: bool = False,
                  sketch: bool = False) -> int:
    """FLOPs of one sample's forward pass (text encoder + decoder over `grid` + head).

    `dense_attention` counts every query-key pair, as the dense reference backend computes them. `sketch`
    (S2I, S2V): the encoder reads a sketch on `grid` through its window instead of the text.
    """
    d, mlp, N = config.width, config.mlp_ratio * config.width, math.prod(grid)
    extent = config.image_extent if grid[0] == 1 else config.video_extent
    wrap = (False, True, True) if config.spatial_wrap else NO_WRAP
    condition, condition_extent = (grid, extent) if sketch else ((1, 1, config.text_length), config.text_extent)
    T = math.prod(condition)
    if dense_attention:
        text_pairs, self_pairs, cross_pairs = T * T, N * (N + 1), N * T
    else:
        text_pairs = window_pairs(condition, condition, condition_extent, False)
        self_pairs = window_pairs(grid, grid, extent, True, wrap) + N  # + the <bos> key every query sees
        cross_pairs = window_pairs(grid, condition, condition_extent, False)
    encoder = 2 * T * d * (4 * d + 2 * mlp) + 4 * d * text_pairs
    decoder = 2 * N * d * (6 * d + 2 * mlp) + 2 * T * d * 2 * d + 4 * d * (self_pairs + cross_pairs)
    head = 2 * N * d * config.codebook_size
    return config.encoder_layers * encoder + config.decoder_layers * decoder + head


def training_flops(config: NuwaConfig, grid: tuple[int, int, int], sketch: bool = False) -> int:
    """FLOPs of one sample's forward and backward pass (3× the forward), window pairs only."""
    return 3 * forward_flops(config, grid, sketch=sketch)


PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
               "V100": 125.0}
"""Dense bf16/fp16 tensor-core peak (TFLOP/s) by GPU name, most specific first (V100: fp16)."""


def peak_tflops(device_name: str) -> float | None:
    """The table's peak for a CUDA device name such as "NVIDIA H100 80GB HBM3", None when unknown."""
    return next((peak for name, peak in PEAK_TFLOPS.items() if name in device_name), None)
