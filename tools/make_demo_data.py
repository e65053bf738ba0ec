"""Synthetic captioned shapes, written as real JPEG/MP4 media in img2dataset/video2dataset tars.

The demo needs data whose content a caption states exactly and a program can check from
pixels: one flat-coloured shape (no anti-aliasing) on a flat background, which in videos
moves at constant speed in one direction and wraps around the edges (what leaves on the left
comes back on the right), so a clip of any length shows clear motion. The default speed moves
it 8 px per frame of a 2.5-fps clip at 64 px: one VQ code of the demo's f8 tokenizer, a motion
a tiny generator can learn in minutes. The videos run at 10 fps, a multiple of 2.5, so that
every sampled frame lies exactly 8 px (one code) on and a moved shape keeps its codes; at other
rates the clip's frames fall an uneven number of video frames apart (docs/demo.md). The vocabulary
is exposed as module constants so that the demo's learning check measures colour and motion
against the same words.

Layout (what img2dataset / video2dataset write, plus a JSONL index per split)::

    OUT/images/{train,heldout}/00000.tar   members {key}.jpg {key}.seg.png {key}.txt {key}.json
    OUT/videos/{train,heldout}/00000.tar   members {key}.mp4 {key}.seg.npz {key}.txt {key}.json
    OUT/{images,videos}/{train,heldout}.jsonl   key, caption and attributes of every sample
    OUT/dataset.json                            arguments, counts and vocabulary

Keys follow img2dataset: 5-digit tar number + 4-digit index in the tar. Every sample draws
from its own generator seeded by (seed, kind, split, index), so the output is byte-identical
for a seed and the first samples do not change when the counts do. The held-out split holds
different samples (positions, timing) drawn from the same caption vocabulary.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw
from tqdm import tqdm

from model.storage import atomic_path, atomic_write
from tools.media import encode_mp4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (25, 190, 25),
    "blue": (25, 50, 230),
    "yellow": (240, 220, 20),
    "magenta": (220, 30, 220),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SKETCH_CLASSES: tuple[str, ...] = ("background", *SHAPES)  # the classes of the demo's label maps
SIZES: dict[str, float] = {"small": 0.18, "large": 0.28}  # radius as a fraction of the image side
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPLITS: tuple[str, ...] = ("train", "heldout")
KINDS: tuple[str, ...] = ("images", "videos")


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """Everything that determines one sample; positions are fractions of the image side."""

    shape: str
    colour: str
    size: str
    background: str
    direction: str | None  # None for a still image
    start: tuple[float, float]  # centre (x, y) at t = 0
    speed: float  # image sides per second along `direction`; positions wrap around the edges


def caption(spec: ShapeSpec) -> str:
    """The sentence that states the sample: 'a small red circle moving left on a white background'."""
    motion = f" moving {spec.direction}" if spec.direction else ""
    return f"a {spec.size} {spec.colour} {spec.shape}{motion} on a {spec.background} background"


def random_spec(rng: np.random.Generator, speed: float | None) -> ShapeSpec:
    """Draw a sample: a still image (speed None, the shape wholly inside the frame) or a video
    whose shape starts anywhere and moves at `speed` image sides per second."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    if speed is None:
        low, high = SIZES[size], 1.0 - SIZES[size]
        centre = (float(rng.uniform(low, high)), float(rng.uniform(low, high)))
        return ShapeSpec(shape, colour, size, background, None, centre, 0.0)
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    start = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
    return ShapeSpec(shape, colour, size, background, direction, start, speed)


def object_centre(spec: ShapeSpec, t: float) -> tuple[float, float]:
    """Centre (x, y) of the shape at time `t` seconds, as fractions of the image side in [0, 1)."""
    dx, dy = DIRECTIONS[spec.direction] if spec.direction else (0, 0)
    return (spec.start[0] + dx * spec.speed * t) % 1.0, (spec.start[1] + dy * spec.speed * t) % 1.0


