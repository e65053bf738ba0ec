"""Readers of raw captioned media and the image/video decoding that turns them into pixels.

Inputs are either webdataset tars laid out as img2dataset / video2dataset write them
(`{key}.<ext>` with one of IMAGE_EXTENSIONS or VIDEO_EXTENSIONS, caption in `{key}.txt` or the "caption"
field of `{key}.json`; local paths or brace patterns such as `data/{00000..00099}.tar`), or an
index file (`.csv` with a header, or `.jsonl`) of `path,caption` rows whose paths are relative
to the index file's folder. Inputs are cut into units (one tar, or a block of index rows) that
are read independently, so worker processes and machines can share them without talking.

Bad input never stops a run: an item that cannot be used is reported as a `Skip` with one of
the SKIP_REASONS, and a caption that is missing or not UTF-8 is kept (empty, or decoded with
replacement characters) and flagged. A tar whose structure breaks mid-way yields what it held
before the break plus one BROKEN_TAR skip naming the member where it broke; what lies after
the break cannot be counted.

Image pipeline (reused by the VQ-GAN trainer): `decode_image` (bytes → RGB PIL image; CMYK,
paletted, grayscale, 16-bit and alpha images converted, alpha composited on white),
`resize_center_crop` (short side to the resolution, centre crop), `image_to_tensor`
(float [3, H, W] in [-1, 1]); `load_image` chains the three.

Video clip sampling rule (`ClipSampling`): clip c of a video covers
[start + c·L, start + (c+1)·L) with L = num_frames / fps (4 s for 10 frames at 2.5 fps); its
frame j is the video frame on screen at time t = start + c·L + j / fps, i.e. the last frame
whose presentation timestamp is ≤ t (1 ms tolerance). A clip exists only if the video lasts to
its end; up to `max_clips` consecutive clips are taken per video, and a video with none is
skipped as VIDEO_TOO_SHORT. decord is imported and its readers opened only inside the
function that decodes, i.e. in the worker processes: a reader created before a fork can
deadlock, and a decord loaded before PyAV breaks PyAV's VP8 encoder in the same process.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import glob
import io
import itertools
import json
import logging
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
import urllib.request
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")  # a GIF image: its first frame
VIDEO_EXTENSIONS = ("mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "m1v", "m2v", "ts", "m2ts", "mts",
                    "flv", "f4v", "wmv", "asf", "3gp", "3g2", "ogv", "ogg", "vob", "gif")  # a GIF video: animated
NOT_MEDIA = ("txt", "json", "caption", "cls", "url", "id", "key", "meta", "yaml")
"""Member extensions that hold captions or metadata: a sample's other members with an unknown extension
are tried as media (a decoder that cannot read them skips the sample with its reason)."""
LABEL_EXTENSIONS = ("seg.png",)  # a label map beside an image: {key}.seg.png, one class id per pixel
SKETCH_EXTENSIONS = ("seg.png", "seg.npz")  # an image's label map; a video's label stack (`labels`, `fps`)
MEDIA_EXTENSIONS = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS, "seg": LABEL_EXTENSIONS}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
INDEX_SUFFIXES = (".csv", ".jsonl")

ZERO_BYTE = "zero_byte_file"
CORRUPT_IMAGE = "corrupt_image"
DECOMPRESSION_BOMB = "decompression_bomb"
CORRUPT_VIDEO = "corrupt_video"
VIDEO_TOO_SHORT = "video_too_short"
BROKEN_TAR = "broken_tar"
NO_MEDIA = "no_media"
MISSING_FILE = "missing_file"
DECODE_ERROR = "decode_error"  # a decoder failed otherwise (the exception's type is in the detail)
NO_VIDEO_STREAM = "no_video_stream"  # a readable file with audio (or data) streams only
TOO_SMALL = "too_small"  # curation: shorter side below --min-side
EXTREME_ASPECT = "extreme_aspect"  # curation: longer over shorter side above --max-aspect
SHOT_CUT = "shot_cut"  # curation: every clip holds a hard cut (--skip-cuts)
STATIC_CLIP = "static_clip"  # curation: every clip is still (--min-motion)
BAD_LABEL_MAP = "bad_label_map"  # not a one-channel map of class ids, or a class beyond num_classes
NO_LABEL_MAP = "no_label_map"  # sketch codes were asked for, and the sample has no label map
SKIP_REASONS = (ZERO_BYTE, CORRUPT_IMAGE, DECOMPRESSION_BOMB, CORRUPT_VIDEO, VIDEO_TOO_SHORT, BROKEN_TAR,
                NO_MEDIA, MISSING_FILE, DECODE_ERROR, NO_VIDEO_STREAM, TOO_SMALL, EXTREME_ASPECT, SHOT_CUT, STATIC_CLIP,
                BAD_LABEL_MAP, NO_LABEL_MAP)
CAPTION_MISSING = "caption_missing"
CAPTION_NON_UTF8 = "caption_non_utf8"


class SkipInput(Exception):
    """An input that cannot be used; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class Curation:
    """Filters of `preprocess/tokenize.py`, all off by default; what fails one is a skip with its reason.

    Sizes are the picture as displayed (square pixels, rotation applied). A clip's motion is the mean
    absolute difference of consecutive frames (0-255) after resizing; a cut is one such difference over
    `cut_threshold` (the clip's own frames, no scene detector, so no OpenCV dependency). Clips that fail
    are dropped; a video whose clips all fail is skipped.
    """
    min_side: int = 0
    """Skip pictures whose shorter side is below this (no upscaling past it); 0: off."""
    max_aspect: float = 0.0
    """Skip pictures whose longer side is more than this many times the shorter; 0: off."""
    cut_threshold: float = 0.0
    """Drop clips with a consecutive-frame difference above this (a hard cut); 0: off."""
    min_motion: float = 0.0
    """Drop clips whose mean consecutive-frame difference is below this (a still scene); 0: off."""

    def check_size(self, width: int, height: int) -> None:
        short, long = sorted((width, height))
        if self.min_side and short < self.min_side:
            raise SkipInput(TOO_SMALL, f"{width}x{height}: shorter side < {self.min_side}")
        if self.max_aspect and long > self.max_aspect * short:
            raise SkipInput(EXTREME_ASPECT, f"{width}x{height}: aspect {long / short:.2f} > {self.max_aspect}")

    def clip_problem(self, clip: np.ndarray) -> SkipInput | None:
        """uint8 [T, 3, H, W] → why the clip is dropped, or None."""
        if not (self.cut_threshold or self.min_motion) or len(clip) < 2:
            return None
        steps = np.abs(np.diff(clip.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # [T - 1]
        if self.cut_threshold and steps.max() > self.cut_threshold:
            return SkipInput(SHOT_CUT, f"frame difference {steps.max():.1f} > {self.cut_threshold} at frame "
                                       f"{int(steps.argmax()) + 1}")
        if self.min_motion and steps.mean() < self.min_motion:
            return SkipInput(STATIC_CLIP, f"mean frame difference {steps.mean():.2f} < {self.min_motion}")
        return None


NO_CURATION = Curation()


@dataclasses.dataclass(frozen=True)
class InputUnit:
    """One independently readable piece of input: a whole tar, or rows [start, stop) of an index file."""

    source: str
    rows: tuple[int, int] | None = None


@dataclasses.dataclass
class RawItem:
    """One input's still-encoded media and its caption (None when missing)."""

    key: str
    media: bytes
    caption: str | None
    caption_issue: str | None  # CAPTION_MISSING, CAPTION_NON_UTF8 or None
    sketch: tuple[str, bytes] | None = None  # its label map: ("seg.png" | "seg.npz", bytes), when it has one


@dataclasses.dataclass
class Skip:
    """An input that produced nothing, with why."""

    key: str
    reason: str
    detail: str = ""


# ---------------------------------------------------------------------------------------- images


def decode_image(data: bytes, max_pixels: int | None = Image.MAX_IMAGE_PIXELS, min_side: int | None = None,
                 check_size: Callable[[int, int], None] | None = None) -> Image.Image:
    """Encoded bytes → RGB image, or SkipInput (zero bytes, undecodable/truncated, over `max_pixels`).

    With `min_side`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both
    sides ≥ min_side: several times faster on large photos that are resized down anyway."""
    if not data:
        raise SkipInput(ZERO_BYTE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise SkipInput(DECOMPRESSION_BOMB, f"{image.width}x{image.height} > {max_pixels} pixels")
            if check_size is not None:
                check_size(image.width, image.height)
            if min_side is not None and image.format == "JPEG":
                image.draft(None, (min_side, min_side))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise SkipInput(DECOMPRESSION_BOMB, str(error)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:  # struct: some cut headers
        raise SkipInput(CORRUPT_IMAGE, str(error)) from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → RGB: alpha composited on white, 16/32-bit grey scaled to 8 bits (÷257)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.asarray(image).astype(np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int, resample: int = Image.BICUBIC) -> Image.Image:
    """Resize so the short side is `size` (bicubic, antialiased; label maps: nearest), then crop the centre
    size × size."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def uint8_to_model(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → float in [-1, 1], the VQ-GAN's input range."""
    return pixels.float() / 127.5 - 1.0


def model_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """The VQ-GAN's output range [-1, 1] → uint8 pixels, values outside it clipped."""
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → float [3, H, W] in [-1, 1]."""
    return uint8_to_model(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))


def load_image(data: bytes, resolution: int) -> torch.Tensor:
    """Encoded image bytes → float [3, resolution, resolution] in [-1, 1] (raises SkipInput)."""
    return image_to_tensor(resize_center_crop(decode_image(data, min_side=resolution), resolution))


def image_pixels(data: bytes, resolution: int, curation: Curation = NO_CURATION) -> np.ndarray:
    """Encoded image bytes → uint8 [3, resolution, resolution], what workers send to the encoder."""
    image = resize_center_crop(decode_image(data, min_side=resolution, check_size=curation.check_size), resolution)
    return np.asarray(image).transpose(2, 0, 1).copy()


def label_map(data: bytes, resolution: int, num_classes: int) -> np.ndarray:
    """Encoded label map (a PNG of class ids: mode L, P or 16-bit) → uint16 [resolution, resolution], resized
    with nearest neighbours (a class id is never blended) and centre-cropped as images are (raises SkipInput)."""
    if not data:
        raise SkipInput(ZERO_BYTE)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise SkipInput(BAD_LABEL_MAP, f"undecodable: {error}") from None
    if image.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
        raise SkipInput(BAD_LABEL_MAP, f"mode {image.mode}: a label map holds one class id per pixel (L, P or 16-bit)")
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    return _fitted_labels(image, resolution, num_classes)


def _fitted_labels(image: Image.Image, resolution: int, num_classes: int) -> np.ndarray:
    """A label map resized with nearest neighbours (a class id is never blended) and centre-cropped as images
    are → uint16 [resolution, resolution]; class ids beyond num_classes raise SkipInput."""
    labels = np.asarray(resize_center_crop(image, resolution, Image.NEAREST))
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise SkipInput(BAD_LABEL_MAP, f"class ids {int(labels.min())}..{int(labels.max())}, the model has "
                                       f"{num_classes} classes")
    return labels.astype(np.uint16)


def label_clips(data: bytes, starts: list[float], sampling: ClipSampling, resolution: int,
                num_classes: int) -> list[np.ndarray]:
    """A video's label stack (`.npz` with `labels` [F, H, W], one map per frame from t = 0, and `fps`, their
    rate) → uint16 [T, resolution, resolution] per clip start: the maps on screen at the times of the clip that
    starts there, chosen by the rule that picks the clip's video frames (raises SkipInput). The stack is read
    once for all the clips."""
    try:
        with np.load(io.BytesIO(data)) as stack:
            labels, fps = stack["labels"], float(stack["fps"])
    except (OSError, ValueError, KeyError, EOFError, zlib.error) as error:
        raise SkipInput(BAD_LABEL_MAP, f"not a label stack (npz with labels [F, H, W] and fps): {error}") from None
    if labels.ndim != 3 or labels.dtype.kind not in "ui" or not fps > 0:
        raise SkipInput(BAD_LABEL_MAP, f"labels {labels.dtype} {labels.shape} at fps {fps}: expected integer "
                                       f"[F, H, W] maps at a positive rate")
    clips = []
    for start in starts:
        if start + sampling.seconds > len(labels) / fps + 1e-3:  # the rule a clip fits its video by
            raise SkipInput(BAD_LABEL_MAP, f"{len(labels)} label maps at {fps:g} fps end at {len(labels) / fps:.2f} "
                                           f"s; the clip needs {start + sampling.seconds:.2f} s")
        times = start + np.arange(sampling.num_frames) / sampling.fps
        picks = np.searchsorted(np.arange(len(labels)) / fps, times + 1e-3, side="right") - 1
        clips.append(np.stack([_fitted_labels(Image.fromarray(labels[i].astype(np.int32)), resolution, num_classes)
                               for i in picks]))
    return clips


# ---------------------------------------------------------------------------------------- videos


@dataclasses.dataclass(frozen=True)
class ClipSampling:
    """Which frames make a clip (see the module docstring for the rule)."""

    num_frames: int = 10
    fps: float = 2.5
    start: float = 0.0  # seconds skipped at the beginning of every video
    max_clips: int = 1  # consecutive, non-overlapping clips taken per video

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


def clips_that_fit(duration: float, sampling: ClipSampling) -> int:
    """How many of the `max_clips` consecutive clips end before the video does."""
    fit = 0
    while fit < sampling.max_clips and sampling.start + (fit + 1) * sampling.seconds <= duration + 1e-3:
        fit += 1
    return fit


def clip_frame_indices(frame_starts: np.ndarray, duration: float, sampling: ClipSampling) -> list[list[int]]:
    """Frame indices of each clip that fits in a video with these presentation timestamps."""
    clips = []
    for c in range(clips_that_fit(duration, sampling)):
        clip_start = sampling.start + c * sampling.seconds
        times = clip_start + np.arange(sampling.num_frames) / sampling.fps
        indices = np.searchsorted(frame_starts, times + 1e-3, side="right") - 1
        clips.append([int(i) for i in np.clip(indices, 0, len(frame_starts) - 1)])
    return clips


def frame_timestamps(reader) -> tuple[np.ndarray, float]:
    """Each frame's presentation start and the video's end, in seconds, from a decord VideoReader."""
    timestamps = np.asarray(reader.get_frame_timestamp(list(range(len(reader)))), dtype=np.float64)
    return timestamps[:, 0], float(timestamps[-1, 1])


def video_clips(data: bytes, sampling: ClipSampling, resolution: int, curation: Curation = NO_CURATION
                ) -> list[np.ndarray]:
    """Encoded video bytes → one uint8 [T, 3, resolution, resolution] array per clip (raises SkipInput)."""
    return [clip for _, clip in timed_video_clips(data, sampling, resolution, curation)]


def timed_video_clips(data: bytes, sampling: ClipSampling, resolution: int, curation: Curation = NO_CURATION
                      ) -> list[tuple[float, np.ndarray]]:
    """Encoded video bytes → (start in seconds, uint8 [T, 3, resolution, resolution]) per clip kept (raises
    SkipInput).

    decord reads the video; what it cannot read, or measures to a length other than the container
    states, is read again with PyAV (FFmpeg), and only when both fail is the video skipped, with both
    reasons. MPEG transport and program streams, raw MPEG video, ASF/WMV and GIF go to PyAV at once:
    decord reads them from memory with wrong frames for their indices (a GOP off, or out of order) or
    none (tests/test_containers.py holds each container to a reference decoding)."""
    if not data:
        raise SkipInput(ZERO_BYTE)
    video = probe(data)
    if video.size is not None:
        curation.check_size(*video.size)
    if video.container in PYAV_FORMATS:
        clips = pyav_frames(data, sampling, video.duration)
    else:
        try:
            clips = decord_frames(data, sampling, video.duration)
        except SkipInput as first:
            try:
                clips = pyav_frames(data, sampling, video.duration)
            except SkipInput as second:
                raise SkipInput(second.reason, f"decord: {first.detail}; PyAV: {second.detail}"[:400]) from None
    clips = [np.stack([upright(frame, video, resolution) for frame in clip]) for clip in clips]
    problems = [curation.clip_problem(clip) for clip in clips]
    kept = [(sampling.start + c * sampling.seconds, clip) for c, (clip, problem) in enumerate(zip(clips, problems))
            if problem is None]
    if not kept:
        raise problems[0]
    return kept


def upright(frame: np.ndarray, video: Probe, resolution: int) -> np.ndarray:
    """A stored frame [H, W, 3] as displayed (square pixels, turned by the display rotation), then the
    short side to `resolution` and centre-cropped: uint8 [3, resolution, resolution]."""
    image = Image.fromarray(frame)
    if abs(video.pixel_aspect - 1) > 1e-3:
        image = image.resize((max(1, round(image.width * video.pixel_aspect)), image.height), Image.BICUBIC)
    if video.rotation:
        image = Image.fromarray(np.rot90(np.asarray(image), k=video.rotation // 90).copy())
    return np.asarray(resize_center_crop(image, resolution)).transpose(2, 0, 1)


def _too_short(duration: float, sampling: ClipSampling) -> SkipInput:
    return SkipInput(VIDEO_TOO_SHORT, f"{duration:.2f} s < {sampling.start + sampling.seconds:.2f} s needed from "
                                      f"{sampling.start:.2f} s on")


PYAV_FORMATS = {"mpegts", "mpeg", "mpegvideo", "gif", "asf"}
"""FFmpeg's names of the containers that PyAV reads instead of decord (see video_clips)."""


@dataclasses.dataclass(frozen=True)
class Probe:
    """What the container says of a video, from its header and first frame."""
    container: str | None = None
    """FFmpeg's name of the container format."""
    duration: float | None = None
    """Stated length in seconds."""
    rotation: int = 0
    """Degrees to turn the stored frames counterclockwise for display (a phone's display matrix)."""
    pixel_aspect: float = 1.0
    """Width of a stored pixel over its height (anamorphic video: not 1)."""
    size: tuple[int, int] | None = None
    """(width, height) of the picture as displayed: square pixels, rotation applied."""


def probe(data: bytes) -> Probe:
    """The container's name, stated length, display rotation and pixel aspect (PyAV; one frame decoded)."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                return Probe(container.format.name)
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = container.duration / av.time_base if container.duration else None
            first = next(container.decode(stream), None)
            if first is None:
                return Probe(container.format.name, duration)
            rotation = int(round(first.rotation / 90)) * 90 % 360
            aspect = float(stream.sample_aspect_ratio) if stream.sample_aspect_ratio else 1.0
            width, height = max(1, round(first.width * aspect)), first.height
            size = (height, width) if rotation in (90, 270) else (width, height)
            return Probe(container.format.name, duration, rotation, aspect, size)
    except av.error.FFmpegError:
        return Probe()


def decord_frames(data: bytes, sampling: ClipSampling, stated: float | None = None) -> list[list[np.ndarray]]:
    """The stored frames [H, W, 3] of each clip, read with decord; refused (SkipInput) when decord's
    timestamps do not increase from 0 or its length is not the `stated` one."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    reader = None
    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        if len(reader) == 0:
            raise SkipInput(CORRUPT_VIDEO, "no frames")
        starts, duration = frame_timestamps(reader)
        if starts[0] < -1e-3 or np.any(np.diff(starts) < -1e-3):
            raise SkipInput(CORRUPT_VIDEO, "decord's frame timestamps do not increase from 0")
        if stated is not None and abs(duration - stated) > max(0.5, 0.05 * stated):
            raise SkipInput(CORRUPT_VIDEO, f"decord reads {duration:.2f} s of a video that states {stated:.2f} s")
        clips = clip_frame_indices(starts, duration, sampling)
        if not clips:
            raise _too_short(duration, sampling)
        wanted = sorted({i for clip in clips for i in clip})
        frames = dict(zip(wanted, reader.get_batch(wanted).asnumpy()))
    except (RuntimeError, decord.DECORDError) as error:
        raise SkipInput(CORRUPT_VIDEO, str(error).splitlines()[0][:200]) from None
    finally:
        # Free the reader now: left in a traceback's reference cycle, it would be collected later,
        # possibly in a forked DataLoader worker, where decord's destructor aborts the process.
        del reader
    return [[frames[i] for i in clip] for clip in clips]


AVFMT_NOTIMESTAMPS = 0x80
"""FFmpeg's flag of formats without timestamps (raw MPEG video): their times are counted from the start,
so they are read from the start, not sought."""


def pyav_frames(data: bytes, sampling: ClipSampling, stated: float | None = None) -> list[list[np.ndarray]]:
    """The same clips read with PyAV: seek to the first clip, decode in presentation order up to the end of
    the last one, and keep only the frames that the clip times pick (the last frame shown at each time).
    Where the seek misses (no frame, or the first one after the first clip time), it reads from the start.
    The video lasts as long as the container `stated` (probe) or its last decoded frame, whichever is longer."""
    import av

    try:
        read = _pyav_pick(data, sampling, seek=sampling.start > 0) or _pyav_pick(data, sampling, seek=False)
    except av.error.FFmpegError as error:
        raise SkipInput(CORRUPT_VIDEO, str(error).splitlines()[0][:200]) from None
    picked, last_end = read
    duration = max(stated or 0.0, last_end)
    count = clips_that_fit(duration, sampling)
    if not count:
        raise _too_short(duration, sampling)
    last = picked[max(picked)]
    return [[picked.get(c * sampling.num_frames + j, last) for j in range(sampling.num_frames)]
            for c in range(count)]


def _decoded(container, stream) -> Iterator:
    """A stream's frames in presentation order; a packet the decoder rejects (damaged data) is passed over,
    so a damaged stretch shows the frame before it instead of ending the video."""
    import av

    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


def _sought(container, stream, origin: int, base: float, time: float) -> Iterator | None:
    """Frames from a keyframe at or before `time` seconds on, or None when no seek lands there. A seek
    may land after its target (MPEG-TS has no index: FFmpeg guesses a byte position), so it is retried
    1, 2, 4, … s earlier."""
    back = 0.0
    while True:
        container.seek(int(origin + max(0.0, time - back) / base), stream=stream, backward=True)
        frames = _decoded(container, stream)
        first = next(frames, None)
        if first is not None and first.pts is not None and (first.pts - origin) * base <= time + 1e-3:
            return itertools.chain([first], frames)
        if back >= time:
            return None
        back = max(1.0, 2 * back)


def _pyav_pick(data: bytes, sampling: ClipSampling, seek: bool) -> tuple[dict[int, np.ndarray], float] | None:
    """({index of a clip time: the frame on screen then}, the end of the last decoded frame); None when the
    seek missed.
    Clip times past the last decoded frame are left out: that frame stays on screen."""
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.video:
            raise SkipInput(NO_VIDEO_STREAM, f"streams: {[s.type for s in container.streams]}")
        stream = container.streams.video[0]
        base = float(stream.time_base or 0) or 1 / av.time_base
        rate = float(stream.average_rate or 0)
        end = sampling.start + sampling.max_clips * sampling.seconds
        times = [sampling.start + c * sampling.seconds + j / sampling.fps
                 for c in range(sampling.max_clips) for j in range(sampling.num_frames)]
        frames = _decoded(container, stream)
        first = next(frames, None)
        if first is None:
            raise SkipInput(CORRUPT_VIDEO, "no frames")
        origin = first.pts or 0  # time 0 is the first frame's, not the stream's start (MPEG-PS/TS differ)
        if seek and not container.format.flags & AVFMT_NOTIMESTAMPS:
            frames = _sought(container, stream, origin, base, sampling.start)
            if frames is None:
                return None
        else:
            frames = itertools.chain([first], frames)
        picked, previous, last_end, pending = {}, None, 0.0, 0
        for frame in frames:
            # a frame without a timestamp follows the one before it
            shown = last_end if frame.pts is None else (frame.pts - origin) * base
            if previous is None and seek and shown > times[0] + 1e-3:
                return None
            while pending < len(times) and shown > times[pending] + 1e-3 and previous is not None:
                picked[pending] = previous
                pending += 1
            previous = frame.to_ndarray(format="rgb24")
            last_end = shown + (float(frame.duration * base) if frame.duration else 1 / rate if rate else 0.0)
            if shown > end + 1e-3:
                break
        if previous is None:
            if seek:
                return None
            raise SkipInput(CORRUPT_VIDEO, "no frames")
        picked[pending] = previous
        return picked, last_end


# ---------------------------------------------------------------------------------------- inputs


REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "pipe:")
"""Inputs read over the network or from a command: tars only (a remote index file's media paths would
be remote too). `pipe:CMD` reads CMD's standard output, as webdataset does."""
RETRIES = 4


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_PREFIXES)


def _download(url: str, file) -> None:
    if url.startswith("pipe:"):
        subprocess.run(url[len("pipe:"):], shell=True, stdout=file, stderr=subprocess.PIPE, check=True)
    elif url.startswith(("http://", "https://")):
        with urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, file)
    else:
        import fsspec  # s3:// needs s3fs, gs:// gcsfs installed beside it

        with fsspec.open(url, "rb") as remote:
            shutil.copyfileobj(remote, file)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path holding the input: the path itself, or a temporary copy of a remote input fetched with
    RETRIES tries (waiting 1, 2, 4 s between them); after them, an OSError that names the input."""
    if not is_remote(path):
        yield path
        return
    with tempfile.NamedTemporaryFile(suffix=".tar") as file:
        for attempt in range(RETRIES):
            try:
                file.seek(0)
                file.truncate()
                _download(path, file)
                file.flush()
                break
            except (OSError, subprocess.CalledProcessError, ValueError, ImportError) as error:
                if attempt == RETRIES - 1:
                    detail = error.stderr.decode(errors="replace").strip() if isinstance(
                        error, subprocess.CalledProcessError) and error.stderr else str(error)
                    raise OSError(f"input {path} could not be read after {RETRIES} tries: {detail}") from None
                time.sleep(2 ** attempt)
        yield file.name


def expand_inputs(inputs: list[str]) -> list[str]:
    """Expand brace patterns (`data/{00000..00099}.tar`) in the given order, then glob patterns
    (`data/*.tar`, sorted); a glob that matches nothing is an error, not an empty input."""
    paths = []
    for path in (p for pattern in inputs for p in wds.shardlists.expand_urls(pattern)):
        if glob.has_magic(path) and not is_remote(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise FileNotFoundError(f"input pattern {path!r} matches no file")
            paths += matches
        else:
            paths.append(path)
    return paths


def list_units(inputs: list[str], rows_per_unit: int) -> list[InputUnit]:
    """Cut the inputs into units: each tar is one, index files give blocks of `rows_per_unit` rows.
    A missing input file is an error (a typo in a pattern), not a skip."""
    paths = expand_inputs(inputs)
    missing = [path for path in paths if not is_remote(path) and not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} inputs are not local files, e.g. {missing[:3]}")
    units = []
    for path in paths:
        if path.endswith(TAR_SUFFIXES) or path.startswith("pipe:"):
            units.append(InputUnit(path))
        elif path.endswith(INDEX_SUFFIXES):
            count = len(read_index(path))
            units += [InputUnit(path, (a, min(a + rows_per_unit, count))) for a in range(0, count, rows_per_unit)]
        else:
            raise ValueError(f"{path}: not a tar ({', '.join(TAR_SUFFIXES)}) "
                             f"or an index file ({', '.join(INDEX_SUFFIXES)})")
    return units


def decode_caption(data: bytes | None) -> tuple[str | None, str | None]:
    """Caption bytes → (text or None, issue or None); not-UTF-8 bytes are decoded with replacement."""
    if data is None:
        return None, CAPTION_MISSING
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace").strip(), CAPTION_NON_UTF8
    text = text.strip()
    return (text, None) if text else (None, CAPTION_MISSING)


def _json_caption(data: bytes) -> bytes | None:
    try:
        meta = json.loads(data.decode("utf-8", errors="surrogateescape"))
    except ValueError:
        return None
    value = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
    return value.encode("utf-8", errors="surrogateescape") if isinstance(value, str) else None


def sample_caption(sample: dict) -> tuple[str | None, str | None]:
    """Caption of a webdataset sample: `.txt`, else the "caption" (or "text") field of `.json`."""
    if "txt" in sample:
        return decode_caption(sample["txt"])
    return decode_caption(_json_caption(sample["json"]) if "json" in sample else None)


class BrokenTar(Exception):
    """The tar's structure broke; `key` names the sample being read when it did."""

    def __init__(self, key: str, detail: str):
        super().__init__(detail)
        self.key = key


