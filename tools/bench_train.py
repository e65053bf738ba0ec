"""Training throughput: tokens/s of a forward+backward+AdamW step, the model with 3DNA (the blocked
backend; on CUDA also flex and fused) beside the same model with dense masked attention (the reference),
and their MFU where the peak is known (a GPU of model/flops.py's table, or --peak-tflops); with
`--options`, a second table puts the speed options of the blocked model side by side: torch.compile
of the blocks, and activation checkpointing of whole blocks or of attention only, with MFU.

    python tools/bench_train.py                   # the CPU table in docs/benchmarks.md
    python tools/bench_train.py --configs mid --steps 5 --options
    python tools/bench_train.py --device cuda --dtype bf16 --configs mid paper --options
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from model.config import NuwaConfig
from model.flops import peak_tflops, training_flops
from model.nuwa import Nuwa

CONFIGS = {  # name → (preset overrides, task grid, micro-batch)
    "tiny": (dict(), (4, 8, 8), 4),
    "mid": (dict(width=512, heads=8, encoder_layers=2, decoder_layers=6, frames=10, grid_height=21,
                 grid_width=21, codebook_size=1024), (10, 21, 21), 1),
    "paper": (dict(preset="nuwa-336"), (10, 21, 21), 2),  # the 870M model on its T2V grid (GPU only)
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
OPTIONS = {"eager": {}, "compile": dict(compile=True), "checkpoint full": dict(activation_checkpointing="full"),
           "checkpoint attention": dict(activation_checkpointing="attention")}


def tokens_per_second(config: NuwaConfig, grid, batch: int, steps: int, device: torch.device, dtype) -> tuple:
    """(tokens/s, peak GiB allocated on CUDA or None); weights and Adam states fp32, compute in `dtype`."""
    torch.manual_seed(0)
    model = Nuwa(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    text = torch.randint(0, config.text_vocab_size, (batch, config.text_length), device=device)
    codes = torch.randint(0, config.codebook_size, (batch, *grid), device=device)
    times = []
    for i in range(steps + 1):  # the first step builds the 3DNA plan / mask caches (and compiles)
        if i == 1 and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            _, loss = model(text, codes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return codes.numel() / statistics.median(times), peak


def build(name: str) -> tuple[NuwaConfig, tuple[int, int, int], int]:
    overrides, grid, batch = CONFIGS[name]
    overrides = dict(overrides)
    return NuwaConfig.from_preset(overrides.pop("preset", "tiny"), **overrides), grid, batch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "mid"], choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast compute precision")
    parser.add_argument("--options", action="store_true", help="also the speed options table, with MFU")
    parser.add_argument("--peak-tflops", type=float, help="peak for MFU (default: model/flops.py's GPU table)")
    args = parser.parse_args()
    device = torch.device(args.device)
    backends = ["reference", "blocked"] + (["flex", "fused"] if device.type == "cuda" else [])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    peak = args.peak_tflops or (peak_tflops(where) if device.type == "cuda" else None)
    print(f"train step (forward + backward + AdamW), {args.dtype}, {where}; speed-up = tok/s over the reference's"
          + ("; GiB = peak allocated" if device.type == "cuda" else "")
          + (f"; MFU against {peak:g} TFLOP/s" if peak else ""))
    print(f"{'config':>6} {'params':>8} {'grid':>12} {'batch':>5} | "
          + " ".join(f"{b + ' tok/s':>15}" for b in backends) + " | "
          + " ".join(f"{b + ' speed-up':>16}" for b in backends[1:])
          + (" | " + " ".join(f"{b + ' MFU':>13}" for b in backends) if peak else "")
          + (" | " + " ".join(f"{b + ' GiB':>13}" for b in backends) if device.type == "cuda" else ""))
    for name in args.configs:
        config, grid, batch = build(name)
        with torch.device("meta"):
            params = Nuwa(config).num_parameters(exclude_embeddings=False)
        results = {b: tokens_per_second(config.replace(attention_backend=b), grid, batch, args.steps, device,
                                        DTYPES[args.dtype]) for b in backends}
        rate_ref = results["reference"][0]
        per_token = training_flops(config, grid) / math.prod(grid)
        print(f"{name:>6} {params / 1e6:7.1f}M {'x'.join(map(str, grid)):>12} {batch:>5} | "
              + " ".join(f"{results[b][0]:15.0f}" for b in backends) + " | "
              + " ".join(f"{results[b][0] / rate_ref:15.1f}x" for b in backends[1:])
              + (" | " + " ".join(f"{results[b][0] * per_token / (peak * 1e12):13.1%}" for b in backends) if peak
                 else "")
              + (" | " + " ".join(f"{results[b][1]:13.1f}" for b in backends) if device.type == "cuda" else ""))
    if args.options:
        print(f"\nspeed options of the blocked model, {args.dtype}, {where}; MFU against "
              + (f"{peak:g} TFLOP/s" if peak else "no known peak (--peak-tflops)"))
        print(f"{'config':>6} {'option':>21} {'tok/s':>9} {'vs eager':>9} {'MFU':>7}"
              + (f" {'GiB':>6}" if device.type == "cuda" else ""))
        for name in args.configs:
            config, grid, batch = build(name)
            per_token = training_flops(config, grid) / math.prod(grid)
            eager = None
            for option, changes in OPTIONS.items():
                rate, gib = tokens_per_second(config.replace(attention_backend="blocked", **changes), grid, batch,
                                              args.steps, device, DTYPES[args.dtype])
                eager = eager or rate
                mfu = f"{rate * per_token / (peak * 1e12):7.1%}" if peak else f"{'-':>7}"
                print(f"{name:>6} {option:>21} {rate:9.0f} {rate / eager:8.2f}x {mfu}"
                      + (f" {gib:6.1f}" if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
