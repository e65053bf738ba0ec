"""Per-GPU memory of a NÜWA preset under ZeRO-1/2/3 and optimizer offload, for a given GPU count.

Model states come from DeepSpeed's own estimators (ZeRO-2, ZeRO-3); ZeRO-1 has none, so it uses
the same accounting as ZeRO-2 with only the optimizer states partitioned (Rajbhandari et al.,
mixed precision Adam: 2Ψ bf16 weights + 2Ψ bf16 grads + 12Ψ fp32 master/moments). Activations
are a rough figure per micro-batch sample for bf16 (Korthikanti et al. 2022, 34·N·d bytes per
layer and token without an N² term, since 3DNA never forms one), with and without activation
checkpointing; they are listed separately because they depend on the task's grid.

    python tools/estimate_memory.py --preset nuwa-336 --gpus 64 --gpus-per-node 8
"""
from __future__ import annotations

import argparse
import math

import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from model.config import NuwaConfig
from model.nuwa import Nuwa

GiB = 2**30


def model_state_rows(total: int, largest: int, gpus: int, per_node: int) -> list[tuple[str, float, float]]:
    """(setting, GPU GiB, CPU GiB per node) for each ZeRO stage, from DeepSpeed's estimators where they exist."""
    nodes = max(1, gpus // per_node)
    local = min(gpus, per_node)
    zero1_gpu = (2 * total + 2 * total + 12 * total / gpus)
    rows = [("ZeRO-1", zero1_gpu / GiB, 0.0)]
    cpu, gpu = estimate_zero2_model_states_mem_needs(total, local, nodes, cpu_offload=False)
    rows.append(("ZeRO-2", gpu / GiB, cpu / GiB))
    cpu, gpu = estimate_zero2_model_states_mem_needs(total, local, nodes, cpu_offload=True)
    rows.append(("ZeRO-2 + optimizer offload", gpu / GiB, cpu / GiB))
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, local, nodes, cpu_offload=False,
                                                        cpu_offload_params=False)
    rows.append(("ZeRO-3", gpu / GiB, cpu / GiB))
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, local, nodes, cpu_offload=True,
                                                        cpu_offload_params=False)
    rows.append(("ZeRO-3 + optimizer offload", gpu / GiB, cpu / GiB))
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, local, nodes, cpu_offload=True,
                                                        cpu_offload_params=True)
    rows.append(("ZeRO-3 + optimizer and param offload", gpu / GiB, cpu / GiB))
    return rows


def activation_gib(config: NuwaConfig, grid: tuple[int, int, int], checkpointing: bool) -> float:
    """bf16 activations of one sample: 34·N·d bytes per layer (cross-attention adds ~half a layer)."""
    n, d, text = math.prod(grid), config.width, config.text_length
    per_layer = 34 * n * d * 1.5
    encoder = 34 * text * d * config.encoder_layers
    logits = n * config.codebook_size * (2 + 4)  # bf16 logits and the fp32 loss copy
    if checkpointing:  # block inputs kept, one block recomputed at a time
        return (2 * n * d * config.decoder_layers + per_layer + encoder + logits) / GiB
    return (per_layer * config.decoder_layers + encoder + logits) / GiB


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nuwa-336")
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    args = parser.parse_args()
    config = NuwaConfig.from_preset(args.preset)
    with torch.device("meta"):
        model = Nuwa(config)
    total = model.num_parameters(exclude_embeddings=False)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    print(f"{args.preset}: {total / 1e6:.1f}M parameters ({model.num_parameters() / 1e6:.1f}M without embedding "
          f"tables), largest layer {largest / 1e6:.1f}M; {args.gpus} GPUs, {args.gpus_per_node} per node")
    print(f"{'model states (bf16 + fp32 Adam)':<40} {'GPU GiB':>9} {'CPU GiB/node':>13}")
    for name, gpu, cpu in model_state_rows(total, largest, args.gpus, args.gpus_per_node):
        print(f"{name:<40} {gpu:9.2f} {cpu:13.1f}")
    print(f"{'activations per sample (bf16, rough)':<40} {'plain':>9} {'checkpointed':>13}")
    for name, grid in (("image", config.image_grid), ("video", config.video_grid)):
        print(f"{f'{name} {grid}':<40} {activation_gib(config, grid, False):9.2f} "
              f"{activation_gib(config, grid, True):13.2f}")


if __name__ == "__main__":
    main()
