"""The demo's learning check: read an object's colour and motion direction back from pixels.

Deterministic and simple on purpose: every pixel is snapped to the nearest colour of the demo
palette (object colours + backgrounds); the background is the commonest colour on the border;
the object is the commonest object colour elsewhere; its motion is the displacement of its
centroid from the first to the last frame. Applied to generated samples and compared with
their captions, it measures whether the model learned the words, against chance (1 / choices).
"""
from __future__ import annotations

import numpy as np

from tools.make_demo_data import BACKGROUNDS, COLOURS, DIRECTIONS

PALETTE_NAMES = list(COLOURS) + list(BACKGROUNDS)
PALETTE = np.array([*COLOURS.values(), *BACKGROUNDS.values()], dtype=np.float32)  # [P, 3]


def palette_labels(frame: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] → index of the nearest palette colour per pixel, [H, W]."""
    distances = ((frame[..., None, :].astype(np.float32) - PALETTE) ** 2).sum(-1)
    return distances.argmin(-1)


def _object_mask(labels: np.ndarray, min_fraction: float) -> tuple[np.ndarray, int | None]:
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = np.bincount(border, minlength=len(PALETTE)).argmax()
    counts = np.bincount(labels.ravel(), minlength=len(PALETTE))[: len(COLOURS)].copy()
    if background < len(COLOURS):
        counts[background] = 0
    colour = int(counts.argmax())
    if counts[colour] < min_fraction * labels.size:
        return np.zeros_like(labels, dtype=bool), None
    return labels == colour, colour


def object_colour(frame: np.ndarray, min_fraction: float = 0.01) -> str | None:
    """The colour word of the object in a uint8 [H, W, 3] frame, or None when there is no object."""
    _, colour = _object_mask(palette_labels(frame), min_fraction)
    return None if colour is None else PALETTE_NAMES[colour]


def motion_direction(frames: np.ndarray, min_shift: float = 2.0, min_fraction: float = 0.01) -> str | None:
    """The direction word of the object's motion over uint8 [T, H, W, 3] frames, or None."""
    first, colour = _object_mask(palette_labels(frames[0]), min_fraction)
    if colour is None:
        return None
    last = palette_labels(frames[-1]) == colour
    if last.sum() < min_fraction * last.size:
        return None
    (y0, x0), (y1, x1) = (np.argwhere(m).mean(0) for m in (first, last))
    dx, dy = x1 - x0, y1 - y0
    if max(abs(dx), abs(dy)) < min_shift:
        return None
    step = (int(np.sign(dx)), 0) if abs(dx) >= abs(dy) else (0, int(np.sign(dy)))
    return next(name for name, vector in DIRECTIONS.items() if vector == step)


def caption_words(caption: str) -> dict[str, str | None]:
    """The colour and direction a demo caption states ('a small red circle moving left on …')."""
    words = caption.split()
    colour = next((w for w in words if w in COLOURS), None)
    direction = words[words.index("moving") + 1] if "moving" in words else None
    return {"colour": colour, "direction": direction}


def match_rate(predicted: list[str | None], expected: list[str | None]) -> float:
    return float(np.mean([p is not None and p == e for p, e in zip(predicted, expected)])) if expected else 0.0
