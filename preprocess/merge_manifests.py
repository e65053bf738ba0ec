"""Join the manifests that `--num-splits K` runs wrote into one folder into its manifest.json.

    python preprocess/merge_manifests.py codes/images

Refuses (and writes nothing) when a split is missing or was run twice, or when the splits
disagree on settings (VQ-GAN, tokenizer, sampling). The result equals the manifest of a
single run over the whole dataset.
"""
import preprocess  # noqa: F401  (first: see preprocess/__init__.py)
import argparse
import json
from pathlib import Path

from preprocess.cli import errors_in_one_line
from preprocess.shards import MANIFEST, ShardWriter, merge_manifests


def merge_folder(folder: str | Path) -> dict:
    """Merge every manifest.split-*.json in `folder` into `folder`/manifest.json; returns it."""
    paths = sorted(Path(folder).glob("manifest.split-*.json"))
    manifest = merge_manifests([json.loads(p.read_text(encoding="utf-8")) for p in paths])
    missing = [s["name"] for s in manifest["shards"] if not (Path(folder) / s["name"]).is_dir()]
    if missing:
        raise ValueError(f"{folder} lacks {len(missing)} shards listed by the splits, e.g. {missing[:3]}")
    ShardWriter(folder).write_manifest(manifest, MANIFEST)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="shard folder holding the outputs of all splits")
    folder = parser.parse_args(argv).folder
    with errors_in_one_line("merge_manifests"):
        manifest = merge_folder(folder)
    print(f"merged {len(manifest['units'])} units: "
          f"{manifest['num_samples']} samples, {manifest['num_skipped']} skipped → {Path(folder) / MANIFEST}")


if __name__ == "__main__":
    main()
