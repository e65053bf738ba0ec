"""Convert trainer checkpoints: to a portable safetensors model, or to a universal checkpoint.

    python tools/convert_checkpoint.py to-safetensors CKPT OUT_DIR [--dtype fp32|bf16] [--force] [--ema]
    python tools/convert_checkpoint.py to-universal  CKPT OUT_DIR [--force] [--workers N]

CKPT is a tag folder (runs/nuwa/checkpoints/step-00001000), a checkpoints folder or a run
folder (then its newest complete tag). to-safetensors writes OUT_DIR/model.safetensors and
OUT_DIR/config.json (model config, preset, step, tokenizer and VQ-GAN identities), loaded with
`model.pretrained.load_pretrained(OUT_DIR)`. to-universal writes a complete tag folder that
`deepspeed pretrain/main.py --resume OUT_DIR` continues on any number of ranks (ZeRO stage ≥ 1).
"""
import argparse
import sys

from pretrain.checkpoint import CheckpointError
from pretrain.convert import to_safetensors, to_universal


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    st = commands.add_parser("to-safetensors", help="ZeRO-1/2/3 checkpoint → model.safetensors + config.json")
    st.add_argument("checkpoint", help="tag folder, checkpoints folder or run folder")
    st.add_argument("out", help="output folder")
    st.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="stored precision (default fp32)")
    st.add_argument("--force", action="store_true", help="overwrite an existing export in OUT")
    st.add_argument("--ema", action="store_true", help="export the weight average (trainer.ema_decay) instead")
    uc = commands.add_parser("to-universal", help="ZeRO checkpoint → universal checkpoint (resume on any world size)")
    uc.add_argument("checkpoint", help="tag folder, checkpoints folder or run folder")
    uc.add_argument("out", help="output tag folder, e.g. runs/next/checkpoints/step-00001000")
    uc.add_argument("--force", action="store_true", help="replace an existing checkpoint folder OUT")
    uc.add_argument("--workers", type=int, default=4, help="processes extracting ZeRO shards (default 4)")
    args = parser.parse_args(argv)
    try:
        if args.command == "to-safetensors":
            to_safetensors(args.checkpoint, args.out, dtype=args.dtype, force=args.force, ema=args.ema)
        else:
            to_universal(args.checkpoint, args.out, force=args.force, workers=args.workers)
    except (FileNotFoundError, FileExistsError, CheckpointError, ValueError) as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