def _tar_members(path: str) -> Iterator[dict]:
    """Regular members as webdataset file samples; raises BrokenTar on any damage, also after a
    bad header that tarfile (Python < 3.12) silently takes for the end (the rest must be zeros).
    Before raising, an end-of-shard marker makes group_by_keys release the last complete sample."""
    current = reading = None  # key of the last sample yielded from; member being read
    with open(path, "rb") as file:
        try:
            tar = tarfile.open(fileobj=file, mode="r:*")
            for info in tar:
                reading = info.name
                if info.isreg():
                    data = tar.extractfile(info).read()
                    if len(data) != info.size:
                        raise tarfile.ReadError(f"member {info.name} holds {len(data)} of {info.size} bytes")
                    yield {"fname": info.name, "data": data, "__url__": path}
                    current = _sample_key(info.name)
                tar.members = []
                reading = None
            tar.fileobj.seek(tar.offset)
            while chunk := tar.fileobj.read(1 << 20):
                if chunk.strip(b"\0"):
                    raise tarfile.ReadError(f"unreadable header at byte {tar.offset}")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            broken = _sample_key(reading) if reading else None
            if current is not None and current != broken:
                yield {}
            where = f"in member {reading}" if reading else f"after the samples up to {current or 'none'}"
            raise BrokenTar(broken or f"{Path(path).name}:{current or ''}+", f"{error} ({where})") from None


