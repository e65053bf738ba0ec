"""The demo's learning check: read an object's colour and motion direction back from pixels.

Deterministic and simple on purpose: every pixel is snapped to the nearest colour of the demo
palette (object colours + backgrounds); the background is the commonest colour of the frame;
the object is the commonest object colour elsewhere; its motion is the sum of its centroid's
frame-to-frame shifts, taken the short way round (the demo's shapes wrap around the edges).
Applied to generated samples and compared with their captions, it measures whether the model
learned the words, against chance (1 / choices). Generated samples are read against the palette
as the VQ-GAN draws it (`palette_through`), since every pixel they have is the VQ-GAN's drawing.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from model.vqgan import VQGAN
from preprocess.readers import uint8_to_model
from tools.make_demo_data import (BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SIZES, ShapeSpec, render_frame,
                                  render_label_map)
from tools.sample import to_uint8

PALETTE_NAMES = list(COLOURS) + list(BACKGROUNDS)
PALETTE = np.array([*COLOURS.values(), *BACKGROUNDS.values()], dtype=np.float32)  # [P, 3]


def palette_through(vqgan: VQGAN) -> np.ndarray:
    """The palette as `vqgan` draws it, [P, 3]: a small VQ-GAN shifts hues (green comes out teal),
    and generated pixels are the VQ-GAN's drawing, so they are read against the same drawing.

    Frames like the data's: a large circle of every colour on every background. Object colour: the
    mean decoded colour inside the circle, over the backgrounds; background colour: the mean decoded
    colour more than a code away from the circle, over the colours. (A plain frame is no sample of
    the data, and a VQ-GAN trained on shapes may draw it wrong.)"""
    size = vqgan.config.resolution
    frames, inside = [], []
    for name in COLOURS:
        for background in BACKGROUNDS:
            frame = render_frame(ShapeSpec("circle", name, "large", background, None, (0.5, 0.5), 0.0), 0.0, size)
            frames.append(frame)
            inside.append((frame == COLOURS[name]).all(-1))
    pixels = uint8_to_model(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2))  # [C·B, 3, H, W]
    with torch.no_grad():  # drawn the way generated samples are: decoded, then to uint8 [C·B, H, W, 3]
        drawn = to_uint8(vqgan.decode(vqgan.encode(pixels))).astype(np.float32)
    y, x = np.mgrid[:size, :size] + 0.5
    far = np.hypot(x - size / 2, y - size / 2) > SIZES["large"] * size + vqgan.config.downsample
    objects = np.stack([d[m].mean(0) for d, m in zip(drawn, inside)]).reshape(len(COLOURS), len(BACKGROUNDS), 3)
    backgrounds = drawn[:, far].mean(1).reshape(len(COLOURS), len(BACKGROUNDS), 3)
    return np.concatenate([objects.mean(1), backgrounds.mean(0)]).astype(np.float32)


def palette_labels(frame: np.ndarray, palette: np.ndarray = PALETTE) -> np.ndarray:
    """uint8 [H, W, 3] → index of the nearest palette colour per pixel, [H, W]."""
    distances = ((frame[..., None, :].astype(np.float32) - palette) ** 2).sum(-1)
    return distances.argmin(-1)


def _object_mask(labels: np.ndarray, min_fraction: float) -> tuple[np.ndarray, int | None]:
    counts = np.bincount(labels.ravel(), minlength=len(PALETTE))
    background = counts.argmax()  # the shape covers at most a quarter of the frame
    counts = counts[: len(COLOURS)].copy()
    if background < len(COLOURS):
        counts[background] = 0
    colour = int(counts.argmax())
    if counts[colour] < min_fraction * labels.size:
        return np.zeros_like(labels, dtype=bool), None
    return labels == colour, colour


def object_colour(frame: np.ndarray, min_fraction: float = 0.01, palette: np.ndarray = PALETTE) -> str | None:
    """The colour word of the object in a uint8 [H, W, 3] frame, or None when there is no object."""
    _, colour = _object_mask(palette_labels(frame, palette), min_fraction)
    return None if colour is None else PALETTE_NAMES[colour]


def wrapped_centroid(mask: np.ndarray) -> np.ndarray:
    """(x, y) centre of a boolean [H, W] mask on the torus the demo's shapes move on: a shape
    cut by an edge (half on the left, half on the right) is centred on that edge, not mid-frame."""
    centre = []
    for axis, size in ((1, mask.shape[1]), (0, mask.shape[0])):
        angles = 2 * np.pi * (np.nonzero(mask)[axis] + 0.5) / size
        mean = np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())
        centre.append((mean * size / (2 * np.pi) - 0.5) % size)
    return np.array(centre)


def motion_direction(frames: np.ndarray, min_shift: float = 2.0, min_fraction: float = 0.01,
                     palette: np.ndarray = PALETTE) -> str | None:
    """The direction word of the object's motion over uint8 [T, H, W, 3] frames, or None.

    The object (colour read from the first frame) is followed frame to frame; each step's
    centroid shift is taken the short way round the wrapped frame, and the steps are summed.
    Frames where the object is missing are passed over."""
    first, colour = _object_mask(palette_labels(frames[0], palette), min_fraction)
    if colour is None:
        return None
    H, W = first.shape
    centres = [wrapped_centroid(first)]
    for frame in frames[1:]:
        mask = palette_labels(frame, palette) == colour
        if mask.sum() >= min_fraction * mask.size:
            centres.append(wrapped_centroid(mask))
    steps = np.diff(np.array(centres), axis=0)  # (n-1, 2) as (dx, dy)
    steps = (steps + [W / 2, H / 2]) % [W, H] - [W / 2, H / 2]
    dx, dy = steps.sum(0) if len(steps) else (0.0, 0.0)
    if max(abs(dx), abs(dy)) < min_shift:
        return None
    step = (int(np.sign(dx)), 0) if abs(dx) >= abs(dy) else (0, int(np.sign(dy)))
    return next(name for name, vector in DIRECTIONS.items() if vector == step)


def caption_words(caption: str) -> dict[str, str | None]:
    """The colour, direction and background a demo caption states ('a small red circle moving left on a
    white background')."""
    words = caption.split()
    colour = next((w for w in words if w in COLOURS), None)
    direction = words[words.index("moving") + 1] if "moving" in words else None
    background = next((w for w in words if w in BACKGROUNDS), None)
    return {"colour": colour, "direction": direction, "background": background}


def largest_wrapped_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean [H, W] mask on the torus (a shape cut by an edge is one
    component), as a mask; all False when `mask` is."""
    labels, count = ndimage.label(mask)
    parent = np.arange(count + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in ((labels[:, 0], labels[:, -1]), (labels[0, :], labels[-1, :])):  # across the wrapped edges
        both = (a > 0) & (b > 0)
        for i, j in zip(a[both], b[both]):
            parent[root(int(i))] = root(int(j))
    roots = np.array([root(i) for i in range(count + 1)])[labels]
    sizes = np.bincount(roots[labels > 0], minlength=count + 1)
    return (roots == sizes.argmax()) & (labels > 0) if count else np.zeros_like(mask, dtype=bool)


def reads_as_caption(frame: np.ndarray, colour: str, background: str, palette: np.ndarray = PALETTE,
                     halo: int = 2, stray: float = 0.1, min_fraction: float = 0.01) -> bool:
    """Does a uint8 [H, W, 3] frame still read as one object of the caption's colour on the caption's
    background? The background must be the commonest colour; the object is the largest connected region of
    the caption's colour (at least `min_fraction` of the frame); pixels of any other colour than the
    background farther than `halo` pixels from it (the VQ-GAN's blended edges lie within) may number at
    most `stray` × the object. A frame whose shape has split, smeared or dissolved into texture does not."""
    labels = palette_labels(frame, palette)
    background_label = PALETTE_NAMES.index(background)
    if np.bincount(labels.ravel(), minlength=len(PALETTE)).argmax() != background_label:
        return False
    shape = largest_wrapped_component(labels == PALETTE_NAMES.index(colour))
    near = np.zeros_like(shape)
    for dy in range(-halo, halo + 1):
        for dx in range(-halo, halo + 1):
            near |= np.roll(shape, (dy, dx), axis=(0, 1))
    outside = ((labels != background_label) & ~near).sum()
    return shape.sum() >= min_fraction * labels.size and outside <= stray * shape.sum()


def object_mask(frame: np.ndarray, palette: np.ndarray = PALETTE, min_fraction: float = 0.01) -> np.ndarray:
    """The pixels of the object's colour in a uint8 [H, W, 3] frame (all False when there is no object)."""
    return _object_mask(palette_labels(frame, palette), min_fraction)[0]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def shape_class(mask: np.ndarray) -> str | None:
    """The demo shape a boolean [H, W] mask looks most like: each shape of each size drawn at the mask's
    centroid, the best overlap (IoU) wins; None for an empty mask."""
    if mask.sum() == 0:
        return None
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    centre = ((xs.mean() + 0.5) / size, (ys.mean() + 0.5) / size)
    scores = {}
    for shape in SHAPES:
        for name in SIZES:
            template = render_label_map(ShapeSpec(shape, "red", name, "white", None, centre, 0.0), 0.0, size) > 0
            scores[shape] = max(scores.get(shape, 0.0), mask_iou(mask, template))
    return max(scores, key=scores.get)


def match_rate(predicted: list[str | None], expected: list[str | None]) -> float:
    return float(np.mean([p is not None and p == e for p, e in zip(predicted, expected)])) if expected else 0.0


def chance_p_value(matches: int, n: int, chance: float) -> float:
    """One-sided binomial tail: the probability of at least `matches` of `n` at the chance rate."""
    return sum(math.comb(n, k) * chance ** k * (1 - chance) ** (n - k) for k in range(matches, n + 1))
