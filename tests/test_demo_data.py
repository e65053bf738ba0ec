"""The synthetic demo dataset: captions state what the pixels show, media are real, bytes are seeded."""
import io
import json
import tarfile

import av  # noqa: F401  (PyAV before anything loads decord, see preprocess/readers.py)
import numpy as np
import pytest

from preprocess.readers import ClipSampling, clip_frame_indices, frame_timestamps
from tools.learning_check import wrapped_centroid
from tools.media import encode_mp4
from tools.make_demo_data import (BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SIZES, DemoDataConfig, ShapeSpec, caption,
                                  make_demo_data, object_centre, random_spec, render_frame, render_label_map,
                                  render_video)


def centroid_of(frame: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> np.ndarray:
    """(x, y) centre of the pixels within `tolerance` of `colour`."""
    mask = np.abs(frame.astype(int) - colour).max(axis=-1) <= tolerance
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_vocabulary_is_distinct_and_caption_states_it():
    assert not set(COLOURS) & set(BACKGROUNDS)  # the object is always told apart from its background
    assert len(SHAPES) >= 3 and len(SIZES) >= 2 and len(DIRECTIONS) == 4
    spec = ShapeSpec("circle", "red", "small", "white", "left", (0.8, 0.5), 0.05)
    assert caption(spec) == "a small red circle moving left on a white background"
    assert caption(ShapeSpec("square", "blue", "large", "black", None, (0.5, 0.5), 0.0)) == \
        "a large blue square on a black background"


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_render_frame_moves_the_flat_coloured_shape(direction):
    spec = ShapeSpec("circle", "green", "large", "gray", direction, (0.5, 0.5), 0.03)  # stays clear of the edges
    size = 96
    first, later = render_frame(spec, 0.0, size), render_frame(spec, 4.0, size)
    colours = {tuple(c) for c in first.reshape(-1, 3)}
    assert colours == {COLOURS["green"], BACKGROUNDS["gray"]}  # no anti-aliasing: two exact colours
    moved = centroid_of(later, COLOURS["green"]) - centroid_of(first, COLOURS["green"])
    expected = (np.array(object_centre(spec, 4.0)) - np.array(object_centre(spec, 0.0))) * size
    np.testing.assert_allclose(moved, expected, atol=1.0)
    assert np.sign(moved).round().tolist() == [float(d) for d in DIRECTIONS[direction]]


def test_video_shapes_wrap_around_the_edges():
    rng = np.random.default_rng(0)
    for _ in range(50):
        spec = random_spec(rng, speed=0.3125)
        dx, dy = DIRECTIONS[spec.direction]
        for t in (0.0, 1.6, 10.0):
            x, y = object_centre(spec, t)
            assert 0 <= x < 1 and 0 <= y < 1
            shift = (np.array([x, y]) - spec.start - 0.3125 * t * np.array([dx, dy]) + 0.5) % 1 - 0.5
            np.testing.assert_allclose(shift, 0, atol=1e-9)
    # half a shape past the left edge shows the other half on the right edge, same colour
    spec = ShapeSpec("square", "red", "large", "black", "left", (0.0, 0.5), 0.1)
    frame = render_frame(spec, 0.0, 64)
    red = (frame == COLOURS["red"]).all(-1)
    assert red[:, :5].sum() == red[:, -5:].sum() > 0 and not red[:, 20:44].any()


def test_default_clips_move_one_code_per_sampled_frame():
    """The frames preprocessing samples from a default demo video (2.5 fps, timestamps as decord
    reads them) lie 8 px apart, one code of the f8 tokenizer, so each frame's codes can be the
    previous frame's codes shifted. PIL rasterises float positions slightly differently, so up to
    1% of pixels may differ (0.8% at most over 300 clips); at 12 fps, with frames 6.7 or 8.3 px
    apart, every clip has a pair differing in 0.9–4%."""
    import decord

    config = DemoDataConfig()
    rng = np.random.default_rng(1)
    spec = random_spec(rng, speed=config.speed)
    frames = render_video(spec, config.video_seconds, config.fps, config.image_size)
    reader = decord.VideoReader(io.BytesIO(encode_mp4(frames, config.fps)), num_threads=1)
    [indices] = clip_frame_indices(*frame_timestamps(reader), ClipSampling())
    del reader
    assert len(indices) == 10
    step = config.image_size // 8
    for _ in range(20):
        spec = random_spec(rng, speed=config.speed)
        dx, dy = DIRECTIONS[spec.direction]
        clip = [render_frame(spec, i / config.fps, config.image_size) for i in indices]
        for before, after in zip(clip, clip[1:]):
            assert (after != np.roll(before, (dy * step, dx * step), axis=(0, 1))).any(-1).mean() <= 0.01


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_make_demo_data_writes_img2dataset_tars_deterministically(tmp_path):
    config = DemoDataConfig(seed=5, image_size=32, num_images=7, num_videos=3, video_seconds=10.0, fps=12,
                            heldout_fraction=0.34, samples_per_tar=4)
    summary = make_demo_data(config, tmp_path / "a")
    make_demo_data(config, tmp_path / "b", workers=2)  # tars written by two processes: the same bytes
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert [str(f) for f in files if f.suffix == ".tar"] == [
        "images/heldout/00000.tar", "images/train/00000.tar", "images/train/00001.tar",
        "videos/heldout/00000.tar", "videos/train/00000.tar"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert summary["counts"] == {"images": {"train": 5, "heldout": 2}, "videos": {"train": 2, "heldout": 1}}

    images = _members(tmp_path / "a/images/train/00000.tar")
    assert sorted(images)[:4] == ["000000000.jpg", "000000000.json", "000000000.seg.png", "000000000.txt"]
    meta = json.loads(images["000000000.json"])
    spec = ShapeSpec(**{**meta["demo"], "start": tuple(meta["demo"]["start"])})
    assert images["000000000.txt"].decode() == caption(spec) == meta["caption"]
    from PIL import Image
    pixels = np.asarray(Image.open(io.BytesIO(images["000000000.jpg"])))
    assert pixels.shape == (32, 32, 3)
    assert np.abs(pixels.astype(int) - render_frame(spec, 0.0, 32)).mean() < 6  # JPEG of the rendered frame
    labels = np.asarray(Image.open(io.BytesIO(images["000000000.seg.png"])))  # the sketch: the shape's class
    assert np.array_equal(labels, render_label_map(spec, 0.0, 32)) and set(np.unique(labels)) == {
        0, 1 + SHAPES.index(spec.shape)}

    videos = _members(tmp_path / "a/videos/train/00000.tar")
    meta = json.loads(videos["000000001.json"])
    spec = ShapeSpec(**{**meta["demo"], "start": tuple(meta["demo"]["start"])})
    with av.open(io.BytesIO(videos["000000001.mp4"])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 120 and frames[0].shape == (32, 32, 3)
    with np.load(io.BytesIO(videos["000000001.seg.npz"])) as stack:  # one label map per video frame
        assert float(stack["fps"]) == 12 and np.array_equal(stack["labels"][60], render_label_map(spec, 60 / 12, 32))
    for t in (0, 60, 119):  # the decoded object sits where the spec puts it (on the wrapped frame)
        mask = np.abs(frames[t].astype(int) - COLOURS[spec.colour]).max(axis=-1) <= 60
        found = wrapped_centroid(mask)
        expected = np.array(object_centre(spec, t / 12)) * 32 - 0.5
        np.testing.assert_allclose((found - expected + 16) % 32 - 16, 0, atol=1.5)

    heldout = [json.loads(line) for line in (tmp_path / "a/videos/heldout.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (tmp_path / "a/videos/train.jsonl").read_text().splitlines()]
    assert len(heldout) == 1 and heldout[0]["start"] not in [row["start"] for row in train]
