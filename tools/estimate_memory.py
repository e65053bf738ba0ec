"""Per-GPU memory of a NÜWA model under every ZeRO stage and offload, for a given GPU count
(the accounting is in pretrain/memory.py).

    python tools/estimate_memory.py --preset nuwa-336 --gpus 64 --gpus-per-node 8
    python tools/estimate_memory.py --config configs/nuwa-336-64gpu.yaml --gpus 64   # the model a run config resolves to
"""
from __future__ import annotations

import argparse

from model.config import NuwaConfig
from pretrain.config import load_config
from pretrain.memory import activation_gib, model_state_rows, parameter_counts


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="nuwa-336", help="a NÜWA preset")
    source.add_argument("--config", help="a pre-training config file (its model section, resolved as the trainer does)")
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    args, overrides = parser.parse_known_args(argv)
    if args.config:
        config, name = load_config(args.config, overrides).model, args.config
    else:
        config, name = NuwaConfig.from_preset(args.preset), args.preset
    total, without_embeddings, largest = parameter_counts(config)
    print(f"{name}: {total / 1e6:.1f}M parameters ({without_embeddings / 1e6:.1f}M without embedding "
          f"tables), largest layer {largest / 1e6:.1f}M; {args.gpus} GPUs, {args.gpus_per_node} per node")
    print(f"{'model states (bf16 + fp32 Adam)':<40} {'GPU GiB':>9} {'CPU GiB/node':>13}")
    for setting, gpu, cpu in model_state_rows(total, largest, args.gpus, args.gpus_per_node):
        print(f"{setting:<40} {gpu:9.2f} {cpu:13.1f}")
    print(f"{'activations per sample (bf16, rough)':<40} {'plain':>9} {'checkpointed':>13}")
    for modality, grid in (("image", config.image_grid), ("video", config.video_grid)):
        print(f"{f'{modality} {grid}':<40} {activation_gib(config, grid, False):9.2f} "
              f"{activation_gib(config, grid, True):13.2f}")


if __name__ == "__main__":
    main()
