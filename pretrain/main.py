"""Pre-train NÜWA with DeepSpeed ZeRO on code shards.

    deepspeed pretrain/main.py --config configs.yaml [--section.key value ...] [--resume auto|PATH]
    deepspeed --num_gpus 2 pretrain/main.py ...        # also: torchrun, or plain `python` for one process
"""
import argparse
import sys

from pretrain.checkpoint import CheckpointError
from pretrain.config import load_config
from pretrain.trainer import Trainer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML/JSON file; sections model (with preset), data, optim, trainer")
    parser.add_argument("--resume", help="'auto' (newest checkpoint of trainer.output_dir, if any) or a path")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    args, overrides = parser.parse_known_args(argv)
    try:
        config = load_config(args.config, overrides)
        Trainer(config, resume=args.resume).train()
    except (ValueError, FileNotFoundError, CheckpointError, FloatingPointError) as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
