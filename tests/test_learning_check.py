"""The demo's pixel analysis reads colour and motion correctly from the demo's own rendered media."""
import dataclasses

import numpy as np
import pytest
import torch

from model.vqgan import VQGAN, VQGANConfig
from tools.learning_check import (PALETTE, PALETTE_NAMES, caption_words, chance_p_value, largest_wrapped_component,
                                  mask_iou, match_rate, motion_direction, object_colour, object_mask, palette_through,
                                  reads_as_caption, shape_class, wrapped_centroid)
from tools.make_demo_data import (DemoDataConfig, ShapeSpec, caption, random_spec, render_frame, render_label_map,
                                  render_video)


def test_colour_and_direction_are_read_back_from_rendered_samples():
    rng = np.random.default_rng(0)
    colours, directions, expected_c, expected_d = [], [], [], []
    for _ in range(40):
        spec = random_spec(rng, speed=DemoDataConfig.speed)
        frames = render_video(spec, seconds=4.0, fps=2.5, image_size=64)  # 10 frames: what a clip holds
        words = caption_words(caption(spec))
        colours.append(object_colour(frames[0]))
        directions.append(motion_direction(frames))
        expected_c.append(words["colour"])
        expected_d.append(words["direction"])
    assert match_rate(colours, expected_c) == 1.0
    assert match_rate(directions, expected_d) == 1.0


def test_no_object_and_no_motion_give_none():
    plain = np.full((64, 64, 3), 255, dtype=np.uint8)
    assert object_colour(plain) is None
    spec = random_spec(np.random.default_rng(1), speed=None)
    still = np.stack([render_frame(spec, 0.0, 64)] * 5)
    assert motion_direction(still) is None
    assert caption_words("a large blue square on a black background") == {"colour": "blue", "direction": None,
                                                                            "background": "black"}


def test_motion_across_an_edge_is_read_the_short_way_round():
    # 0.1 sides per frame to the left from x = 0.15: the shape crosses the left edge and comes back
    # on the right; a plain centroid would see a jump of most of the frame to the right.
    spec = ShapeSpec("square", "blue", "large", "white", "left", (0.15, 0.5), 0.25)
    frames = render_video(spec, seconds=2.0, fps=2.5, image_size=64)
    assert motion_direction(frames) == "left"
    mask = np.zeros((64, 64), dtype=bool)
    mask[30:34, :3] = mask[30:34, -3:] = True  # cut by the left/right edge
    np.testing.assert_allclose(wrapped_centroid(mask), [63.5, 31.5], atol=1e-6)


def test_pixels_are_read_against_the_palette_the_vqgan_draws():
    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig.from_preset("tiny", resolution=32, codebook_size=16)).eval()
    drawn = palette_through(vqgan)
    assert drawn.shape == PALETTE.shape and np.isfinite(drawn).all() and (0 <= drawn).all() and (drawn <= 255).all()
    # a VQ-GAN that draws red as orange: an orange shape is read as red against its palette
    shifted = PALETTE.copy()
    shifted[PALETTE_NAMES.index("red")] = (240, 130, 40)
    frame = render_frame(ShapeSpec("circle", "red", "large", "white", None, (0.5, 0.5), 0.0), 0.0, 64).copy()
    frame[(frame == (230, 25, 25)).all(-1)] = (235, 125, 45)
    assert object_colour(frame) != "red" and object_colour(frame, palette=shifted) == "red"


class PlainFramesDrawnBlack:
    """A stand-in VQ-GAN that draws every frame as it is, except a plain one, which comes out black
    (what the demo's tiny VQ-GAN did to a plain gray frame: it never saw a frame without a shape)."""
    config = VQGANConfig.from_preset("tiny")

    def encode(self, images):
        return images

    def decode(self, images):
        plain = (images == images[:, :, :1, :1]).flatten(1).all(1)
        return torch.where(plain[:, None, None, None], -1.0, images)


def test_background_colours_are_read_from_frames_with_a_shape():
    drawn = palette_through(PlainFramesDrawnBlack())
    np.testing.assert_allclose(drawn, PALETTE, atol=0.5)  # gray stays gray, every colour as drawn


def test_chance_p_value_is_the_binomial_tail():
    assert chance_p_value(0, 7, 0.2) == pytest.approx(1.0)
    assert chance_p_value(3, 3, 0.2) == pytest.approx(0.2 ** 3)
    assert chance_p_value(2, 3, 0.5) == pytest.approx(0.5)  # 3 of the 8 outcomes have 2 heads, 1 has 3
    assert chance_p_value(25, 60, 0.25) == pytest.approx(0.003423, rel=1e-3)  # scipy.stats.binom.sf(24, 60, 0.25)


def test_largest_component_joins_across_the_wrapped_edges():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 0] = mask[2:4, 7] = True  # one shape cut by the left/right edge: 4 pixels
    mask[5:7, 3:5] = True  # another shape: 4 pixels, plus one more below
    mask[7, 3] = True
    assert largest_wrapped_component(mask).sum() == 5 and largest_wrapped_component(mask)[7, 3]
    mask[0, 0] = mask[7, 0] = mask[1, 0] = True  # the cut shape grows across the top/bottom edge too: 7 pixels
    assert largest_wrapped_component(mask).sum() == 7
    assert not largest_wrapped_component(np.zeros((4, 4), bool)).any()


def test_frames_read_as_their_caption_until_the_shape_splits_or_dissolves():
    rng = np.random.default_rng(3)
    for _ in range(20):
        spec = random_spec(rng, speed=DemoDataConfig.speed)
        words = caption_words(caption(spec))
        for frame in render_video(spec, seconds=4.0, fps=2.5, image_size=64):  # wrapped across edges included
            assert reads_as_caption(frame, words["colour"], words["background"])
        frame = render_video(spec, seconds=4.0, fps=2.5, image_size=64)[0]
        other = next(b for b in ("white", "black", "gray") if b != words["background"])
        assert not reads_as_caption(frame, words["colour"], other)  # the wrong background
        small = dataclasses.replace(spec, size="small")  # two small shapes half a frame apart never touch
        frame = render_video(small, seconds=4.0, fps=2.5, image_size=64)[0]
        moved = render_video(dataclasses.replace(small, start=((spec.start[0] + 0.5) % 1, (spec.start[1] + 0.5) % 1)),
                             seconds=4.0, fps=2.5, image_size=64)[0]
        assert reads_as_caption(frame, words["colour"], words["background"])
        two = np.where((moved != moved[0, 0]).any(-1, keepdims=True) & (frame == frame[0, 0]).all(-1, keepdims=True),
                       moved, frame)  # the shape split in two, far apart
        assert not reads_as_caption(two, words["colour"], words["background"])
        noisy = frame.copy()
        speckles = rng.random(frame.shape[:2]) < 0.08  # texture: the object's colour scattered over the frame
        noisy[speckles] = frame[tuple(np.argwhere((frame != frame[0, 0]).any(-1))[0])]
        assert not reads_as_caption(noisy, words["colour"], words["background"])


def test_the_sketch_check_reads_shape_and_place_from_rendered_images():
    rng = np.random.default_rng(5)
    for _ in range(30):
        spec = random_spec(rng, speed=None)
        mask = object_mask(render_frame(spec, 0.0, 64))
        assert mask_iou(mask, render_label_map(spec, 0.0, 64) > 0) == 1.0 and shape_class(mask) == spec.shape
    assert shape_class(np.zeros((64, 64), bool)) is None and mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 0
