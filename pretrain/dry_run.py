"""`--dry-run` for both trainers: resolve the config, open the data, and say what a run would do
(batches, tokens, epochs, parameters, memory per GPU) without starting one."""
from __future__ import annotations

import yaml

from model import typed_config
from pretrain.config import DATA_FIXED, PretrainConfig, from_manifests
from pretrain.data import open_datasets, task_grid, tokens_per_sample
from pretrain.memory import GiB, activation_gib, model_state_rows, parameter_counts, zero_setting


def pretrain_report(config: PretrainConfig, world: int, per_node: int) -> str:
    """The resolved config, what the data fixes, the batch arithmetic per schedule stage and the memory estimate."""
    from pretrain.trainer import engine_config  # imports DeepSpeed's engine: only once the config resolved

    shards, datasets = open_datasets(config)
    tasks = sorted(datasets)
    ds = engine_config(config, world, set(tasks))
    resolved = config.to_dict()
    lines = ["resolved config:", yaml.safe_dump(resolved, sort_keys=False).rstrip(), ""]
    data = from_manifests(resolved["data"])
    lines.append("from the shard manifests: " + (", ".join(f"model.{k} {data[k]}" for k in DATA_FIXED if k in data)
                                                 or "nothing (the config sets every data-fixed field)"))
    for modality, shard in sorted(shards.items()):
        lines.append(f"  {modality} shards {shard.folder}: {len(shard)} samples, grid {shard.manifest['grid']}")
    total, without_embeddings, largest = parameter_counts(config.model)
    lines.append(f"parameters: {total:,} ({without_embeddings:,} without embedding tables)")

    accum = config.trainer.grad_accum
    lines.append(f"ranks: {world} ({per_node} per node), grad_accum {accum}; a micro-step is one task on every rank")
    lines.append(f"{'task':<5}{'micro-batch':>12}{'global batch':>14}{'tokens/sample':>15}{'samples':>10}"
                 "   (global batch = micro-batch × ranks × grad_accum, a step of that task alone)")
    for t in tasks:
        micro = config.data.micro_batch[t]
        lines.append(f"{t:<5}{micro:>12}{micro * world * accum:>14}{tokens_per_sample(config, t):>15}"
                     f"{len(datasets[t]):>10}")
    for stage in config.data.schedule:
        if stage.start_step >= config.trainer.steps:
            continue
        weights = {t: stage.weights.get(t, 0.0) for t in tasks}
        norm = sum(weights.values())
        per_step = {t: weights[t] / norm * accum * world * config.data.micro_batch[t] for t in tasks}
        tokens = sum(per_step[t] * tokens_per_sample(config, t) for t in tasks)
        epochs = ", ".join(f"{t} {len(datasets[t]) / per_step[t]:,.0f}" for t in tasks if per_step[t] > 0)
        lines.append(f"from step {stage.start_step}: samples per step (expected) "
                     + ", ".join(f"{t} {per_step[t]:.1f}" for t in tasks)
                     + f"; tokens per step {tokens:,.0f}; steps per epoch {epochs}")

    setting = zero_setting(ds)
    gpu_states = dict((name, gpu) for name, gpu, _ in model_state_rows(total, largest, world, per_node))[setting]
    checkpointing = config.model.checkpointing == "full"  # "attention" counted as plain: an upper bound
    activations = {t: config.data.micro_batch[t] * activation_gib(config.model, task_grid(config, t), checkpointing)
                   for t in tasks}
    largest_task = max(activations, key=activations.get)
    lines.append(f"memory per GPU ({setting}, {config.trainer.ds_config}): model states {gpu_states:.2f} GiB "
                 f"+ activations of the largest micro-batch ({largest_task}, {config.data.micro_batch[largest_task]} "
                 f"samples, {'checkpointed' if checkpointing else 'plain'}) {activations[largest_task]:.2f} GiB "
                 f"= {gpu_states + activations[largest_task]:.2f} GiB (rough; see tools/estimate_memory.py)")
    return "\n".join(lines)


def vqgan_report(config, world: int) -> str:
    """The VQ-GAN trainer's resolved config, inputs, batch, parameters and a memory estimate (DDP, fp32 Adam)."""
    from model.discriminator import PatchDiscriminator
    from model.vqgan import VQGAN
    from pretrain.vqgan_trainer import training_units

    units = training_units(config.data)
    networks = {"VQ-GAN": VQGAN(config.model),
                "discriminator": PatchDiscriminator(config.model.out_channels, config.loss.disc_channels,
                                                    config.loss.disc_layers)}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in networks.items()}
    states = sum(params.values()) * (4 + 4 + 8) / GiB  # fp32 weights, gradients and two Adam moments
    trainer = config.trainer
    images = trainer.batch_size * world
    lines = ["resolved config:", yaml.safe_dump(typed_config.to_dict(config), sort_keys=False).rstrip(), "",
             f"inputs: {len(units)} units ({sum(m == 'image' for _, m in units)} of images, "
             f"{sum(m == 'video' for _, m in units)} of videos)",
             "parameters: " + ", ".join(f"{name} {n:,}" for name, n in params.items()),
             f"ranks: {world}; global batch {trainer.batch_size} × {world} = {images} images of "
             f"{config.model.resolution}×{config.model.resolution} px per step; {trainer.steps} steps = "
             f"{trainer.steps * images:,} images",
             f"memory per GPU: model and optimizer states {states:.2f} GiB (fp32 weights, gradients, Adam moments; "
             f"activations come on top)"]
    return "\n".join(lines)
