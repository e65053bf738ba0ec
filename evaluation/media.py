"""Sets of real or generated media, read as uint8 frames at one resolution, one item at a time.

Label maps (modality "seg") are `{key}.seg.png` members of tars or PNGs named by an index, resized with
nearest neighbours. A source is a folder written by tools/sample.py or any folder with an `index.jsonl`/`index.csv`
(`path`, `caption`), a folder of media files (captions from `{name}.txt` beside them), tars or index
files as preprocessing reads them (patterns allowed), or a code-shard folder (decoded with a VQ-GAN:
what the tokenizer keeps of the real media). Images and videos are resized and centre-cropped as in
preprocessing; videos give their first clip of `frames` frames at 2.5 fps. Inputs that do not decode are
skipped and counted, never silently.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from preprocess.readers import (MEDIA_EXTENSIONS, ClipSampling, RawItem, SkipInput, decode_image, iter_unit,
                                label_map, list_units, model_to_uint8, resize_center_crop, video_clips)
from preprocess.shards import MANIFEST, ShardDataset


@dataclasses.dataclass
class Item:
    key: str
    frames: np.ndarray  # uint8 [T, H, W, 3]; T = 1 for an image
    caption: str | None


@dataclasses.dataclass
class MediaSet:
    """One source, read lazily; `skipped` counts the inputs that did not decode, by reason."""
    source: str
    modality: str
    resolution: int
    frames: int = 10
    vqgan: object = None
    limit: int | None = None
    num_classes: int = 0  # label maps ("seg"): their class count
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    def __iter__(self) -> Iterator[Item]:
        count = 0
        for item in self._items():
            if self.limit is not None and count >= self.limit:
                return
            count += 1
            yield item

    def _items(self) -> Iterator[Item]:
        path = Path(self.source)
        if (path / MANIFEST).is_file():
            yield from self._shard_items(ShardDataset(path))
            return
        if path.is_dir():
            index = next((path / name for name in ("index.jsonl", "index.csv") if (path / name).is_file()), None)
            raw = (self._raw(str(index)) if index else self._folder(path))
        else:
            raw = self._raw(self.source)
        for item in raw:
            if not isinstance(item, RawItem):
                self.skipped[item.reason] = self.skipped.get(item.reason, 0) + 1
                continue
            try:
                yield Item(item.key, self.decode(item.media), item.caption)
            except SkipInput as skip:
                self.skipped[skip.reason] = self.skipped.get(skip.reason, 0) + 1

    def _raw(self, source: str):
        for unit in list_units([source], rows_per_unit=1 << 30):
            yield from iter_unit(unit, self.modality)

    def _folder(self, folder: Path) -> Iterator[RawItem]:
        extensions = MEDIA_EXTENSIONS[self.modality]
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in extensions)
        if not files:
            raise FileNotFoundError(f"{folder} holds no {self.modality} files ({', '.join(extensions)}) and no index")
        for file in files:
            caption = file.with_suffix(".txt")
            text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else None
            yield RawItem(str(file.relative_to(folder)), file.read_bytes(), text, None)

    def _shard_items(self, shards: ShardDataset) -> Iterator[Item]:
        if self.vqgan is None:
            raise ValueError(f"{self.source} holds codes: pass --vqgan to decode them")
        for i in range(len(shards)):
            codes = torch.from_numpy(shards[i]["codes"][:self.frames].astype(np.int64))[None]
            with torch.no_grad():
                pixels = self.vqgan.decode_video(codes.to(next(self.vqgan.parameters()).device))[0]
            frames = model_to_uint8(pixels).permute(0, 2, 3, 1).cpu().numpy()
            if frames.shape[1] != self.resolution:
                frames = np.stack([np.asarray(resize_center_crop(Image.fromarray(f), self.resolution)) for f in frames])
            yield Item(shards.key(i), frames, None)

    def decode(self, data: bytes) -> np.ndarray:
        """Encoded bytes → uint8 [T, resolution, resolution, 3], label maps uint16 [1, resolution, resolution]
        (raises SkipInput)."""
        if self.modality == "seg":
            return label_map(data, self.resolution, self.num_classes)[None]
        if self.modality == "image":
            image = resize_center_crop(decode_image(data, min_side=self.resolution), self.resolution)
            return np.asarray(image)[None]
        clip = video_clips(data, ClipSampling(num_frames=self.frames), self.resolution)[0]
        return clip.transpose(0, 2, 3, 1)


def batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
