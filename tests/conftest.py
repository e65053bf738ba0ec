"""Shared fixtures: a tiny tokenizer and code shards in the real shard format, for trainer tests."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():  # the fused 3DNA kernel (Triton) runs in Triton's interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

from model.vqgan import VQGAN, VQGANConfig
from preprocess.shards import ShardWriter, make_manifest, shard_name
from preprocess.text import CaptionTokenizer
from preprocess.train_tokenizer import train_tokenizer


@pytest.fixture(autouse=True)
def in_process_runs_stay_in_their_test(monkeypatch):
    """Trainers run in-process leave their one-process group for the next test (DeepSpeed keeps references to
    it); a command-line error in a later test would then end the process as a rank of a job does (os._exit),
    taking pytest with it. Here it raises SystemExit, as without a group."""
    monkeypatch.setattr("pretrain.cli.exit_now", sys.exit)
    # A one-process group started in-process (init_distributed) sets RANK, MASTER_PORT, …; later subprocesses
    # would inherit them and try to join that group's port. Each test gets the environment back as it was.
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    before = {key: os.environ.get(key) for key in keys}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
CODEBOOK, GRID, FRAMES = 32, 4, 2
SKETCH_CODEBOOK = 8


def _patterned_codes(colour: int, frames: int, rng) -> np.ndarray:
    """A learnable pattern: the caption's colour sets the offset, time shifts it, plus 10% noise."""
    t, h, w = np.meshgrid(np.arange(frames), np.arange(GRID), np.arange(GRID), indexing="ij")
    codes = (colour * 4 + h + w + t) % CODEBOOK
    noise = rng.random(codes.shape) < 0.1
    return np.where(noise, rng.integers(0, CODEBOOK, codes.shape), codes).astype(np.uint16)


def _write_dataset(folder, tokenizer, vqgan_fingerprint, modality, n, seed, missing_every=0, sketches=False):
    """Shards in the real format; with `sketches`, format /3 with sketch codes that give away the colour."""
    rng = np.random.default_rng(seed)
    frames = 1 if modality == "image" else FRAMES
    codes, texts, lengths, keys, sketch = [], [], [], [], []
    for i in range(n):
        colour = int(rng.integers(len(COLOURS)))
        caption = None if missing_every and i % missing_every == 0 else f"a {COLOURS[colour]} square"
        ids, length = tokenizer.encode(caption)
        codes.append(_patterned_codes(colour, frames, rng))
        rows = np.arange(GRID)[None, :, None] * np.ones((frames, GRID, GRID), np.int64)
        sketch.append(((colour + rows) % SKETCH_CODEBOOK).astype(np.uint16))
        texts.append(ids)
        lengths.append(length)
        keys.append(f"{modality}{i:04d}")
    half = n // 2
    writer = ShardWriter(folder)
    shards = []
    for part, rows in enumerate((slice(0, half), slice(half, n))):
        name = shard_name(0, part)
        writer.write_shard(name, np.stack(codes[rows]), np.stack(texts[rows]), np.array(lengths[rows], np.int32),
                           keys[rows], np.stack(sketch[rows]) if sketches else None)
        shards.append({"name": name, "num_samples": len(keys[rows])})
    record = {"unit": 0, "source": "fixture", "rows": None, "num_inputs": n, "num_inputs_used": n,
              "shards": shards, "skipped": [], "captions": {}}
    header = {"modality": modality, "grid": [frames, GRID, GRID], "text_length": 77, "codebook_size": CODEBOOK,
              "vqgan_fingerprint": vqgan_fingerprint, "tokenizer_fingerprint": tokenizer.fingerprint(),
              "tokenizer_vocab_size": tokenizer.vocab_size}
    if sketches:
        header["sketch"] = {"vqgan_fingerprint": "fixture-seg", "num_classes": 4, "codebook_size": SKETCH_CODEBOOK,
                            "resolution": GRID * 8, "grid": [frames, GRID, GRID]}
    writer.write_manifest(make_manifest(header, [record]))
    return folder


@pytest.fixture(scope="session")
def code_shards(tmp_path_factory):
    """{'image', 'video': shard folders, 'tokenizer': model path, 'vocab_size', 'vqgan': folder} for a tiny model.

    The codes are patterned rather than encoded images (so that a tiny model learns them in a few
    steps), but the manifests carry the identity of a real (untrained) VQ-GAN that can decode them."""
    root = tmp_path_factory.mktemp("code_shards")
    captions = root / "captions.txt"
    captions.write_text("\n".join(f"a {c} {s} moving {d}" for c in COLOURS for s in ("square", "circle")
                                  for d in ("left", "right")) + "\n")
    tokenizer = train_tokenizer([str(captions)], root / "tok", vocab_size=64)
    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig.from_preset("tiny", resolution=GRID * 8, codebook_size=CODEBOOK))  # 8× downsampling
    vqgan.save_pretrained(root / "vqgan")
    fingerprint = vqgan.fingerprint()
    return {"image": str(_write_dataset(root / "image", tokenizer, fingerprint, "image", 48, seed=1)),
            "video": str(_write_dataset(root / "video", tokenizer, fingerprint, "video", 24, seed=2, missing_every=4)),
            "tokenizer": str(root / "tok.model"), "vocab_size": tokenizer.vocab_size, "vqgan": str(root / "vqgan")}


@pytest.fixture(scope="session")
def sketch_shards(code_shards, tmp_path_factory):
    """code_shards' tokenizer and VQ-GAN, with image and video shards that also hold sketch codes (format /3)."""
    root = tmp_path_factory.mktemp("sketch_shards")
    tokenizer = CaptionTokenizer(code_shards["tokenizer"])
    fingerprint = VQGAN.from_pretrained(code_shards["vqgan"]).fingerprint()
    return {**code_shards,
            "image": str(_write_dataset(root / "image", tokenizer, fingerprint, "image", 32, seed=3, sketches=True)),
            "video": str(_write_dataset(root / "video", tokenizer, fingerprint, "video", 16, seed=4, sketches=True))}


def tiny_model_overrides(vocab_size: int) -> dict:
    """The model section for trainer tests: matches the fixture shards, small enough for seconds per step."""
    return {"preset": "tiny", "text_vocab_size": vocab_size, "codebook_size": CODEBOOK, "frames": FRAMES,
            "grid_height": GRID, "grid_width": GRID, "width": 32, "heads": 2, "encoder_layers": 1,
            "decoder_layers": 1}


def export_tiny_model(shards: dict, path, seed: int = 0, **model) -> Path:
    """A converted tiny model (the folder tools/convert_checkpoint.py writes) for fixture shards, naming their
    tokenizer and VQ-GAN as its provenance; `model` overrides config fields."""
    from model.config import NuwaConfig
    from model.nuwa import Nuwa
    from model.pretrained import save_pretrained

    overrides = {**tiny_model_overrides(shards["vocab_size"]), **model}
    overrides.pop("preset")
    torch.manual_seed(seed)
    info = {"tokenizer": shards["tokenizer"], "tokenizer_fingerprint": CaptionTokenizer(shards["tokenizer"]).fingerprint(),
            "vqgan_fingerprint": VQGAN.from_pretrained(shards["vqgan"]).fingerprint()}
    return save_pretrained(Nuwa(NuwaConfig.from_preset("tiny", **overrides)), path, info=info)
