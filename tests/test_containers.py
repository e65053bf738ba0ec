"""Real files in the containers and image formats users have, made here with PyAV and PIL."""
import io
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from preprocess import readers
from preprocess.readers import (ClipSampling, SkipInput, decord_frames, image_pixels, iter_tar, pyav_frames,
                                video_clips)
from test_preprocess import counter_frame, read_counter, write_tar

FPS = 25  # a rate every container and codec below takes (MPEG-1/2 allow only the standard ones)
CONTAINERS = [  # (extension, FFmpeg muxer, codec)
    ("mp4", "mp4", "libx264"), ("m4v", "mp4", "libx264"), ("mov", "mov", "libx264"), ("mkv", "matroska", "libx264"),
    ("webm", "webm", "libvpx"), ("avi", "avi", "mpeg4"), ("mpg", "mpeg", "mpeg1video"), ("mpeg", "mpeg", "mpeg2video"),
    ("m1v", "mpeg1video", "mpeg1video"), ("m2v", "mpeg2video", "mpeg2video"), ("ts", "mpegts", "libx264"),
    ("m2ts", "mpegts", "mpeg2video"), ("flv", "flv", "flv"), ("f4v", "mp4", "libx264"), ("wmv", "asf", "wmv2"),
    ("asf", "asf", "msmpeg4"), ("3gp", "3gp", "mpeg4"), ("3g2", "3g2", "mpeg4"), ("vob", "vob", "mpeg2video"),
    ("gif", "gif", "gif"),
]


def encode(fmt: str, codec: str, frames: int, fps: int = FPS) -> bytes:
    """A counter video (frame i shows i in bits) in one container."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if codec != "gif":
            stream.bit_rate = 4_000_000
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(counter_frame(i), format="rgb24")
            frame.pts = i  # in the codec's time base, 1 / fps: frame i is shown at i / fps
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def audio_only() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for i in range(60):
            frame.pts = i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


SAMPLING = ClipSampling(num_frames=10, fps=2.5, start=0.25, max_clips=3)
EXPECTED = [[int(np.floor((0.25 + 4 * c + 0.4 * j) * FPS + 1e-6)) for j in range(10)] for c in range(2)]


def on_screen(data: bytes, clips: list[list[float]]) -> list[list[int]]:
    """Reference: decode every frame with its timestamp; at each time, the last frame shown by then."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [(f.pts, read_counter(f.to_ndarray(format="rgb24").transpose(2, 0, 1)))
                  for f in container.decode(stream)]
        base = float(stream.time_base)
    times = [((pts - frames[0][0]) * base, counter) for pts, counter in frames]
    return [[[counter for shown, counter in times if shown <= t + 1e-3][-1] for t in clip] for clip in clips]


