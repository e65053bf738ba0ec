"""Tokenize a captioned image or video dataset into code shards (see preprocess/pipeline.py).

    python preprocess/tokenize.py --modality image --input 'data/{00000..00099}.tar' --output codes/images \
        --vqgan runs/vqgan --tokenizer tok/captions.model --workers 8 --device cuda

Re-running the same command finishes an interrupted run and rewrites nothing. To split one
dataset over K machines, run split i of K on each (`--num-splits K --split i`, or RANK and
WORLD_SIZE in the environment), gather the outputs in one folder, and join the manifests with
`python preprocess/merge_manifests.py FOLDER`.
"""
import preprocess  # noqa: F401  (first: see preprocess/__init__.py)
import argparse
import os
from pathlib import Path

from preprocess.cli import errors_in_one_line
from preprocess.pipeline import TokenizeConfig, tokenize_dataset


def parse_args(argv: list[str] | None = None) -> TokenizeConfig:
    defaults = TokenizeConfig("image", [], "", "", "")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", choices=["image", "video"], required=True)
    parser.add_argument("--input", nargs="+", required=True,
                        help="tars (brace patterns ok) and/or .csv/.jsonl indexes")
    parser.add_argument("--output", required=True, help="shard folder (created; re-runs resume)")
    parser.add_argument("--vqgan", required=True, help="folder written by VQGAN.save_pretrained")
    parser.add_argument("--tokenizer", required=True, help="sentencepiece .model from preprocess/train_tokenizer.py")
    parser.add_argument("--vqgan-seg", default="", help="a VQ-GAN-Seg folder: also code each sample's label map "
                        "({key}.seg.png beside an image, {key}.seg.npz beside a video, or an index's seg column) "
                        "into sketch codes (S2I/S2V); samples without one are skipped")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="decoding processes (0: in-process)")
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size, help="samples per shard")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="samples per VQ-GAN batch")
    parser.add_argument("--num-splits", type=int, default=None, help="default: $WORLD_SIZE or 1")
    parser.add_argument("--split", type=int, default=None, help="default: $RANK or 0")
    parser.add_argument("--device", default=defaults.device,
                        help="cpu, cuda (under torchrun or deepspeed: cuda:LOCAL_RANK), cuda:1, …")
    parser.add_argument("--threads", type=int, default=None, help="CPU encoder threads (default: cores − workers)")
    parser.add_argument("--num-frames", type=int, default=defaults.num_frames, help="frames per video clip")
    parser.add_argument("--frame-rate", type=float, default=defaults.frame_rate, help="clip frames per second")
    parser.add_argument("--clip-start", type=float, default=defaults.clip_start, help="seconds skipped per video")
    parser.add_argument("--clips-per-video", type=int, default=defaults.clips_per_video,
                        help="consecutive clips taken from long videos (keys get #0, #1, … when > 1)")
    curation = parser.add_argument_group("curation (off by default; what fails is skipped with its reason)")
    curation.add_argument("--min-side", type=int, default=0, help="skip pictures whose shorter side is below this")
    curation.add_argument("--max-aspect", type=float, default=0.0,
                          help="skip pictures whose longer side exceeds this many times the shorter")
    curation.add_argument("--skip-cuts", type=float, nargs="?", const=40.0, default=0.0, metavar="THRESHOLD",
                          help="drop video clips holding a hard cut: a consecutive-frame difference (0-255) above "
                               "THRESHOLD (default 40)")
    curation.add_argument("--min-motion", type=float, default=0.0,
                          help="drop still video clips: mean consecutive-frame difference (0-255) below this")
    args = parser.parse_args(argv)
    num_splits = args.num_splits if args.num_splits is not None else int(os.environ.get("WORLD_SIZE", 1))
    split = args.split if args.split is not None else int(os.environ.get("RANK", 0))
    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun or deepspeed: this process's GPU
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    return TokenizeConfig(args.modality, args.input, args.output, args.vqgan, args.tokenizer, workers=args.workers,
                          shard_size=args.shard_size, batch_size=args.batch_size, num_splits=num_splits, split=split,
                          device=device, threads=args.threads, num_frames=args.num_frames,
                          frame_rate=args.frame_rate, clip_start=args.clip_start, clips_per_video=args.clips_per_video,
                          min_side=args.min_side, max_aspect=args.max_aspect, cut_threshold=args.skip_cuts,
                          min_motion=args.min_motion, vqgan_seg=args.vqgan_seg)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    with errors_in_one_line("tokenize"):
        if Path(config.output).exists() and not Path(config.output).is_dir():
            raise NotADirectoryError(f"--output {config.output} is a file; give a folder (created if missing)")
        tokenize_dataset(config)


if __name__ == "__main__":
    main()