def _sample_key(member: str) -> str:
    return wds.tariterators.base_plus_ext(member)[0] or member


def iter_tar(path: str, modality: str) -> Iterator[RawItem | Skip]:
    """Samples of one tar in tar order, grouped by key with webdataset."""
    extensions = MEDIA_EXTENSIONS[modality]
    with local_copy(path) as local:
        yield from _iter_local_tar(local, path, extensions)


def _iter_local_tar(local: str, path: str, extensions: tuple[str, ...]) -> Iterator[RawItem | Skip]:
    try:
        for sample in wds.tariterators.group_by_keys(_tar_members(local)):
            key = sample["__key__"]
            members = sorted(k for k in sample if not k.startswith("__"))
            ext = next((e for e in extensions if e in sample), None) or next(
                (m for m in members if m.lower() not in NOT_MEDIA and m.lower().split(".")[-1] not in NOT_MEDIA), None)
            if ext is None:
                yield Skip(key, NO_MEDIA, f"members {members}")
                continue
            sketch = next(((e, sample[e]) for e in SKETCH_EXTENSIONS if e in sample and e != ext), None)
            yield RawItem(key, sample[ext], *sample_caption(sample), sketch)
    except BrokenTar as error:
        yield Skip(error.key, BROKEN_TAR, str(error))
    except ValueError as error:  # group_by_keys: a file name twice in one sample
        yield Skip(path, BROKEN_TAR, str(error))


