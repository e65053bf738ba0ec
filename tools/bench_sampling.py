"""Benchmark sampling: KV-cached decoding (each new token reads its 3DNA window) vs recomputing
the whole decoder for every token. Same model, seed and tokens; prints tokens/s side by side.

    python tools/bench_sampling.py                   # the CPU table in docs/benchmarks.md
    python tools/bench_sampling.py --width 256 --grid 8 --frames 1 4
    python tools/bench_sampling.py --device cuda --frames 1 4
"""
from __future__ import annotations

import argparse
import time

import torch

from model.config import NuwaConfig
from model.nuwa import Nuwa
from model.sampling import SamplingConfig, generate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (encoder: half)")
    parser.add_argument("--grid", type=int, default=8, help="codes per side of a frame")
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = NuwaConfig.from_preset("tiny", width=args.width, heads=args.width // 64, decoder_layers=args.layers,
                                    encoder_layers=max(1, args.layers // 2), frames=max(args.frames),
                                    grid_height=args.grid, grid_width=args.grid, codebook_size=1024)
    model = Nuwa(config).to(device).eval()
    text = torch.randint(0, config.text_vocab_size, (args.batch, config.text_length), device=device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"sampling, width {args.width}, {args.layers} decoder layers, batch {args.batch}, top-k 64, fp32, {where}")
    print(f"{'grid':>10} | {'uncached tok/s':>14} {'cached tok/s':>12} {'speed-up':>8} | same tokens")
    for frames in args.frames:
        grid = (frames, args.grid, args.grid)
        rates, outputs = [], []
        for use_cache in (False, True):
            start = time.perf_counter()
            codes = generate(model, text, grid, sampling=SamplingConfig(top_k=64),
                             generator=torch.Generator(device).manual_seed(0), use_cache=use_cache)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(codes.numel() / (time.perf_counter() - start))
            outputs.append(codes)
        print(f"{f'{frames}x{args.grid}x{args.grid}':>10} | {rates[0]:14.1f} {rates[1]:12.1f} "
              f"{rates[1] / rates[0]:7.1f}x | {torch.equal(*outputs)}")


if __name__ == "__main__":
    main()