@pytest.mark.parametrize("ext, fmt, codec", CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_every_container_gives_the_sampled_frames(ext, fmt, codec):
    data = encode(fmt, codec, int(8.5 * FPS))  # 8.5 s: two clips of three fit
    got = [[read_counter(frame) for frame in clip] for clip in video_clips(data, SAMPLING, 64)]
    times = [[0.25 + 4 * c + 0.4 * j for j in range(10)] for c in range(2)]
    assert got == on_screen(data, times)  # the frames the file's own timestamps put on screen
    # which are the frames encoded for those times, but where a muxer shifts a timestamp (MPEG-PS)
    assert all(abs(a - b) <= 1 for row, expected in zip(got, EXPECTED) for a, b in zip(row, expected))


def test_pyav_reads_what_decord_reads():
    """The fallback reader picks the same frames as decord, with the same pixels (both are FFmpeg's decoders)."""
    data = encode("mp4", "libx264", int(8.5 * FPS))
    first, second = decord_frames(data, SAMPLING), pyav_frames(data, SAMPLING)
    assert [len(c) for c in first] == [len(c) for c in second] == [10, 10]
    for a, b in zip((f for c in first for f in c), (f for c in second for f in c)):
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 1.0


@pytest.mark.parametrize("data, reason", [
    (audio_only(), readers.NO_VIDEO_STREAM),
    (encode("mpegts", "libx264", 2 * FPS), readers.VIDEO_TOO_SHORT),  # 2 s, read by PyAV alone
    (encode("mp4", "libx264", 2 * FPS), readers.VIDEO_TOO_SHORT),  # 2 s, read by decord and then PyAV
    (b"GIF89a" + b"\x00" * 100, readers.CORRUPT_VIDEO),
], ids=["audio-only", "short-ts", "short-mp4", "broken-gif"])
def test_unreadable_or_unusable_videos_are_skipped_with_a_reason(data, reason):
    with pytest.raises(SkipInput) as info:
        video_clips(data, SAMPLING, 64)
    assert info.value.reason == reason


def test_image_formats_and_unknown_extensions_in_a_tar(tmp_path):
    picture = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
    image = Image.fromarray(picture)

    def saved(fmt, **options):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    samples = [{"__key__": "a", "bmp": saved("BMP"), "txt": b"a bmp"},
               {"__key__": "b", "tiff": saved("TIFF"), "txt": b"a tiff"},
               {"__key__": "c", "gif": saved("GIF"), "txt": b"a gif"},
               {"__key__": "d", "JPG": saved("JPEG", quality=95), "txt": b"upper case"},
               {"__key__": "e", "image": saved("PNG"), "json": b'{"caption": "no extension"}'},
               {"__key__": "f", "bin": b"not an image at all", "txt": b"garbage"},
               {"__key__": "g", "txt": b"only a caption", "json": b"{}"}]
    items = list(iter_tar(str(write_tar(tmp_path / "images.tar", samples)), "image"))
    assert [type(i).__name__ for i in items] == ["RawItem"] * 6 + ["Skip"]
    assert items[-1].reason == readers.NO_MEDIA
    for item in items[:5]:
        pixels = image_pixels(item.media, 64).transpose(1, 2, 0)
        tolerance = 20 if item.key in ("c", "d") else 0  # GIF's palette and JPEG are lossy
        assert np.abs(pixels.astype(int) - picture).mean() <= tolerance, item.key
    assert items[4].caption == "no extension"
    with pytest.raises(SkipInput) as info:
        image_pixels(items[5].media, 64)
    assert info.value.reason == readers.CORRUPT_IMAGE


def test_videos_with_unknown_extensions_in_a_tar(tmp_path):
    samples = [{"__key__": "v0", "MKV": encode("matroska", "libx264", 5 * FPS), "txt": b"upper case"},
               {"__key__": "v1", "clip": encode("mpegts", "mpeg2video", 5 * FPS), "txt": b"no known extension"}]
    items = list(iter_tar(str(write_tar(tmp_path / "videos.tar", samples)), "video"))
    for item in items:
        clips = video_clips(item.media, ClipSampling(), 64)
        assert [read_counter(frame) for frame in clips[0]] == [i * 10 for i in range(10)], item.key


def encode_frames(frames: list[np.ndarray], pts: list[int] | None = None, time_base: int = FPS, rotation: int = 0,
                  pixel_aspect: Fraction | None = None, pix_fmt: str = "yuv420p") -> bytes:
    """An H.264 MP4 of the given RGB frames, at the given timestamps (1 / time_base s), with a display
    rotation and a pixel aspect ratio."""
    buffer = io.BytesIO()
    height, width = frames[0].shape[:2]
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=time_base)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = Fraction(1, time_base)
        if rotation:
            stream.set_display_rotation(rotation)
        if pixel_aspect:
            stream.codec_context.sample_aspect_ratio = pixel_aspect
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i if pts is None else pts[i]
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def quadrants(height: int, width: int) -> np.ndarray:
    """Red, green / blue, white quadrants: any turn or mirror of it is another picture."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 2] = (255, 0, 0)
    image[: height // 2, width // 2:] = (0, 255, 0)
    image[height // 2:, : width // 2] = (0, 0, 255)
    image[height // 2:, width // 2:] = 255
    return image


def test_a_phone_video_comes_out_upright():
    """Stored landscape, displayed portrait: the display matrix turns it (FFmpeg's rotation: counterclockwise)."""
    upright = quadrants(64, 48)
    stored = np.rot90(upright, k=-1).copy()  # what a phone held sideways records
    data = encode_frames([stored] * 5 * FPS, rotation=90)
    frame = video_clips(data, ClipSampling(num_frames=2), 48)[0][0].transpose(1, 2, 0)
    expected = np.asarray(readers.resize_center_crop(Image.fromarray(upright), 48))
    assert np.abs(frame.astype(int) - expected).mean() < 12


def test_anamorphic_pixels_are_made_square():
    """64×32 stored pixels twice as wide as high are a 128×32 picture: red is its left 48 columns."""
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :24] = (255, 0, 0)
    stored[:, 24:] = (0, 0, 255)
    frame = video_clips(encode_frames([stored] * 5 * FPS, pixel_aspect=Fraction(2, 1)), ClipSampling(num_frames=2),
                        32)[0][0]
    assert frame[2].mean() > 200 and frame[0].mean() < 40  # the centre crop of 128×32 is all blue


