"""The command line both trainers share: `--config FILE`, `--section.key value` overrides,
`--resume auto|PATH`, `--dry-run`, a `--help` that lists every key, and one-line errors."""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager

import torch.distributed as dist

from model import typed_config
from pretrain.errors import MISTAKES


def parse_args(doc: str, config_class: type, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(the trainer's own flags, the `--section.key value` overrides)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        epilog="config keys (set in the --config file or as --section.key value):\n"
               + typed_config.help_text(typed_config.describe(config_class)))
    parser.add_argument("--config", help="YAML or JSON config file (optional: defaults and overrides suffice)")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="'auto': the newest complete checkpoint of trainer.output_dir, or a fresh start when "
                             "there is none; PATH: a checkpoint tag, checkpoints or run folder")
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve the config, open the data, print what a run would do, and exit")
    parser.add_argument("--world-size", type=int, help="ranks to plan a --dry-run for (default: WORLD_SIZE or 1)")
    parser.add_argument("--gpus-per-node", type=int, help="ranks per node for a --dry-run (default: up to 8)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    return parser.parse_known_args(argv)


def dry_run_world(args: argparse.Namespace) -> tuple[int, int]:
    """(ranks, ranks per node) to plan for: the flags, else the launcher's environment, else one process."""
    world = args.world_size or int(os.environ.get("WORLD_SIZE", 1))
    per_node = args.gpus_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", min(world, 8)))
    if world > per_node and world % per_node:
        raise ValueError(f"--world-size {world} is not a multiple of --gpus-per-node {per_node}")
    return world, min(per_node, world)


LOST_RANK = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out", "timed out")
"""How gloo and NCCL say, as a RuntimeError, that another rank died or a collective waited past its timeout."""


def lost_contact(error: RuntimeError) -> bool:
    return (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
            and (isinstance(error, dist.DistError) or any(words in str(error) for words in LOST_RANK)))


def fail(prog: str, message: str):
    """Print `prog: error: message` and exit 1. With a process group, exit at once (os._exit): tearing
    down its threads at interpreter exit can abort the process, and a dead peer can hang it."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    if dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        exit_now(1)
    sys.exit(1)


def exit_now(code: int) -> None:
    """End the process at once, skipping interpreter teardown (tests that run trainers in-process replace it)."""
    os._exit(code)


@contextmanager
def mistakes_end_in_one_line(prog: str):
    """Turn MISTAKES into `prog: error: …` on stderr and exit status 1; so too a collective that fails
    because another rank died (its own log says why) or waited past `trainer.timeout_s`."""
    try:
        yield
    except MISTAKES as e:
        fail(prog, str(e))
    except RuntimeError as e:
        if not lost_contact(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(prog, f"lost contact with the other ranks on rank {dist.get_rank()} (another rank failed: its log "
                   f"says why; or a collective waited past trainer.timeout_s): {first}")
