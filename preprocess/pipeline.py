"""Batch tokenization: raw captioned media → VQ codes + caption ids in code shards.

Worker processes (a torch DataLoader over `DecodeStream`) read and decode whole input units,
worker w taking units w, w + W, …, so every unit is read by exactly one worker and a worker
without a unit simply ends (more workers than tars neither hangs nor duplicates). The main
process tokenizes captions and runs the VQ-GAN in batches while the workers decode ahead.

Output bytes do not depend on the number of workers, on timing, or on interruptions: each
unit writes its own shards (`shard-UUUUU-PPPP`, `shard_size` samples each, the last one
shorter), and the VQ-GAN batches of a shard always start at shard-relative multiples of
`batch_size`, so a re-run encodes exactly the same batches for the shards it still lacks.
Finished units are not read again. With `num_splits` K, split i takes the units u ≡ i (mod K)
and writes `manifest.split-…json`; `preprocess/merge_manifests.py` joins the K of them.
"""
from __future__ import annotations

import dataclasses
import io
import os
import time
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from model.vqgan import VQGAN
from preprocess.readers import (BAD_LABEL_MAP, DECODE_ERROR, NO_CURATION, NO_LABEL_MAP, ClipSampling, Curation,
                                InputUnit, RawItem, Skip, SkipInput, image_pixels, iter_unit, label_clips, label_map,
                                list_units, timed_video_clips, uint8_to_model)
from preprocess.shards import MANIFEST, ShardWriter, make_manifest, shard_name, split_manifest_name
from preprocess.text import TEXT_LENGTH, CaptionTokenizer


@dataclasses.dataclass
class TokenizeConfig:
    """Arguments of preprocess/tokenize.py (see its --help)."""

    modality: str
    inputs: list[str]
    output: str
    vqgan: str
    tokenizer: str
    workers: int = 2
    shard_size: int = 1024
    batch_size: int = 32
    num_splits: int = 1
    split: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch threads of the CPU encoder; None: the cores the workers leave
    num_frames: int = 10
    frame_rate: float = 2.5
    clip_start: float = 0.0
    clips_per_video: int = 1
    min_side: int = 0
    max_aspect: float = 0.0
    cut_threshold: float = 0.0
    min_motion: float = 0.0
    vqgan_seg: str = ""  # a VQ-GAN-Seg: also write the sketch codes of every sample's label map

    def __post_init__(self):
        if self.modality not in ("image", "video"):
            raise ValueError(f"modality must be image or video, got {self.modality!r}")
        if not 0 <= self.split < self.num_splits:
            raise ValueError(f"split {self.split} is not in 0..{self.num_splits - 1}")
        if min(self.shard_size, self.batch_size, self.num_frames, self.clips_per_video) < 1 or self.workers < 0:
            raise ValueError("shard_size, batch_size, num_frames and clips_per_video must be ≥ 1, workers ≥ 0")

    @property
    def sampling(self) -> ClipSampling:
        return ClipSampling(self.num_frames, self.frame_rate, self.clip_start, self.clips_per_video)

    @property
    def curation(self) -> Curation:
        return Curation(self.min_side, self.max_aspect, self.cut_threshold, self.min_motion)