@pytest.mark.parametrize("height, width", [(35, 63), (64, 36), (32, 128)], ids=["odd", "portrait", "ultra-wide"])
def test_odd_portrait_and_ultra_wide_sizes_are_cropped_at_the_centre(height, width):
    picture = quadrants(height, width)
    data = encode_frames([picture] * 5 * FPS, pix_fmt="yuv444p")
    frame = video_clips(data, ClipSampling(num_frames=2), 16)[0][0].transpose(1, 2, 0)
    expected = np.asarray(readers.resize_center_crop(Image.fromarray(picture), 16))
    assert np.abs(frame.astype(int) - expected).mean() < 12


def test_variable_frame_rate_clips_are_taken_by_timestamp():
    rng = np.random.default_rng(0)
    pts = np.cumsum(rng.integers(20, 160, 120)).tolist()  # ms between frames: 20 to 160
    data = encode_frames([counter_frame(i) for i in range(120)], pts=[p - pts[0] for p in pts], time_base=1000)
    sampling = ClipSampling(num_frames=10, fps=2.5, start=0.3, max_clips=2)
    got = [[read_counter(frame) for frame in clip] for clip in video_clips(data, sampling, 64)]
    times = [[0.3 + 4 * c + 0.4 * j for j in range(10)] for c in range(len(got))]
    shown = [(p - pts[0]) / 1000 for p in pts]
    assert got == [[max(i for i, t0 in enumerate(shown) if t0 <= t + 1e-3) for t in clip] for clip in times]
    assert got == on_screen(data, times)


def test_a_damaged_frame_is_decoded_past():
    """Damaged bytes mid-video: FFmpeg's decoders conceal the damage and go on, so the clip is kept
    (frames near the damage may show it; the frames after the next keyframe are whole)."""
    data = bytearray(encode("mp4", "libx264", int(8.5 * FPS)))
    middle = len(data) // 2
    data[middle:middle + 300] = bytes(300)
    clips = video_clips(bytes(data), SAMPLING, 64)
    assert len(clips) == 2
    assert [read_counter(frame) for frame in clips[0][:3]] == EXPECTED[0][:3]  # before the damage


def test_a_clip_deep_into_a_long_video_is_sought_not_decoded_from_the_start(monkeypatch):
    """120 s of MPEG-TS (read by PyAV) with a keyframe every 2 s; the clip at 100 s decodes a few seconds."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 10
        for i in range(600):
            frame = av.VideoFrame.from_ndarray(counter_frame(i % 256), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    decoded = []
    original = readers._decoded
    monkeypatch.setattr(readers, "_decoded", lambda *args: (decoded.append(1) or f for f in original(*args)))
    clip = video_clips(buffer.getvalue(), ClipSampling(num_frames=10, fps=2.5, start=100.0), 64)[0]
    assert [read_counter(frame) for frame in clip] == [(500 + 2 * j) % 256 for j in range(10)]
    assert len(decoded) < 120  # frames from the keyframe before 100 s to the clip's end, not the 520 from 0 s
