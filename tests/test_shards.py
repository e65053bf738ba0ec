"""The code-shard format: round trip by global index, atomic writes, manifest checks and merging."""
import json

import numpy as np
import pytest

from preprocess.shards import (MANIFEST, ShardDataset, ShardWriter, make_manifest, merge_manifests, shard_name,
                               split_manifest_name)

HEADER = {"modality": "video", "grid": [2, 3, 3], "text_length": 77, "codebook_size": 512,
          "vqgan_fingerprint": "vq", "tokenizer_fingerprint": "tok", "tokenizer_vocab_size": 100}


def _records(rng, sizes):
    """Unit records and the arrays of their shards; unit u holds shards of the given sizes."""
    records, arrays = [], []
    for unit, shard_sizes in enumerate(sizes):
        shards = []
        for part, n in enumerate(shard_sizes):
            codes = rng.integers(0, 512, (n, 2, 3, 3)).astype(np.uint16)
            text = rng.integers(0, 100, (n, 77)).astype(np.int32)
            text_len = rng.integers(0, 78, n).astype(np.int32)
            keys = [f"u{unit}p{part}s{i}" for i in range(n)]
            arrays.append((shard_name(unit, part), codes, text, text_len, keys))
            shards.append({"name": shard_name(unit, part), "num_samples": n})
        records.append({"unit": unit, "source": f"{unit}.tar", "rows": None, "num_inputs": sum(shard_sizes) + 1,
                        "num_inputs_used": sum(shard_sizes), "shards": shards,
                        "skipped": [{"key": f"bad{unit}", "reason": "corrupt_image", "detail": "x"}],
                        "captions": {"caption_missing": [f"u{unit}p0s0"]} if shard_sizes else {}})
    return records, arrays


def _write(folder, records, arrays, header=HEADER):
    writer = ShardWriter(folder)
    for name, *data in arrays:
        writer.write_shard(name, *data)
    for record in records:
        writer.write_unit(record)
    writer.write_manifest(make_manifest(header, records))
    return writer


def test_round_trip_by_global_index(tmp_path):
    records, arrays = _records(np.random.default_rng(0), [[4, 4, 1], [], [3]])
    _write(tmp_path, records, arrays)
    ds = ShardDataset(tmp_path)
    flat = [(c[i], t[i], n[i], k[i]) for _, c, t, n, k in arrays for i in range(len(k))]
    assert len(ds) == len(flat) == 12
    for index in [0, 3, 4, 8, 9, 11, -1, -12]:
        item = ds[index]
        codes, text, text_len, key = flat[index]
        assert item["codes"].dtype == np.uint16 and item["codes"].shape == (2, 3, 3)
        np.testing.assert_array_equal(item["codes"], codes)
        np.testing.assert_array_equal(item["text"], text)
        assert item["text_len"] == text_len and ds.key(index) == key and "key" not in item
    np.testing.assert_array_equal(ds.text_lengths(), [f[2] for f in flat])
    with pytest.raises(IndexError, match="12 samples"):
        ds[12]
    manifest = ds.manifest
    assert manifest["num_samples"] == 12 and manifest["num_inputs"] == 15 and manifest["num_skipped"] == 3
    assert manifest["num_inputs_used"] + manifest["num_skipped"] == manifest["num_inputs"]
    assert "skipped" not in manifest and "units" not in manifest  # kept out of what every rank loads
    assert ds.details()["skipped"]["corrupt_image"][1] == {"key": "bad1", "source": "1.tar", "detail": "x"}
    assert manifest["captions_by_issue"] == {"caption_missing": 2}
    assert manifest["codes_dtype"] == "uint16" and manifest["text_dtype"] == "int32"


