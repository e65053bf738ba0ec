"""World sizes far from 2, on CPU: 16 ranks with ZeRO-3, a universal checkpoint, 4 ranks resume it.

    python tools/demo.py                     # once: its code shards and tokenizer are the data here
    python tools/scale_check.py              # ~10 minutes on a 2-core CPU (docs/benchmarks.md)

Trains the tiny model (configs/cpu-smoke.yaml) on 16 CPU ranks under torchrun for `--steps`,
checkpointing half-way; converts that checkpoint to a universal one; resumes it on 4 ranks with the
same global batch (4× the micro-batches); and checks that the 4-rank run continues the 16-rank run's
losses within float rounding. Bugs that hide at 2 ranks (partitions that do not divide, ranks with
empty partitions, data positions past a small shard) show here. Prints both runs' losses, their
time and rank 0's peak resident memory; exits 1 when the losses part.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pretrain.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]


def train(world: int, out: Path, steps: int, scale: int, extra: list[str]) -> float:
    """Run pretrain/main.py on `world` CPU ranks; micro-batches are the smoke config's × `scale`."""
    micro = {"t2i": 2 * scale, "v2v": scale, "t2v": scale}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
               str(free_port()), "pretrain/main.py", "--config", "configs/cpu-smoke.yaml",
               "--trainer.ds_config", "ds_configs/zero3.json", "--trainer.output_dir", str(out),
               "--trainer.steps", str(steps), "--trainer.checkpoint_every", str(steps // 2),
               "--trainer.log_every", "1", "--data.micro_batch", json.dumps(micro), "--data.num_workers", "0",
               *extra]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env={"OMP_NUM_THREADS": "1", **os.environ})
    return time.perf_counter() - started


def losses(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "scale-check")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--ranks", type=int, nargs=2, default=[16, 4], metavar=("FROM", "TO"))
    args = parser.parse_args(argv)
    big, small = args.ranks
    if big % small:
        raise SystemExit(f"--ranks {big} {small}: the second must divide the first to keep the global batch")
    shutil.rmtree(args.output, ignore_errors=True)
    full, resumed = args.output / f"{big}-ranks", args.output / f"{small}-ranks"
    seconds_full = train(big, full, args.steps, 1, [])
    half = full / "checkpoints" / f"step-{args.steps // 2:08d}"
    universal = resumed / "checkpoints" / half.name
    started = time.perf_counter()
    subprocess.run([sys.executable, "tools/convert_checkpoint.py", "to-universal", str(half), str(universal)],
                   cwd=ROOT, check=True)
    seconds_convert = time.perf_counter() - started
    seconds_resumed = train(small, resumed, args.steps, big // small, ["--resume", "auto"])
    a, b = losses(full), losses(resumed)
    worst = 0.0
    print(f"{'step':>5} {f'{big} ranks':>12} {f'{small} ranks':>12}")
    for step in sorted(b):
        worst = max(worst, abs(a[step]["loss"] - b[step]["loss"]) / abs(a[step]["loss"]))
        print(f"{step:>5} {a[step]['loss']:12.6f} {b[step]['loss']:12.6f}")
    peak = max(r["memory/cpu_rss_peak_gib"] for r in a.values())
    print(f"scale check: {big} ranks ZeRO-3 {args.steps} steps in {seconds_full:.0f}s (rank 0 peak RSS {peak:.2f} GiB), "
          f"universal conversion {seconds_convert:.0f}s, {small} ranks resumed {sorted(b)[0]}..{sorted(b)[-1]} in "
          f"{seconds_resumed:.0f}s; largest relative loss difference {worst:.1e}")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