class DecodeStream(IterableDataset):
    """Decoded samples of the given units, in unit order per worker, as chunks of ≤ `chunk_size`.

    A chunk is a dict: unit, keys, pixels (uint8 [n, 3, H, W] or [n, T, 3, H, W]), captions,
    caption_issues ([key, issue] per input), skips ([key, reason, detail]), with `sketch` = (num_classes,
    resolution) also sketches (label maps uint16 [n, 1 or T, H', W']), and on the last chunk of a unit
    end=True with num_inputs and num_inputs_used."""

    def __init__(self, units: list[tuple[int, InputUnit]], modality: str, resolution: int, sampling: ClipSampling,
                 chunk_size: int, curation: Curation = NO_CURATION, sketch: tuple[int, int] | None = None):
        self.units, self.modality, self.resolution = units, modality, resolution
        self.sampling, self.chunk_size, self.curation, self.sketch = sampling, chunk_size, curation, sketch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for index, unit in self.units[worker::workers]:
            yield from self.decode_unit(index, unit)

    def decode(self, item: RawItem) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """One input's pixels (one image, or one array per clip) and, when sketches are asked for, its label
        maps at the same frames ([1, H', W'] per image, [T, H', W'] per clip)."""
        if self.modality == "image":
            pixels = [image_pixels(item.media, self.resolution, self.curation)]
            return pixels, [self.image_sketch(item)[None]] if self.sketch else []
        clips = timed_video_clips(item.media, self.sampling, self.resolution, self.curation)
        if not self.sketch:
            return [clip for _, clip in clips], []
        data = self.sketch_bytes(item, "seg.npz")
        classes, resolution = self.sketch
        return [clip for _, clip in clips], label_clips(data, [start for start, _ in clips], self.sampling, resolution,
                                                        classes)

    def sketch_bytes(self, item: RawItem, kind: str) -> bytes:
        if item.sketch is None or item.sketch[0] != kind:
            raise SkipInput(NO_LABEL_MAP, f"expected a {kind} label map beside it" +
                            (f", found {item.sketch[0]}" if item.sketch else ""))
        return item.sketch[1]

    def image_sketch(self, item: RawItem) -> np.ndarray:
        """The image's label map at the sketch resolution; its size must be the image's (else the crops differ)."""
        data = self.sketch_bytes(item, "seg.png")
        classes, resolution = self.sketch
        labels = label_map(data, resolution, classes)
        with Image.open(io.BytesIO(item.media)) as image, Image.open(io.BytesIO(data)) as seg:
            if image.size != seg.size:
                raise SkipInput(BAD_LABEL_MAP, f"label map {seg.size[0]}x{seg.size[1]}, image "
                                               f"{image.size[0]}x{image.size[1]}")
        return labels

    def decode_unit(self, index: int, unit: InputUnit) -> Iterator[dict]:
        chunk = self._empty_chunk(index)
        num_inputs = num_used = 0
        for item in iter_unit(unit, self.modality):
            num_inputs += 1
            if isinstance(item, Skip):
                chunk["skips"].append([item.key, item.reason, item.detail])
                continue
            try:
                arrays, sketches = self.decode(item)
            except SkipInput as error:
                chunk["skips"].append([item.key, error.reason, error.detail])
                continue
            except Exception as error:  # decoders raise odd types on odd files; one file never ends the run
                chunk["skips"].append([item.key, DECODE_ERROR, f"{type(error).__name__}: {error}"])
                continue
            num_used += 1
            if item.caption_issue:
                chunk["caption_issues"].append([item.key, item.caption_issue])
            clip_keys = [item.key] if self.sampling.max_clips == 1 or self.modality == "image" else [
                f"{item.key}#{c}" for c in range(len(arrays))]
            chunk["keys"] += clip_keys
            chunk["pixels"] += arrays
            chunk["sketches"] += sketches
            chunk["captions"] += [item.caption] * len(arrays)
            if len(chunk["keys"]) >= self.chunk_size:
                yield self._seal(chunk)
                chunk = self._empty_chunk(index)
        yield self._seal(chunk, end=True, num_inputs=num_inputs, num_inputs_used=num_used)

    @staticmethod
    def _empty_chunk(index: int) -> dict:
        return {"unit": index, "keys": [], "pixels": [], "sketches": [], "captions": [], "caption_issues": [],
                "skips": [], "end": False}

    @staticmethod
    def _seal(chunk: dict, **extra) -> dict:
        chunk["pixels"] = np.stack(chunk["pixels"]) if chunk["pixels"] else None
        chunk["sketches"] = np.stack(chunk["sketches"]) if chunk["sketches"] else None
        return {**chunk, **extra}