def render_frame(spec: ShapeSpec, t: float, image_size: int) -> np.ndarray:
    """Draw the sample at time `t` as uint8 [H, W, 3], flat colours without anti-aliasing.

    The shape is also drawn one image side away in each direction, so that a shape crossing
    an edge shows its other part on the opposite edge."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[spec.background])
    draw = ImageDraw.Draw(image)
    x, y = object_centre(spec, t)
    r = SIZES[spec.size] * image_size
    fill = COLOURS[spec.colour]
    for wrap_x in (-1, 0, 1):
        for wrap_y in (-1, 0, 1):
            cx, cy = (x + wrap_x) * image_size, (y + wrap_y) * image_size
            if spec.shape == "circle":
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
            elif spec.shape == "square":
                h = r * 0.85  # about the circle's area
                draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
            else:
                draw.polygon([(cx, cy - r), (cx - 0.866 * r, cy + 0.5 * r), (cx + 0.866 * r, cy + 0.5 * r)], fill=fill)
    return np.asarray(image)


def render_label_map(spec: ShapeSpec, t: float, image_size: int) -> np.ndarray:
    """The sample's sketch at time `t`: uint8 [H, W] class ids, 0 for the background and 1 + the shape's index
    in SHAPES where the shape is drawn (SKETCH_CLASSES names them)."""
    return label_map_of(render_frame(spec, t, image_size), spec)


def label_map_of(frame: np.ndarray, spec: ShapeSpec) -> np.ndarray:
    """The label map of a rendered frame: the shape's class where its colour is drawn, 0 elsewhere."""
    return np.where((frame == COLOURS[spec.colour]).all(-1), 1 + SHAPES.index(spec.shape), 0).astype(np.uint8)


def encode_png(labels: np.ndarray) -> bytes:
    """A label map as a one-channel PNG of class ids."""
    buffer = io.BytesIO()
    Image.fromarray(labels, "L").save(buffer, "PNG")
    return buffer.getvalue()