@functools.lru_cache(maxsize=2)  # every unit of an index file reads it; parse it once per process
def read_index(path: str) -> list[dict]:
    """Rows of a CSV (header with `path` and `caption`, optionally `seg`: the label map's path) or JSONL index;
    caption bytes kept raw so that a not-UTF-8 caption is detected per row."""
    text = Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
    if path.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        if rows and "path" not in rows[0]:
            raise ValueError(f"{path}: the CSV header needs a `path` column (and `caption`), got {list(rows[0])}")
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [{"path": row["path"], "caption": row.get("caption"), "seg": row.get("seg") or None} for row in rows]


def iter_index(path: str, rows: tuple[int, int]) -> Iterator[RawItem | Skip]:
    """Rows [start, stop) of an index file; the key of a row is its media path."""
    root = Path(path).parent
    for row in read_index(path)[rows[0] : rows[1]]:
        key = row["path"]
        caption = row["caption"]
        try:
            media = (root / key).read_bytes()
        except OSError as error:
            yield Skip(key, MISSING_FILE, str(error))
            continue
        raw = caption.encode("utf-8", errors="surrogateescape") if isinstance(caption, str) else None
        sketch = None
        if row["seg"]:
            try:
                sketch = ("seg.npz" if row["seg"].endswith(".npz") else "seg.png", (root / row["seg"]).read_bytes())
            except OSError as error:
                yield Skip(key, MISSING_FILE, f"label map: {error}")
                continue
        yield RawItem(key, media, *decode_caption(raw), sketch)