def test_check_compatible_names_the_field(tmp_path):
    records, arrays = _records(np.random.default_rng(1), [[2]])
    _write(tmp_path, records, arrays)
    ds = ShardDataset(tmp_path)
    ds.check_compatible({"codebook_size": 512, "grid": (2, 3, 3), "tokenizer_fingerprint": "tok"})
    with pytest.raises(ValueError, match=r"codebook_size is 512 in the shards but 12288"):
        ds.check_compatible({"codebook_size": 12288, "grid": (2, 3, 3)})
    with pytest.raises(ValueError, match=r"grid is \[2, 3, 3\] in the shards but \(10, 21, 21\)"):
        ds.check_compatible({"grid": (10, 21, 21)})
    with pytest.raises(ValueError, match="tokenizer_fingerprint"):
        ds.check_compatible({"tokenizer_fingerprint": "other"})
    with pytest.raises(ValueError, match="colour_space is not in the manifest"):
        ds.check_compatible({"colour_space": "rgb"})


def test_writes_are_atomic_and_byte_identical(tmp_path):
    records, arrays = _records(np.random.default_rng(2), [[3, 2]])
    _write(tmp_path / "a", records, arrays)
    writer = _write(tmp_path / "b", records, arrays)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert [str(f) for f in files] == [
        "details.json", "manifest.json", "shard-00000-0000/codes.npy", "shard-00000-0000/keys.json", "shard-00000-0000/text.npy",
        "shard-00000-0000/text_len.npy", "shard-00000-0001/codes.npy", "shard-00000-0001/keys.json",
        "shard-00000-0001/text.npy", "shard-00000-0001/text_len.npy", "unit-00000.json"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    # what a killed writer leaves is never taken for a shard, and the next run removes it
    (tmp_path / "b" / ".tmp-shard-00000-0002").mkdir()
    (tmp_path / "b" / ".tmp-unit-00001.json.77").write_text("{")
    assert not writer.has_shard(shard_name(0, 2))
    assert writer.remove_temporaries([0]) == [".tmp-shard-00000-0002"]  # another split's leftovers stay
    assert writer.remove_temporaries() == [".tmp-unit-00001.json.77"]
    with pytest.raises(ValueError, match="inconsistent shapes"):
        writer.write_shard("shard-00009-0000", *arrays[0][1:4], ["only-one-key"])


def test_settings_of_a_rerun_must_match(tmp_path):
    writer = ShardWriter(tmp_path)
    writer.check_settings({"shard_size": 4, "grid": (1, 8, 8)})
    writer.check_settings({"shard_size": 4, "grid": (1, 8, 8)})
    with pytest.raises(ValueError, match="shard_size differ"):
        writer.check_settings({"shard_size": 8, "grid": (1, 8, 8)})


def test_merge_manifests_equals_the_single_run(tmp_path):
    records, _ = _records(np.random.default_rng(3), [[2], [1, 1], [3]])
    whole = make_manifest(HEADER, records)
    splits = [make_manifest({**HEADER, "split": {"index": i, "count": 2, "num_units": 3}}, records[i::2])
              for i in range(2)]
    assert json.dumps(merge_manifests(splits[::-1]), sort_keys=True) == json.dumps(whole, sort_keys=True)
    with pytest.raises(ValueError, match="expected splits 0..1 of 2"):
        merge_manifests(splits[:1])
    with pytest.raises(ValueError, match="disagree on tokenizer_fingerprint"):
        merge_manifests([splits[0], {**splits[1], "tokenizer_fingerprint": "other"}])
    (tmp_path / split_manifest_name(0, 2)).write_text(json.dumps(splits[0]))
    with pytest.raises(FileNotFoundError, match="merge the split manifests"):
        ShardDataset(tmp_path)
    assert not (tmp_path / MANIFEST).exists()


def test_format_1_shards_with_inline_details_still_read(tmp_path):
    records, arrays = _records(np.random.default_rng(3), [[2, 1]])
    _write(tmp_path, records, arrays)
    details = json.loads((tmp_path / "details.json").read_text())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest = {**{k: v for k, v in manifest.items() if k != "details"}, **details, "format": "nuwa-code-shards/1"}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "details.json").unlink()
    ds = ShardDataset(tmp_path)
    assert len(ds) == 3 and ds.details() == details
    np.testing.assert_array_equal(ds[2]["codes"], arrays[1][1][0])  # the second shard's first sample
