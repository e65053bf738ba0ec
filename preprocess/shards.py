"""Code shards: the on-disk contract between preprocessing (writer) and training (reader).

One folder per dataset and modality::

    manifest.json                  totals, shapes, dtypes, identities, counts of skips, shard list
    details.json                   every skipped input, caption issue and unit record (kept out of
                                   manifest.json, which every training rank reads at start-up)
    settings.json                  what fixes the bytes (identities, sampling, shard size, units);
                                   a re-run with other settings is refused
    shard-UUUUU-PPPP/              part PPPP of input unit UUUUU (a tar, or a block of index rows)
        codes.npy                  uint16 [n, S, H, W]   VQ codes, S = 1 for images
        text.npy                   int32  [n, 77]        caption ids, padded
        text_len.npy               int32  [n]            0 = no caption (V2V only)
        sketch.npy                 uint16 [n, S, H', W'] VQ-GAN-Seg codes of the label maps (format /3 only)
        keys.json                  [n] sample keys
    unit-UUUUU.json                record of a finished unit: its shards, skips, caption issues
    manifest.split-IIIII-of-KKKKK.json   instead of manifest.json when a run is one of K splits
                                   (whole: details included)

manifest.json fields: modality, resolution, grid [S, H, W], text_length, codebook_size,
vqgan_fingerprint, tokenizer_fingerprint, tokenizer_vocab_size, none_text_ids (the encoded
V2V condition "None"), sampling (video clips), codes_dtype, text_dtype, format; num_samples,
num_inputs, num_inputs_used, num_skipped (num_inputs = num_inputs_used + num_skipped; a video
may give several samples), skipped_by_reason, captions_by_issue (those samples are kept),
shards [{name, num_samples}] in global order, details (the file name), and split {index, count,
num_units} in a split's manifest. details.json: skipped {reason: [{key, source, detail}]},
captions {caption_missing | caption_non_utf8: [keys]}, units (the per-unit records). Shards of
format /1, with the details inline in manifest.json, still read. Format /3 adds the sketch codes of
label maps (the paper's S2I/S2V inputs): `sketch.npy` in every shard and the manifest field `sketch`
{vqgan_fingerprint, num_classes, codebook_size, grid}; shards without sketches stay /2.

Global sample order is unit order, then part, then position; `ShardDataset[i]` maps a global
index to its shard through the cumulative counts of the manifest's shard list, and reads it
through numpy memmaps. Every file and shard folder is written under a temporary name and
renamed when complete, so a killed run leaves nothing that looks finished; a re-run deletes
the temporaries, skips finished units and shards, and writes the same bytes (fixed dtypes,
sorted JSON, no times). Splits own disjoint units, so their manifests merge exactly
(`merge_manifests`) into what one run would have written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model.storage import atomic_path, atomic_write, changed_settings, remove

FORMAT = "nuwa-code-shards/2"
SKETCH_FORMAT = "nuwa-code-shards/3"
READABLE_FORMATS = ("nuwa-code-shards/1", FORMAT, SKETCH_FORMAT)
"""/1 held the per-input details in manifest.json itself; /2 keeps them in details.json; /3 is /2 with sketch
codes beside the visual codes."""
CODES_DTYPE = "uint16"
TEXT_DTYPE = "int32"
MANIFEST = "manifest.json"
DETAILS = "details.json"
DETAIL_FIELDS = ("skipped", "captions", "units")
"""Per-input records (every skip, every caption issue's keys, every unit): none of the trainer's business."""
SETTINGS = "settings.json"
TMP_PREFIX = ".tmp-"


def shard_name(unit: int, part: int) -> str:
    return f"shard-{unit:05d}-{part:04d}"


def split_manifest_name(split: int, num_splits: int) -> str:
    return f"manifest.split-{split:05d}-of-{num_splits:05d}.json"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


class ShardWriter:
    """Writes shards, unit records and manifests into one folder, each complete or not at all."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def remove_temporaries(self, units: list[int] | None = None) -> list[str]:
        """Delete what a killed run left half-written, all of it or that of `units` only (another
        split may be writing its own units into this folder); returns the names removed."""
        patterns = [f"{TMP_PREFIX}*"] if units is None else [
            f"{TMP_PREFIX}{stem}*" for u in units for stem in (shard_name(u, 0)[:-4], self.unit_path(u).name)]
        removed = sorted({p.name for pattern in patterns for p in self.folder.glob(pattern)})
        for name in removed:
            remove(self.folder / name)
        return removed

    def check_settings(self, settings: dict) -> None:
        """Record the settings on the first run; refuse to add to output made with other ones."""
        path = self.folder / SETTINGS
        differ = changed_settings(path, settings)
        if differ:
            raise ValueError(f"{self.folder} was written with other settings ({', '.join(differ)} differ); "
                             f"use a new output folder or delete it")
        if not path.exists():
            atomic_write(path, _dumps(settings), prefix=TMP_PREFIX)

    def has_shard(self, name: str) -> bool:
        return (self.folder / name).is_dir()

    def write_shard(self, name: str, codes: np.ndarray, text: np.ndarray, text_len: np.ndarray,
                    keys: list[str], sketch: np.ndarray | None = None) -> None:
        """Write one shard folder atomically (temporary folder, then rename)."""
        n = len(keys)
        if not (codes.shape[0] == text.shape[0] == text_len.shape[0] == n) or codes.ndim != 4 or (
                sketch is not None and (sketch.shape[:2] != codes.shape[:2] or sketch.ndim != 4)):
            raise ValueError(f"{name}: inconsistent shapes codes {codes.shape}, text {text.shape}, "
                             f"text_len {text_len.shape}, sketch {None if sketch is None else sketch.shape}, {n} keys")
        with atomic_path(self.folder / name, prefix=TMP_PREFIX) as tmp:
            tmp.mkdir()
            np.save(tmp / "codes.npy", np.ascontiguousarray(codes, dtype=CODES_DTYPE))
            np.save(tmp / "text.npy", np.ascontiguousarray(text, dtype=TEXT_DTYPE))
            np.save(tmp / "text_len.npy", np.ascontiguousarray(text_len, dtype=TEXT_DTYPE))
            if sketch is not None:
                np.save(tmp / "sketch.npy", np.ascontiguousarray(sketch, dtype=CODES_DTYPE))
            (tmp / "keys.json").write_text(_dumps(list(keys)), encoding="utf-8")

    def unit_path(self, unit: int) -> Path:
        return self.folder / f"unit-{unit:05d}.json"

    def has_unit(self, unit: int) -> bool:
        return self.unit_path(unit).exists()

    def write_unit(self, record: dict) -> None:
        atomic_write(self.unit_path(record["unit"]), _dumps(record), prefix=TMP_PREFIX)

    def read_unit(self, unit: int) -> dict:
        return json.loads(self.unit_path(unit).read_text(encoding="utf-8"))

    def write_manifest(self, manifest: dict, name: str = MANIFEST) -> Path:
        """The final manifest goes out in two files, so that what every rank reads at start-up does not grow
        with the number of inputs: DETAILS first, then manifest.json (the completion marker) naming it. A
        split's manifest stays whole: it is merged, never trained on."""
        path = self.folder / name
        if name == MANIFEST:
            atomic_write(self.folder / DETAILS, _dumps({k: manifest[k] for k in DETAIL_FIELDS}), prefix=TMP_PREFIX)
            manifest = {**{k: v for k, v in manifest.items() if k not in DETAIL_FIELDS}, "details": DETAILS}
        atomic_write(path, _dumps(manifest), prefix=TMP_PREFIX)
        return path


def _normalise(value: Any) -> Any:
    """Tuples become lists, as in JSON, so that settings and fields compare with what was read back."""
    return json.loads(json.dumps(value))


def make_manifest(header: dict, units: list[dict]) -> dict:
    """The manifest of `units` (records as written by the pipeline, in unit order) under `header`
    (format fields, identities, shapes). Totals and the shard list are derived from the records."""
    skipped: dict[str, list[dict]] = {}
    captions: dict[str, list[str]] = {}
    for record in units:
        for skip in record["skipped"]:
            skipped.setdefault(skip["reason"], []).append({"key": skip["key"], "source": record["source"],
                                                           "detail": skip["detail"]})
        for issue, keys in record["captions"].items():
            captions.setdefault(issue, []).extend(keys)
    shards = [shard for record in units for shard in record["shards"]]
    return {
        **_normalise(header),
        "format": SKETCH_FORMAT if header.get("sketch") else FORMAT,
        "codes_dtype": CODES_DTYPE,
        "text_dtype": TEXT_DTYPE,
        "num_samples": sum(s["num_samples"] for s in shards),
        "num_inputs": sum(r["num_inputs"] for r in units),
        "num_inputs_used": sum(r["num_inputs_used"] for r in units),
        "num_skipped": sum(len(v) for v in skipped.values()),
        "skipped_by_reason": {reason: len(items) for reason, items in sorted(skipped.items())},
        "skipped": skipped,
        "captions_by_issue": {issue: len(keys) for issue, keys in sorted(captions.items())},
        "captions": captions,
        "shards": shards,
        "units": units,
    }


def merge_manifests(manifests: list[dict]) -> dict:
    """Join the manifests of the K splits of one run into the manifest of the whole run.

    Raises ValueError when they disagree on anything but their units, or when units are missing
    or present twice (a split not run, or run twice)."""
    if not manifests:
        raise ValueError("no split manifests to merge")
    derived = set(make_manifest({}, []))
    headers = [{k: v for k, v in m.items() if k not in derived and k != "split"} for m in manifests]
    for other in headers[1:]:
        differ = sorted(k for k in set(headers[0]) | set(other) if headers[0].get(k) != other.get(k))
        if differ:
            raise ValueError(f"split manifests disagree on {', '.join(differ)}")
    splits = sorted((m["split"]["index"], m["split"]["count"], m["split"]["num_units"]) for m in manifests)
    count, num_units = splits[0][1], splits[0][2]
    if [s[0] for s in splits] != list(range(count)) or any(s[1:] != (count, num_units) for s in splits):
        raise ValueError(f"expected splits 0..{count - 1} of {count} once each, got {[s[:2] for s in splits]}")
    units = sorted((u for m in manifests for u in m["units"]), key=lambda u: u["unit"])
    if [u["unit"] for u in units] != list(range(num_units)):
        raise ValueError(f"the splits hold units {[u['unit'] for u in units]}, expected 0..{num_units - 1}")
    return make_manifest(headers[0], units)


class ShardDataset:
    """Random access to code shards by global sample index (memmapped, opened on first use).

    `ds[i]` → {"codes": uint16 [S, H, W], "text": int32 [77], "text_len": int}, plus "sketch": uint16
    [S, H', W'] in shards that hold sketch codes (`ds.has_sketch`); `ds.key(i)` → its key (read from the
    shard's keys.json on first use: the training path never needs it)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.exists():
            splits = sorted(p.name for p in self.folder.glob("manifest.split-*.json"))
            hint = f"; merge the split manifests {splits} with preprocess/merge_manifests.py" if splits else ""
            raise FileNotFoundError(f"{path} not found{hint}")
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        if self.manifest.get("format") not in READABLE_FORMATS:
            raise ValueError(f"{path}: format {self.manifest.get('format')!r}, expected one of {READABLE_FORMATS}")
        self.shards = [s["name"] for s in self.manifest["shards"]]
        self.offsets = np.cumsum([0] + [s["num_samples"] for s in self.manifest["shards"]])
        self.has_sketch = bool(self.manifest.get("sketch"))
        self._arrays: dict[int, tuple[np.ndarray, ...]] = {}
        self._keys: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def text_lengths(self) -> np.ndarray:
        """int32 [len(self)]: caption length of every sample (0 = none), in global order."""
        if len(self.shards) == 0:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate([self._open(shard)[2] for shard in range(len(self.shards))])

    def locate(self, index: int) -> tuple[int, int]:
        """Global index → (shard number, row in that shard)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples in {self.folder}")
        index %= len(self)
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return shard, index - int(self.offsets[shard])

    def _open(self, shard: int) -> tuple[np.ndarray, ...]:
        """(codes, text, text_len[, sketch]) of one shard, memmapped."""
        if shard not in self._arrays:
            folder = self.folder / self.shards[shard]
            names = ("codes", "text", "text_len") + (("sketch",) if self.has_sketch else ())
            self._arrays[shard] = tuple(np.load(folder / f"{name}.npy", mmap_mode="r") for name in names)
        return self._arrays[shard]

    def key(self, index: int) -> str:
        shard, row = self.locate(index)
        if shard not in self._keys:
            self._keys[shard] = json.loads((self.folder / self.shards[shard] / "keys.json").read_text(encoding="utf-8"))
        return self._keys[shard][row]

    def __getitem__(self, index: int) -> dict:
        shard, row = self.locate(index)
        codes, text, text_len, *sketch = self._open(shard)
        sample = {"codes": np.array(codes[row]), "text": np.array(text[row]), "text_len": int(text_len[row])}
        if sketch:
            sample["sketch"] = np.array(sketch[0][row])
        return sample

    def details(self) -> dict:
        """{"skipped": {reason: [{key, source, detail}]}, "captions": {issue: [keys]}, "units": [records]}."""
        if "details" not in self.manifest:  # format /1: inline
            return {k: self.manifest[k] for k in DETAIL_FIELDS}
        return json.loads((self.folder / self.manifest["details"]).read_text(encoding="utf-8"))

    def check_compatible(self, expected: dict) -> None:
        """Raise ValueError naming every manifest field that differs from `expected`
        (e.g. {"codebook_size": 12288, "grid": (10, 21, 21), "tokenizer_fingerprint": "…"})."""
        problems = []
        for field, value in expected.items():
            if field not in self.manifest:
                problems.append(f"{field} is not in the manifest")
            elif self.manifest[field] != _normalise(value):
                problems.append(f"{field} is {self.manifest[field]!r} in the shards but {value!r} in the model config")
        if problems:
            raise ValueError(f"shards in {self.folder} do not match: " + "; ".join(problems))