class UnitAssembler:
    """Collects one unit's samples into shards of `shard_size`, encodes them in batches that start
    at shard-relative multiples of `batch_size`, and writes every shard the folder lacks."""

    def __init__(self, unit: int, writer: ShardWriter, encode: Callable[[torch.Tensor], np.ndarray],
                 tokenizer: CaptionTokenizer, shard_size: int, batch_size: int,
                 encode_sketch: Callable[[torch.Tensor], np.ndarray] | None = None):
        self.unit, self.writer, self.encode, self.tokenizer = unit, writer, encode, tokenizer
        self.encode_sketch = encode_sketch
        self.shard_size, self.batch_size = shard_size, batch_size
        self.shards: list[dict] = []
        self.skipped: list[dict] = []
        self.captions: dict[str, list[str]] = {}
        self._start_shard()

    def _start_shard(self) -> None:
        self.name = shard_name(self.unit, len(self.shards))
        self.done = self.writer.has_shard(self.name)  # finished by an earlier run: nothing to encode
        self.keys: list[str] = []
        self.codes: list[np.ndarray] = []
        self.texts: list[tuple[np.ndarray, int]] = []
        self.pending: list[torch.Tensor] = []
        self.sketch_codes: list[np.ndarray] = []
        self.pending_sketches: list[torch.Tensor] = []

    def add(self, key: str, pixels: torch.Tensor, caption: str | None, sketch: torch.Tensor | None = None) -> None:
        self.keys.append(key)
        if not self.done:
            self.texts.append(self.tokenizer.encode(caption))
            self.pending.append(pixels)
            if self.encode_sketch is not None:
                self.pending_sketches.append(sketch)
            if len(self.pending) == self.batch_size:
                self._flush_batch()
        if len(self.keys) == self.shard_size:
            self._finish_shard()

    def _flush_batch(self) -> None:
        if self.pending:
            self.codes.append(self.encode(torch.stack(self.pending)))
            self.pending = []
        if self.pending_sketches:
            self.sketch_codes.append(self.encode_sketch(torch.stack(self.pending_sketches)))
            self.pending_sketches = []

    def _finish_shard(self) -> None:
        if not self.done:
            self._flush_batch()
            self.writer.write_shard(self.name, np.concatenate(self.codes),
                                    np.stack([ids for ids, _ in self.texts]).astype(np.int32),
                                    np.array([n for _, n in self.texts], dtype=np.int32), self.keys,
                                    np.concatenate(self.sketch_codes) if self.sketch_codes else None)
        self.shards.append({"name": self.name, "num_samples": len(self.keys)})
        self._start_shard()

    def finish(self, source: InputUnit, num_inputs: int, num_inputs_used: int) -> dict:
        """Write the last, shorter shard and return the unit's record."""
        if self.keys:
            self._finish_shard()
        return {"unit": self.unit, "source": source.source, "rows": list(source.rows) if source.rows else None,
                "num_inputs": num_inputs, "num_inputs_used": num_inputs_used, "shards": self.shards,
                "skipped": self.skipped, "captions": self.captions}


def make_encoder(vqgan: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], np.ndarray]:
    """uint8 pixels [B, 3, H, W] or [B, T, 3, H, W] → uint16 codes [B, S, h, w] (S = 1 for images)."""

    @torch.inference_mode()
    def encode(pixels: torch.Tensor) -> np.ndarray:
        x = uint8_to_model(pixels.to(device))
        codes = vqgan.encode_video(x) if x.ndim == 5 else vqgan.encode(x)[:, None]
        return codes.cpu().numpy().astype(np.uint16)

    return encode


def make_sketch_encoder(vqgan_seg: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], np.ndarray]:
    """uint16 label maps [B, S, H, W] → uint16 sketch codes [B, S, h, w], every frame coded alone."""

    @torch.inference_mode()
    def encode(labels: torch.Tensor) -> np.ndarray:
        B, S = labels.shape[:2]
        codes = vqgan_seg.encode(labels.to(device).long().flatten(0, 1))  # [B·S, h, w]
        return codes.view(B, S, *codes.shape[1:]).cpu().numpy().astype(np.uint16)

    return encode


def tokenize_dataset(config: TokenizeConfig) -> dict:
    """Run (or finish) the tokenization described by `config`; returns the manifest written.

    On CPU the encoder gets the cores the decoding workers leave (`threads`): more threads than
    free cores make OpenMP spin against the workers and run many times slower."""
    previous_threads = torch.get_num_threads()
    threads = config.threads or max(1, (os.cpu_count() or 1) - config.workers)
    if config.device == "cpu":
        torch.set_num_threads(threads)
    try:
        return _tokenize(config)
    finally:
        torch.set_num_threads(previous_threads)