def iter_unit(unit: InputUnit, modality: str) -> Iterator[RawItem | Skip]:
    """Every input of a unit, in order, as a RawItem or a Skip."""
    if unit.rows is None:
        return iter_tar(unit.source, modality)
    return iter_index(unit.source, unit.rows)


def _caption_fields(path: str) -> Iterator[dict]:
    """{"txt"/"json": bytes} of each sample of a tar, in order, reading no other member's bytes."""
    with tarfile.open(path, mode="r:*") as tar:
        key, fields = None, {}
        for info in tar:
            if info.isreg():
                member_key, ext = wds.tariterators.base_plus_ext(info.name)
                if member_key != key:
                    if key is not None:
                        yield fields
                    key, fields = member_key, {}
                if ext in ("txt", "json"):
                    fields[ext] = tar.extractfile(info).read()
            tar.members = []
        if key is not None:
            yield fields


def iter_captions(inputs: list[str]) -> Iterator[str]:
    """Every non-empty caption of tars, index files or `.txt` files (one caption per line); a tar's
    media bytes are never read."""
    for path in expand_inputs(inputs):
        if path.endswith(".txt"):
            lines = Path(path).read_bytes().splitlines()
            yield from (text for text, _ in map(decode_caption, lines) if text)
        elif path.endswith(INDEX_SUFFIXES):
            for row in read_index(path):
                raw = row["caption"].encode("utf-8", errors="surrogateescape") if row["caption"] else None
                text, _ = decode_caption(raw)
                if text:
                    yield text
        elif path.endswith(TAR_SUFFIXES) or path.startswith("pipe:"):
            with local_copy(path) as local:
                try:
                    for fields in _caption_fields(local):
                        text, _ = sample_caption(fields)
                        if text:
                            yield text
                except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
                    logging.warning("%s: captions after the break are not read: %s", path, error)
        else:
            raise ValueError(f"{path}: captions come from .txt, {', '.join(INDEX_SUFFIXES)} or tar files")
