"""The demo's pixel analysis reads colour and motion correctly from the demo's own rendered media."""
import numpy as np

from tools.learning_check import caption_words, match_rate, motion_direction, object_colour
from tools.make_demo_data import caption, random_spec, render_frame, render_video


def test_colour_and_direction_are_read_back_from_rendered_samples():
    rng = np.random.default_rng(0)
    colours, directions, expected_c, expected_d = [], [], [], []
    for _ in range(40):
        spec = random_spec(rng, duration=10.0)
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
    spec = random_spec(np.random.default_rng(1), duration=None)
    still = np.stack([render_frame(spec, 0.0, 64)] * 5)
    assert motion_direction(still) is None
    assert caption_words("a large blue square on a black background") == {"colour": "blue", "direction": None}
