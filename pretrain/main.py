"""Pre-train NÜWA with DeepSpeed ZeRO on code shards.

    deepspeed pretrain/main.py --config configs/cpu-smoke.yaml [--section.key value ...] [--resume auto|PATH]
    deepspeed --num_gpus 2 pretrain/main.py ...        # also: torchrun, or plain `python` for one process
    python pretrain/main.py --config configs/nuwa-336-64gpu.yaml --dry-run --world-size 64
"""
from pretrain import cli
from pretrain.config import PretrainConfig, load_config


def main(argv=None):
    args, overrides = cli.parse_args(__doc__, PretrainConfig, argv)
    with cli.mistakes_end_in_one_line("pretrain"):
        config = load_config(args.config, overrides)
        if args.dry_run:
            from pretrain.dry_run import pretrain_report
            print(pretrain_report(config, *cli.dry_run_world(args)))
            return
        from pretrain.trainer import Trainer  # DeepSpeed's import is slow: not for --help
        Trainer(config, resume=args.resume).train()


if __name__ == "__main__":
    main()
