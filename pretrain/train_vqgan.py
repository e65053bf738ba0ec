"""Train the VQ-GAN tokenizer on raw images and video frames (pretrain/vqgan_trainer.py).

    python pretrain/train_vqgan.py --config configs/vqgan-demo.yaml [--section.key value ...] [--resume auto|PATH]
    torchrun --nproc_per_node 2 pretrain/train_vqgan.py --config cfg.yaml      # DDP
    python pretrain/train_vqgan.py --config configs/vqgan-f16-12288.yaml --dry-run

The result is {trainer.output_dir}/final, a folder that VQGAN.from_pretrained and
preprocess/tokenize.py --vqgan read.
"""
from __future__ import annotations

import logging
import os

from pretrain import cli
from pretrain.vqgan_trainer import VQGANTrainingConfig, load_config


def main(argv: list[str] | None = None) -> None:
    args, overrides = cli.parse_args(__doc__, VQGANTrainingConfig, argv)
    rank0 = os.environ.get("RANK", "0") == "0"  # other ranks log warnings only, so each line appears once
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    with cli.mistakes_end_in_one_line("train_vqgan"):
        config = load_config(args.config, overrides)
        if args.dry_run:
            from pretrain.dry_run import vqgan_report
            print(vqgan_report(config, cli.dry_run_world(args)[0]))
            return
        from pretrain.vqgan_trainer import train
        train(config, resume=args.resume)


if __name__ == "__main__":
    main()
