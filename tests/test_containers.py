"""Real files in the containers and image formats users have, made here with PyAV and PIL."""
import io

import av
import numpy as np
import pytest
from PIL import Image

from preprocess import readers
from preprocess.readers import ClipSampling, SkipInput, decord_clips, image_pixels, iter_tar, pyav_clips, video_clips
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
    first, second = decord_clips(data, SAMPLING, 64), pyav_clips(data, SAMPLING, 64)
    assert [c.shape for c in first] == [c.shape for c in second]
    for a, b in zip(first, second):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0


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
