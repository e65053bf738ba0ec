"""Train the VQ-GAN tokenizer on raw images.

    python pretrain/train_vqgan.py --config cfg.yaml [--section.key value ...] [--resume [CHECKPOINT]]
    torchrun --nproc_per_node 2 pretrain/train_vqgan.py --config cfg.yaml      # DDP

Sections: preset, model (VQGANConfig fields over the preset), data, loss, train; see
pretrain/vqgan_trainer.py for every key. The result is OUT/final (VQGAN.from_pretrained).
"""
from __future__ import annotations

import argparse
import logging
import os

from pretrain.vqgan_trainer import load_config, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     epilog="any other --section.key value overrides the config file")
    parser.add_argument("--config", help="YAML or JSON config (optional: presets and overrides suffice)")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="continue from a checkpoint folder, or from the newest under train.out_dir")
    args, overrides = parser.parse_known_args(argv)
    rank0 = os.environ.get("RANK", "0") == "0"  # other ranks log warnings only, so each line appears once
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    train(load_config(args.config, overrides), resume=args.resume)


if __name__ == "__main__":
    main()