def encode_label_stack(labels: np.ndarray, fps: float) -> bytes:
    """A video's label maps [F, H, W] at `fps` as the npz that preprocessing reads (`labels`, `fps`)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=labels, fps=np.float64(fps))
    return buffer.getvalue()


def render_video(spec: ShapeSpec, seconds: float, fps: float, image_size: int) -> np.ndarray:
    """All frames of a video, uint8 [T, H, W, 3]; frame i shows time i / fps."""
    return np.stack([render_frame(spec, i / fps, image_size) for i in range(round(seconds * fps))])


def encode_jpeg(frame: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes at img2dataset's default quality."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
    """Sizes of the synthetic dataset (see `--help`)."""

    seed: int = 0
    image_size: int = 64
    num_images: int = 1000
    num_videos: int = 200
    video_seconds: float = 10.0
    fps: int = 10
    speed: float = 0.3125
    """Image sides per second: 8 px per 0.4 s (one frame of a 2.5-fps clip) at 64 px."""
    heldout_fraction: float = 0.1
    samples_per_tar: int = 100


def _split_counts(total: int, fraction: float) -> dict[str, int]:
    heldout = round(total * fraction)
    return {"train": total - heldout, "heldout": heldout}


def make_sample(config: DemoDataConfig, kind: str, split: str, index: int) -> tuple[ShapeSpec, dict[str, bytes]]:
    """The spec and members of sample `index` of one kind and split: the encoded media and its label map
    (the sketch of S2I/S2V: `seg.png` beside an image, a `seg.npz` stack of one map per video frame)."""
    rng = np.random.default_rng([config.seed, KINDS.index(kind), SPLITS.index(split), index])
    if kind == "images":
        spec = random_spec(rng, None)
        frame = render_frame(spec, 0.0, config.image_size)
        return spec, {"jpg": encode_jpeg(frame), "seg.png": encode_png(label_map_of(frame, spec))}
    spec = random_spec(rng, config.speed)
    frames = render_video(spec, config.video_seconds, config.fps, config.image_size)
    labels = np.stack([label_map_of(frame, spec) for frame in frames])
    return spec, {"mp4": encode_mp4(frames, config.fps), "seg.npz": encode_label_stack(labels, config.fps)}


def write_tar(config: DemoDataConfig, kind: str, split: str, count: int, out: Path, tar_index: int) -> list[dict]:
    """Write tar `tar_index` of one split (samples_per_tar samples of `count`) atomically; return its index rows."""
    final = out / f"{tar_index:05d}.tar"
    rows = []
    with atomic_path(final) as tmp, wds.TarWriter(str(tmp), mtime=0.0) as writer:
        first = tar_index * config.samples_per_tar
        for index in range(first, min(first + config.samples_per_tar, count)):
            spec, members = make_sample(config, kind, split, index)
            key = f"{tar_index:05d}{index - first:04d}"
            text = caption(spec)
            meta = {"key": key, "status": "success", "caption": text, "width": config.image_size,
                    "height": config.image_size, "demo": dataclasses.asdict(spec)}
            if kind == "videos":
                meta.update(duration=config.video_seconds, fps=config.fps)
            writer.write({"__key__": key, **members, "txt": text, "json": json.dumps(meta, sort_keys=True)})
            rows.append({"key": key, "tar": final.name, "caption": text, **dataclasses.asdict(spec)})
    return rows


def write_split(config: DemoDataConfig, kind: str, split: str, count: int, folder: Path, pool=None) -> None:
    """Write `count` samples as tars of `samples_per_tar` plus `{split}.jsonl`, each file atomically;
    the tars are written by `pool`'s processes when given (the same bytes: each sample has its own seed)."""
    out = folder / kind / split
    out.mkdir(parents=True, exist_ok=True)
    write = functools.partial(write_tar, config, kind, split, count, out)
    tars = range(-(-count // config.samples_per_tar))
    index_rows = []
    with tqdm(total=count, desc=f"{kind}/{split}", unit="sample", leave=False) as bar:
        for rows in (pool.imap(write, tars) if pool else map(write, tars)):
            index_rows += rows
            bar.update(len(rows))
    jsonl = folder / kind / f"{split}.jsonl"
    atomic_write(jsonl, "".join(json.dumps(row, sort_keys=True) + "\n" for row in index_rows))


def make_demo_data(config: DemoDataConfig, output: str | Path, workers: int = 1) -> dict:
    """Write the whole dataset under `output` with `workers` processes and return the summary also
    stored in dataset.json."""
    if config.image_size % 2:
        raise ValueError(f"--image-size must be even (H.264 yuv420p), got {config.image_size}")
    if config.video_seconds * config.fps < 1:
        raise ValueError("--video-seconds × --fps must give at least one frame")
    folder = Path(output)
    counts = {"images": _split_counts(config.num_images, config.heldout_fraction),
              "videos": _split_counts(config.num_videos, config.heldout_fraction)}
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for kind in KINDS:
            for split in SPLITS:
                write_split(config, kind, split, counts[kind][split], folder, pool)
    summary = {"config": dataclasses.asdict(config), "counts": counts, "colours": COLOURS, "backgrounds": BACKGROUNDS,
               "shapes": SHAPES, "sizes": SIZES, "directions": DIRECTIONS}
    (folder / "dataset.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    defaults = DemoDataConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="pixels per side (even)")
    parser.add_argument("--num-images", type=int, default=defaults.num_images, help="images, both splits")
    parser.add_argument("--num-videos", type=int, default=defaults.num_videos, help="videos, both splits")
    parser.add_argument("--video-seconds", type=float, default=defaults.video_seconds)
    parser.add_argument("--fps", type=int, default=defaults.fps)
    parser.add_argument("--speed", type=float, default=defaults.speed, help="image sides per second")
    parser.add_argument("--heldout-fraction", type=float, default=defaults.heldout_fraction)
    parser.add_argument("--samples-per-tar", type=int, default=defaults.samples_per_tar)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes writing tars")
    args = vars(parser.parse_args(argv))
    output, workers = args.pop("output"), args.pop("workers")
    start = time.perf_counter()
    summary = make_demo_data(DemoDataConfig(**args), output, workers)
    counts = summary["counts"]
    print(f"demo data: {counts['images']['train']}+{counts['images']['heldout']} images, "
          f"{counts['videos']['train']}+{counts['videos']['heldout']} videos (train+heldout) in "
          f"{time.perf_counter() - start:.0f}s with {workers} workers → {output}")


if __name__ == "__main__":
    main()
