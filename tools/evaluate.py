"""Evaluate a converted model.

    python tools/evaluate.py loss --model models/nuwa --config configs/run.yaml [--section.key value ...]

`loss`: the held-out NLL per code of each task with held-out shards (`data.val_image_shards`,
`data.val_video_shards` of the pre-training config; `trainer.eval_batches` micro-batches of
`data.micro_batch` per task), computed as the trainer's validation computes it
(pretrain/validation.py), printed as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from model.pretrained import load_pretrained
from pretrain.cli import mistakes_end_in_one_line
from pretrain.config import TASKS, load_config
from pretrain.validation import evaluate, validation_sets
from preprocess.text import CaptionTokenizer


def held_out_loss(model_dir: str, config_path: str | None, overrides: list[str], device: str = "cpu") -> dict:
    model = load_pretrained(model_dir, device=device)
    config = load_config(config_path, overrides)
    config.model = model.config  # the model folder says what the model is; the config file gives the data
    sets = validation_sets(config, set(TASKS), CaptionTokenizer(config.data.tokenizer))
    if not sets:
        raise ValueError("no held-out shards: set data.val_image_shards and/or data.val_video_shards")
    return evaluate(model, sets, config.data.micro_batch, config.trainer.eval_batches, torch.device(device))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    loss = commands.add_parser("loss", help="held-out NLL per code of each task")
    loss.add_argument("--model", required=True, help="a folder from tools/convert_checkpoint.py to-safetensors")
    loss.add_argument("--config", help="the pre-training config that names the held-out shards")
    loss.add_argument("--device", default="cpu")
    args, overrides = parser.parse_known_args(argv)
    with mistakes_end_in_one_line("evaluate"):
        print(json.dumps(held_out_loss(args.model, args.config, overrides, args.device), indent=1))


if __name__ == "__main__":
    sys.exit(main())