def _tokenize(config: TokenizeConfig) -> dict:
    started = time.perf_counter()
    device = torch.device(config.device)
    vqgan = VQGAN.from_pretrained(config.vqgan).to(device).eval()
    tokenizer = CaptionTokenizer(config.tokenizer)
    resolution = vqgan.config.resolution
    units = list_units(config.inputs, config.shard_size)
    seg = VQGAN.from_pretrained(config.vqgan_seg).to(device).eval() if config.vqgan_seg else None
    if seg is not None and not seg.config.num_classes:
        raise ValueError(f"--vqgan-seg {config.vqgan_seg} is an image VQ-GAN: a VQ-GAN-Seg has model.num_classes > 0")
    sketch = None if seg is None else {
        "vqgan_fingerprint": seg.fingerprint(), "num_classes": seg.config.num_classes,
        "codebook_size": seg.config.codebook_size, "resolution": seg.config.resolution,
        "grid": [config.num_frames if config.modality == "video" else 1, *seg.config.grid]}
    header = {
        "modality": config.modality,
        "resolution": resolution,
        "grid": [config.num_frames if config.modality == "video" else 1, *vqgan.config.grid],
        "text_length": TEXT_LENGTH,
        "codebook_size": vqgan.config.codebook_size,
        "vqgan_fingerprint": vqgan.fingerprint(),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "tokenizer_vocab_size": tokenizer.vocab_size,
        "none_text_ids": tokenizer.encode_none()[0].tolist(),  # V2V's condition: the trainer needs no tokenizer
        "sampling": dataclasses.asdict(config.sampling) if config.modality == "video" else None,
        **({"curation": dataclasses.asdict(config.curation)} if config.curation != NO_CURATION else {}),
        **({"sketch": sketch} if sketch else {}),
    }
    writer = ShardWriter(config.output)
    writer.check_settings({**header, "shard_size": config.shard_size,
                           "units": [[u.source, list(u.rows) if u.rows else None] for u in units]})
    mine = [u for u in range(len(units)) if u % config.num_splits == config.split]
    writer.remove_temporaries(None if config.num_splits == 1 else mine)
    todo = [u for u in mine if not writer.has_unit(u)
            or not all(writer.has_shard(s["name"]) for s in writer.read_unit(u)["shards"])]
    stream = DecodeStream([(u, units[u]) for u in todo], config.modality, resolution, config.sampling,
                          config.batch_size, config.curation,
                          None if seg is None else (seg.config.num_classes, seg.config.resolution))
    workers = min(config.workers, len(todo))
    loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                        pin_memory=device.type == "cuda")
    encode = make_encoder(vqgan, device)
    encode_sketch = None if seg is None else make_sketch_encoder(seg, device)
    assemblers: dict[int, UnitAssembler] = {}
    counts = {"samples": 0, "skipped": 0, "units": 0}
    waited = 0.0
    bar = tqdm(desc=f"tokenize {config.modality}s", unit="sample", total=None, dynamic_ncols=True)
    wait_start = time.perf_counter()
    for chunk in loader:
        waited += time.perf_counter() - wait_start
        unit = chunk["unit"]
        if unit not in assemblers:
            assemblers[unit] = UnitAssembler(unit, writer, encode, tokenizer, config.shard_size, config.batch_size,
                                             encode_sketch)
        assembler = assemblers[unit]
        for key, reason, detail in chunk["skips"]:
            assembler.skipped.append({"key": key, "reason": reason, "detail": detail})
            tqdm.write(f"skipped {key} in {units[unit].source}: {reason} {detail}".rstrip())
        for key, issue in chunk["caption_issues"]:
            assembler.captions.setdefault(issue, []).append(key)
        for i, key in enumerate(chunk["keys"]):
            assembler.add(key, chunk["pixels"][i], chunk["captions"][i],
                          None if chunk["sketches"] is None else chunk["sketches"][i])
        counts["samples"] += len(chunk["keys"])
        counts["skipped"] += len(chunk["skips"])
        bar.update(len(chunk["keys"]))
        if chunk["end"]:
            writer.write_unit(assemblers.pop(unit).finish(units[unit], chunk["num_inputs"], chunk["num_inputs_used"]))
            counts["units"] += 1
        bar.set_postfix(skipped=counts["skipped"], units=f"{counts['units']}/{len(todo)}")
        wait_start = time.perf_counter()
    bar.close()

    if config.num_splits > 1:
        header["split"] = {"index": config.split, "count": config.num_splits, "num_units": len(units)}
    manifest = make_manifest(header, [writer.read_unit(u) for u in mine])
    path = writer.write_manifest(manifest, MANIFEST if config.num_splits == 1 else
                                 split_manifest_name(config.split, config.num_splits))
    elapsed = time.perf_counter() - started
    reasons = ", ".join(f"{r} {n}" for r, n in manifest["skipped_by_reason"].items()) or "none"
    captions = ", ".join(f"{i} {n}" for i, n in manifest["captions_by_issue"].items()) or "all present"
    print(f"tokenized {config.modality}s: {manifest['num_samples']} samples from {manifest['num_inputs_used']} of "
          f"{manifest['num_inputs']} inputs in {len(mine)} units ({len(mine) - len(todo)} done before); "
          f"skipped {manifest['num_skipped']} ({reasons}); captions: {captions}; this run: {counts['samples']} "
          f"samples in {elapsed:.1f} s = {counts['samples'] / elapsed:.1f} samples/s with {workers} workers, "
          f"encoder idle {100 * waited / elapsed:.0f}% waiting for decoding → {path}")
    return manifest
