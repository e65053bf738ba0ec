"""Opening a big shard set as the trainer does: time and resident memory, manifest format /2 beside /1.

    python tools/bench_shards.py                          # 1M samples, 1M skipped inputs (docs/benchmarks.md)
    python tools/bench_shards.py --samples 100000 --skipped 0

Writes `--samples` image samples (1×8×8 codes, a 77-id caption) in shards of `--shard-size`, with
`--skipped` skip records, then opens them in a fresh process the way each training rank does
(ShardDataset + the T2I TaskDataset, which reads every caption length) and reads random samples.
The same shards are opened once with the details in manifest.json (format /1, as before) and once
with them in details.json (format /2); the table prints both.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from preprocess.shards import DETAILS, MANIFEST, ShardWriter, make_manifest, shard_name

HEADER = {"modality": "image", "resolution": 64, "grid": [1, 8, 8], "text_length": 77, "codebook_size": 512,
          "vqgan_fingerprint": "bench", "tokenizer_fingerprint": "bench", "tokenizer_vocab_size": 512}
OPEN = """
import json, sys, time
import numpy as np, psutil
from preprocess.shards import ShardDataset
from pretrain.data import TaskDataset
process = psutil.Process()
before = process.memory_info().rss
start = time.perf_counter()
dataset = TaskDataset(ShardDataset(sys.argv[1]), "t2i", np.zeros(77, np.int32))
opened = time.perf_counter() - start
at_open = process.memory_info().rss - before
rng = np.random.default_rng(0)
start = time.perf_counter()
for i in rng.integers(0, len(dataset), 20000):
    dataset[int(i)]
rate = 20000 / (time.perf_counter() - start)
after = process.memory_info().rss - before  # with the memory-mapped pages 20,000 random reads touched
print(json.dumps({"samples": len(dataset), "open_s": opened, "open_mib": at_open / 2**20,
                  "after_mib": after / 2**20, "rate": rate}))
"""


def write(folder: Path, samples: int, shard_size: int, skipped: int) -> dict:
    """The shard set (format /2) and the manifest that make_manifest gives it."""
    writer = ShardWriter(folder)
    rng = np.random.default_rng(0)
    records = []
    for unit, first in enumerate(tqdm(range(0, samples, shard_size), desc="shards", unit="shard")):
        n = min(shard_size, samples - first)
        name = shard_name(unit, 0)
        writer.write_shard(name, rng.integers(0, 512, (n, 1, 8, 8)).astype(np.uint16),
                           rng.integers(1, 512, (n, 77)).astype(np.int32), np.full(n, 12, np.int32),
                           [f"{unit:05d}{i:06d}" for i in range(n)])
        bad = skipped // -(-samples // shard_size)
        records.append({"unit": unit, "source": f"{unit:05d}.tar", "rows": None, "num_inputs": n + bad,
                        "num_inputs_used": n, "shards": [{"name": name, "num_samples": n}],
                        "skipped": [{"key": f"bad{unit}-{i}", "reason": "corrupt_image", "detail": "cannot identify "
                                     "image file"} for i in range(bad)], "captions": {}})
    manifest = make_manifest(HEADER, records)
    writer.write_manifest(manifest)
    return manifest


def measure(folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", OPEN, str(folder)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--skipped", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-shards"))
    args = parser.parse_args(argv)
    shutil.rmtree(args.output, ignore_errors=True)
    started = time.perf_counter()
    manifest = write(args.output / "v2", args.samples, args.shard_size, args.skipped)
    # Format /1: the same shards, with every detail inline in manifest.json.
    (args.output / "v1").mkdir()
    for shard in manifest["shards"]:
        (args.output / "v1" / shard["name"]).symlink_to((args.output / "v2" / shard["name"]).resolve())
    (args.output / "v1" / MANIFEST).write_text(json.dumps({**manifest, "format": "nuwa-code-shards/1"}))
    print(f"wrote {args.samples:,} samples, {manifest['num_skipped']:,} skip records in "
          f"{len(manifest['shards'])} shards in {time.perf_counter() - started:.0f}s")
    print(f"{'format':<8}{'manifest.json MiB':>18}{'open s':>9}{'RSS at open MiB':>17}{'after reads MiB':>17}"
          f"{'samples/s':>11}")
    for version in ("v1", "v2"):
        result = measure(args.output / version)
        size = (args.output / version / MANIFEST).stat().st_size / 2**20
        print(f"{'/' + version[1]:<8}{size:18.1f}{result['open_s']:9.2f}{result['open_mib']:17.0f}"
              f"{result['after_mib']:17.0f}{result['rate']:11.0f}")
    print(f"details.json: {(args.output / 'v2' / DETAILS).stat().st_size / 2**20:.1f} MiB, read by no training rank")


if __name__ == "__main__":
    main()
