"""Evaluate a converted model, its samples, or a VQ-GAN (docs/evaluation.md).

    python tools/evaluate.py loss --model models/nuwa --config configs/run.yaml [--section.key value ...]
    python tools/evaluate.py fid --real REAL --generated GEN --inception inception-2015-12-05.pt [--blur 1,2,4,8]
    python tools/evaluate.py is --generated GEN --inception inception-2015-12-05.pt
    python tools/evaluate.py clipsim --generated GEN --clip ViT-B-32.pt --clip-vocab bpe_simple_vocab_16e6.txt.gz
    python tools/evaluate.py fvd --real REAL --generated GEN --i3d i3d_torchscript.pt
    python tools/evaluate.py vqgan --vqgan VQGAN_DIR --data HELD_OUT [--inception inception-2015-12-05.pt]
                                   (a VQ-GAN-Seg on held-out label maps: pixel accuracy, FWIoU, mean IoU)

`loss`: the held-out NLL per code of each task (pretrain/validation.py, as the trainer computes it).
REAL/GEN/HELD_OUT: a folder from tools/sample.py, a folder with an index or of media files, tars or index
files as preprocessing reads them, or a code-shard folder (with --vqgan). The extractors are the standard
TorchScript files, by path; nothing is downloaded. Results print as JSON with the protocol (counts,
resolution, resizing, each extractor file's SHA-256); --output also writes them to a file.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from evaluation import metrics
from evaluation.extractors import I3D, Clip, Inception, file_hash
from evaluation.media import MediaSet
from model.lpips import load_lpips
from model.pretrained import load_pretrained
from model.storage import atomic_write
from model.vqgan import VQGAN
from pretrain.cli import mistakes_end_in_one_line
from pretrain.config import load_config
from pretrain.validation import evaluate, model_tasks, validation_sets
from preprocess.text import CaptionTokenizer

RESIZE = {"media": "short side to the resolution (PIL bicubic), centre crop; videos: first clip at 2.5 fps",
          "inception": "PIL bicubic to 299x299, uint8", "i3d": "short side 224 (PIL bicubic), centre crop, [-1, 1]",
          "clip": "short side 224 (PIL bicubic), centre crop, CLIP mean/std"}


def held_out_loss(model_dir: str, config_path: str | None, overrides: list[str], device: str = "cpu") -> dict:
    model = load_pretrained(model_dir, device=device)
    config = load_config(config_path, overrides)
    config.model = model.config  # the model folder says what the model is; the config file gives the data
    sets = validation_sets(config, model_tasks(config), CaptionTokenizer(config.data.tokenizer))
    if not sets:
        raise ValueError("no held-out shards: set data.val_image_shards and/or data.val_video_shards")
    return evaluate(model, sets, config.data.micro_batch, config.trainer.eval_batches, torch.device(device))


def media_metric(args) -> dict:
    """fid | is | clipsim | fvd | vqgan from parsed arguments: the result and its protocol."""
    device = torch.device(args.device)
    vqgan = VQGAN.from_pretrained(args.vqgan).to(device).eval() if args.vqgan else None
    resolution = args.resolution or (vqgan.config.resolution if vqgan else 256)
    modality = "video" if args.command == "fvd" else args.modality

    def media(source: str) -> MediaSet:
        return MediaSet(source, modality, resolution, args.frames, vqgan, args.limit)

    extractors = {}

    def extractor(cls, name: str, *paths: str):
        extractors[name] = {"path": paths[0], "sha256": file_hash(paths[0])}
        return cls(*paths, device)

    sets = {}
    if args.command == "fid":
        sets = {"real": media(args.real), "generated": media(args.generated)}
        radii = tuple(float(r) for r in f"0,{args.blur}".split(",") if r) if args.blur else (0.0,)
        result = metrics.fid(sets["real"], sets["generated"], extractor(Inception, "inception", args.inception),
                             tuple(dict.fromkeys(radii)), args.batch_size)
    elif args.command == "is":
        sets = {"generated": media(args.generated)}
        result = metrics.inception_score_of(sets["generated"], extractor(Inception, "inception", args.inception),
                                            args.splits, args.batch_size)
    elif args.command == "clipsim":
        sets = {"generated": media(args.generated)}
        clip = extractor(Clip, "clip", args.clip, args.clip_vocab)
        extractors["clip_vocab"] = {"path": args.clip_vocab, "sha256": file_hash(args.clip_vocab)}
        result = metrics.clipsim(sets["generated"], clip, args.batch_size)
    elif args.command == "fvd":
        sets = {"real": media(args.real), "generated": media(args.generated)}
        result = metrics.fvd(sets["real"], sets["generated"], extractor(I3D, "i3d", args.i3d), args.batch_size)
    else:
        if vqgan is None:
            raise ValueError("vqgan needs --vqgan")
        classes = vqgan.config.num_classes
        modality = "seg" if classes else modality  # a VQ-GAN-Seg reads label maps
        sets = {"data": MediaSet(args.data, modality, resolution, args.frames, None, args.limit, classes)}
        inception = extractor(Inception, "inception", args.inception) if args.inception else None
        lpips = None if classes else load_lpips(args.lpips)
        result = metrics.reconstruction(sets["data"], vqgan, lpips, inception, args.batch_size)
        result["vqgan_fingerprint"] = vqgan.fingerprint()
    protocol = {"resolution": resolution, "modality": modality, "resize": {k: RESIZE[k] for k in ["media", *extractors]
                                                                            if k in RESIZE},
                "sources": {name: s.source for name, s in sets.items()},
                "skipped": {name: s.skipped for name, s in sets.items() if s.skipped}, "extractors": extractors}
    if modality == "video":
        protocol["frames"] = args.frames
    if args.command == "vqgan" and not vqgan.config.num_classes:
        protocol["lpips"] = args.lpips
    return {**result, "protocol": protocol}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    loss = commands.add_parser("loss", help="held-out NLL per code of each task")
    loss.add_argument("--model", required=True, help="a folder from tools/convert_checkpoint.py to-safetensors")
    loss.add_argument("--config", help="the pre-training config that names the held-out shards")
    loss.add_argument("--device", default="cpu")
    helps = {"fid": "FID (and blurred FID-k) between two sets", "is": "Inception Score of a set",
             "clipsim": "CLIP similarity of a set's media and their captions", "fvd": "FVD between two video sets",
             "vqgan": "a VQ-GAN's PSNR, SSIM, LPIPS and rFID on held-out media"}
    for name, text in helps.items():
        command = commands.add_parser(name, help=text)
        if name in ("fid", "fvd"):
            command.add_argument("--real", required=True)
        if name == "vqgan":
            command.add_argument("--data", required=True, help="held-out media (not codes)")
            command.add_argument("--lpips", default="auto", help="LPIPS weights: auto (stlpips-pytorch), none, or paths")
        else:
            command.add_argument("--generated", required=True)
        if name in ("fid", "is"):
            command.add_argument("--inception", required=True, help="inception-2015-12-05.pt")
        if name == "vqgan":
            command.add_argument("--inception", help="inception-2015-12-05.pt, for rFID")
        if name == "fid":
            command.add_argument("--blur", help="FID-k: comma-separated blur radii in pixels, e.g. 1,2,4,8")
        if name == "is":
            command.add_argument("--splits", type=int, default=10)
        if name == "clipsim":
            command.add_argument("--clip", required=True, help="ViT-B-32.pt")
            command.add_argument("--clip-vocab", required=True, help="bpe_simple_vocab_16e6.txt.gz")
        if name == "fvd":
            command.add_argument("--i3d", required=True, help="i3d_torchscript.pt")
        command.add_argument("--vqgan", required=name == "vqgan", help="VQ-GAN folder (to decode code shards)")
        command.add_argument("--modality", choices=("image", "video"), default="image",
                             help="what the sets hold (fvd: video); video frames count as images for fid/is/clipsim")
        command.add_argument("--resolution", type=int, help="pixels (default: the VQ-GAN's, else 256)")
        command.add_argument("--frames", type=int, default=10, help="frames per video clip")
        command.add_argument("--limit", type=int, help="the first N items of each set")
        command.add_argument("--batch-size", type=int, default=32)
        command.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        command.add_argument("--output", help="also write the JSON result here")
    args, overrides = parser.parse_known_args(argv)
    if overrides and args.command != "loss":
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    with mistakes_end_in_one_line("evaluate"):
        if args.command == "loss":
            result = held_out_loss(args.model, args.config, overrides, args.device)
        else:
            result = media_metric(args)
        text = json.dumps(result, indent=1)
        if getattr(args, "output", None):
            atomic_write(args.output, text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
