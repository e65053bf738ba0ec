"""Training throughput on this machine: tokens/s of a forward+backward+AdamW step, the model with
3DNA (the blocked backend) beside the same model with dense masked attention (the reference).

    python tools/bench_train.py                   # the README table
    python tools/bench_train.py --configs mid --steps 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from model.config import NuwaConfig
from model.nuwa import Nuwa

CONFIGS = {  # name → (preset overrides, task grid, micro-batch)
    "tiny": (dict(), (4, 8, 8), 4),
    "mid": (dict(width=512, heads=8, encoder_layers=2, decoder_layers=6, frames=10, grid_height=21,
                 grid_width=21, codebook_size=1024), (10, 21, 21), 1),
}


def tokens_per_second(config: NuwaConfig, grid, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = Nuwa(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    text = torch.randint(0, config.text_vocab_size, (batch, config.text_length))
    codes = torch.randint(0, config.codebook_size, (batch, *grid))
    times = []
    for i in range(steps + 1):  # the first step builds the 3DNA plan / mask caches
        start = time.perf_counter()
        _, loss = model(text, codes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    return codes.numel() / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(f"train step (forward + backward + AdamW), fp32, {torch.get_num_threads()} threads")
    print(f"{'config':>6} {'params':>8} {'grid':>12} {'batch':>5} | {'dense tok/s':>11} {'3DNA tok/s':>10} {'speed-up':>8}")
    for name in args.configs:
        overrides, grid, batch = CONFIGS[name]
        config = NuwaConfig.from_preset("tiny", **overrides)
        with torch.device("meta"):
            params = Nuwa(config).num_parameters(exclude_embeddings=False)
        dense = tokens_per_second(config.replace(attention_backend="reference"), grid, batch, args.steps)
        nearby = tokens_per_second(config.replace(attention_backend="blocked"), grid, batch, args.steps)
        print(f"{name:>6} {params / 1e6:7.1f}M {'x'.join(map(str, grid)):>12} {batch:>5} | {dense:11.0f} "
              f"{nearby:10.0f} {nearby / dense:7.1f}x")


if __name__ == "__main__":
    main()
