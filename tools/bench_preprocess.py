"""Preprocessing throughput and memory: how close tokenization runs to the decoder's own limit.

    python tools/bench_preprocess.py            # ~3 min on 2 CPU cores

Makes demo media (JPEG images and 10 s MP4 videos at --image-size), then for images and videos
with 1 and 2 decoding workers measures (a) the whole pipeline, preprocess/tokenize.py's
tokenize_dataset with the VQ-GAN (the tiny preset unless --vqgan is given), and (b) decoding
alone (the same DecodeStream, no VQ-GAN), both in samples/s including start-up. Then decodes
--memory-videos videos in one process, as a long run's worker does, and prints its resident
memory along the way: decord's readers are opened and released per video, so it must stay flat.
"""
from __future__ import annotations

import argparse
import glob
import tempfile
import time
from pathlib import Path

import psutil
import torch
from torch.utils.data import DataLoader

from model.vqgan import VQGAN, VQGANConfig
from preprocess.pipeline import DecodeStream, TokenizeConfig, tokenize_dataset
from preprocess.readers import list_units
from preprocess.train_tokenizer import train_tokenizer
from tools.make_demo_data import DemoDataConfig, make_demo_data


def decode_rate(inputs: list[str], config: TokenizeConfig, resolution: int) -> float:
    """Samples/s of the decoding workers alone."""
    started = time.perf_counter()
    units = list(enumerate(list_units(inputs, config.shard_size)))
    stream = DecodeStream(units, config.modality, resolution, config.sampling, config.batch_size)
    workers = min(config.workers, len(units))
    loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None)
    count = sum(len(chunk["keys"]) for chunk in loader)
    return count / (time.perf_counter() - started)


def pipeline_rate(config: TokenizeConfig) -> float:
    """Samples/s of a fresh tokenization run."""
    started = time.perf_counter()
    manifest = tokenize_dataset(config)
    return manifest["num_samples"] / (time.perf_counter() - started)


def memory_trace(inputs: list[str], config: TokenizeConfig, resolution: int, videos: int,
                 every: int) -> list[tuple[int, float]]:
    """(videos decoded, resident MiB) while one process decodes `videos` videos, cycling over the inputs."""
    units = list(enumerate(list_units(inputs, config.shard_size)))
    stream = DecodeStream(units, "video", resolution, config.sampling, chunk_size=1)
    process = psutil.Process()
    trace, done = [], 0
    while done < videos:
        for chunk in stream:
            done += len(chunk["keys"])
            if done % every == 0 and chunk["keys"]:
                trace.append((done, process.memory_info().rss / 2**20))
            if done >= videos:
                break
    return trace


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--videos", type=int, default=120)
    parser.add_argument("--image-size", type=int, default=256, help="side of the source media in pixels")
    parser.add_argument("--samples-per-tar", type=int, default=20)
    parser.add_argument("--vqgan", default=None, help="VQ-GAN folder (default: a fresh tiny one)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="where the VQ-GAN runs")
    parser.add_argument("--memory-videos", type=int, default=2000)
    parser.add_argument("--workdir", default=None, help="keep the data here (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        data = work / "data"
        if not (data / "dataset.json").exists():
            make_demo_data(DemoDataConfig(image_size=args.image_size, num_images=args.images, num_videos=args.videos,
                                          heldout_fraction=0.0, samples_per_tar=args.samples_per_tar), data)
        vqgan_dir = args.vqgan or str(work / "vqgan")
        if args.vqgan is None:
            torch.manual_seed(0)
            VQGAN(VQGANConfig.from_preset("tiny")).save_pretrained(vqgan_dir)
        resolution = VQGAN.from_pretrained(vqgan_dir).config.resolution
        inputs = {m: sorted(glob.glob(str(data / f"{m}s/train/*.tar"))) for m in ("image", "video")}
        tokenizer = train_tokenizer(inputs["image"], work / "tokenizer", vocab_size=200)

        rows = []
        for modality in ("image", "video"):
            for workers in (1, 2):
                config = TokenizeConfig(modality, inputs[modality], str(work / f"codes-{modality}-{workers}"),
                                        vqgan_dir, tokenizer.model_file, workers=workers, batch_size=args.batch_size,
                                        device=args.device)
                decoded = decode_rate(inputs[modality], config, resolution)
                full = pipeline_rate(config)
                rows.append((modality, workers, full, decoded))
        trace = memory_trace(inputs["video"], TokenizeConfig("video", [], "", "", ""), resolution,
                             args.memory_videos, every=max(1, args.memory_videos // 10))

    print(f"\n{args.images} images and {args.videos} videos of {args.image_size}² px in "
          f"{len(inputs['image']) + len(inputs['video'])} tars → {resolution}² px, "
          f"VQ-GAN {vqgan_dir if args.vqgan else 'tiny'}, "
          f"batch {args.batch_size} on {args.device}, {psutil.cpu_count()} CPU cores")
    print(f"{'modality':<9}{'workers':>8}{'pipeline samples/s':>21}{'decode-only samples/s':>24}"
          f"{'pipeline/decode':>17}")
    for modality, workers, full, decoded in rows:
        print(f"{modality:<9}{workers:>8}{full:>21.1f}{decoded:>24.1f}{full / decoded:>16.0%}")
    print("\nresident memory of one decoding process (videos decoded: MiB):")
    print("  " + ", ".join(f"{n}: {mib:.0f}" for n, mib in trace))
    first, last = trace[0][1], trace[-1][1]
    print(f"  growth after the first {trace[0][0]} videos: {last - first:+.1f} MiB "
          f"over {trace[-1][0] - trace[0][0]} videos")


if __name__ == "__main__":
    main()
