"""Per-GPU memory of a NÜWA model under ZeRO-1/2/3 and offload: the estimate `--dry-run` and
tools/estimate_memory.py print.

Model states come from DeepSpeed's own estimators (ZeRO-2, ZeRO-3); ZeRO-1 has none, so it uses
the same accounting as ZeRO-2 with only the optimizer states partitioned (Rajbhandari et al.,
mixed precision Adam: 2Ψ bf16 weights + 2Ψ bf16 grads + 12Ψ fp32 master/moments). Activations
are a rough figure per micro-batch sample for bf16 (Korthikanti et al. 2022, 34·N·d bytes per
layer and token without an N² term, since 3DNA never forms one), with and without activation
checkpointing; they depend on the task's grid.
"""
from __future__ import annotations

import math

import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from model.config import NuwaConfig
from model.nuwa import Nuwa

GiB = 2**30


def parameter_counts(config: NuwaConfig) -> tuple[int, int, int]:
    """(all parameters, without embedding tables, largest layer) of the model, counted on the meta device."""
    with torch.device("meta"):
        model = Nuwa(config)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return model.num_parameters(exclude_embeddings=False), model.num_parameters(), largest


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


def zero_setting(ds_config: dict) -> str:
    """The model_state_rows name of a DeepSpeed config's ZeRO stage and offload."""
    zero = ds_config.get("zero_optimization", {})
    stage = max(1, zero.get("stage", 0))  # stage 0 keeps everything on every GPU, as ZeRO-1 on one GPU
    offload_optimizer = zero.get("offload_optimizer", {}).get("device", "none") != "none"
    offload_params = zero.get("offload_param", {}).get("device", "none") != "none"
    if stage == 3 and offload_params:
        return "ZeRO-3 + optimizer and param offload"
    return f"ZeRO-{stage}" + (" + optimizer offload" if offload_optimizer and stage > 1 else "")


def activation_gib(config: NuwaConfig, grid: tuple[int, int, int], checkpointing: bool) -> float:
    """bf16 activations of one sample: 34·N·d bytes per layer (cross-attention adds ~half a layer)."""
    n, d, text = math.prod(grid), config.width, config.text_length
    per_layer = 34 * n * d * 1.5
    encoder = 34 * text * d * config.encoder_layers
    logits = n * config.codebook_size * (2 + 4)  # bf16 logits and the fp32 loss copy
    if checkpointing:  # block inputs kept, one block recomputed at a time
        return (2 * n * d * config.decoder_layers + per_layer + encoder + logits) / GiB
    return (per_layer * config.decoder_layers + encoder + logits) / GiB
