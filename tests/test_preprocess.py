"""Preprocessing on real encoded media: readers, bad input, and tokenize runs end to end.

Photos are scikit-image's bundled ones, written as JPEG/PNG/WebP by PIL; videos are made with
PyAV and show their frame number as 8 black/white blocks, so a decoded frame tells which
source frame it is.
"""
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av  # noqa: F401  (PyAV before anything loads decord, see preprocess/readers.py)
import numpy as np
import pytest
import skimage.data
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from model.vqgan import VQGAN, VQGANConfig
from preprocess import readers
from preprocess.pipeline import DecodeStream, TokenizeConfig, tokenize_dataset
from preprocess.readers import (ClipSampling, InputUnit, RawItem, Skip, SkipInput, clip_frame_indices, decode_caption,
                                decode_image, iter_unit, list_units, load_image, model_to_uint8, resize_center_crop,
                                uint8_to_model, video_clips)
from preprocess.shards import MANIFEST, ShardDataset
from preprocess.text import TEXT_LENGTH, CaptionTokenizer
from preprocess.train_tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["An astronaut in a white suit", "a cup of coffee on a saucer", "a cat named Chelsea", "a red square",
            "a green triangle moving up", "black and white blocks counting frames"]


# ------------------------------------------------------------------------------------ media makers


def photo(name: str, size=(96, 64)) -> np.ndarray:
    """A bundled scikit-image photo, shrunk (width, height) to keep the tests fast."""
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize(size, Image.BICUBIC))


def encode_image(image: Image.Image | np.ndarray, fmt: str, **options) -> bytes:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def bomb_png() -> bytes:
    """A valid small PNG whose header claims 100000 × 100000 pixels (CRC fixed)."""
    data = bytearray(encode_image(Image.new("L", (8, 8)), "PNG"))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def counter_frame(i: int, size: int = 64) -> np.ndarray:
    """Frame i: bit b of i is a white 16×16 block in row b // 4, column b % 4; lower half tinted."""
    frame = np.zeros((size, size, 3), np.uint8)
    for b in range(8):
        if i >> b & 1:
            r, c = divmod(b, 4)
            frame[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = 255
    frame[32:, :, 0] = 90
    return frame


def read_counter(frame_chw: np.ndarray) -> int:
    frame = frame_chw.transpose(1, 2, 0)
    return sum(1 << b for b in range(8)
               if frame[(b // 4) * 16 + 4:(b // 4) * 16 + 12, (b % 4) * 16 + 4:(b % 4) * 16 + 12].mean() > 128)


def counter_video(num_frames: int, fps: int = 12, codec: str = "libx264", fmt: str = "mp4") -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for i in range(num_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(counter_frame(i), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def write_tar(path: Path, samples: list[dict]) -> Path:
    with wds.TarWriter(str(path), mtime=0.0) as writer:
        for sample in samples:
            writer.write(sample)
    return path


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny seeded VQ-GAN and a caption tokenizer trained by the CLI on a .txt file."""
    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    VQGAN(VQGANConfig.from_preset("tiny")).save_pretrained(root / "vqgan")
    (root / "captions.txt").write_text("\n".join(CAPTIONS * 3) + "\n")
    subprocess.run([sys.executable, "preprocess/train_tokenizer.py", "--input", str(root / "captions.txt"),
                    "--output", str(root / "tok"), "--vocab-size", "120"], cwd=ROOT, check=True)
    return {"vqgan": str(root / "vqgan"), "tokenizer": str(root / "tok.model")}


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """Two tars and a CSV index: good photos in five pixel formats, caption cases and bad inputs."""
    root = tmp_path_factory.mktemp("images")
    astronaut, coffee, chelsea = photo("astronaut"), photo("coffee"), photo("chelsea", (64, 96))
    rgba = np.dstack([coffee, np.where(np.arange(96) < 48, 0, 255).astype(np.uint8)[None, :].repeat(64, 0)])
    wide16 = (np.linspace(0, 65535, 96)[None, :].repeat(64, 0)).astype(np.uint16)
    good = [
        {"__key__": "a0", "jpg": encode_image(astronaut, "JPEG", quality=90), "txt": CAPTIONS[0]},
        {"__key__": "a1", "png": encode_image(coffee, "PNG"), "json": json.dumps({"caption": CAPTIONS[1]})},
        {"__key__": "a2", "webp": encode_image(chelsea, "WEBP", quality=90), "txt": CAPTIONS[2]},
        {"__key__": "a3", "jpg": encode_image(Image.fromarray(astronaut).convert("CMYK"), "JPEG"), "txt": "CMYK"},
        {"__key__": "a4", "png": encode_image(Image.fromarray(coffee).quantize(16), "PNG"), "txt": "paletted"},
        {"__key__": "a5", "png": encode_image(Image.fromarray(chelsea).convert("L"), "PNG"), "txt": "grey"},
        {"__key__": "a6", "png": encode_image(Image.fromarray(wide16), "PNG")},  # 16-bit, no caption
        {"__key__": "a7", "png": encode_image(rgba, "PNG"), "txt": b"caf\xe9 latte"},  # alpha, Latin-1 caption
    ]
    jpeg = encode_image(astronaut, "JPEG")
    bad = [
        {"__key__": "b0", "jpg": b"", "txt": "zero bytes"},
        {"__key__": "b1", "jpg": jpeg[: len(jpeg) // 2], "txt": "truncated"},
        {"__key__": "b2", "png": bomb_png(), "txt": "bomb"},
        {"__key__": "b3", "txt": "a caption without its image"},
        {"__key__": "b4", "jpg": jpeg, "txt": "fine, but the tar breaks in the next sample"},
        {"__key__": "b5", "jpg": jpeg, "txt": "lost in the break"},
    ]
    write_tar(root / "00000.tar", good)
    tar = write_tar(root / "00001.tar", bad).read_bytes()
    # cut the tar inside b5.jpg's data: a broken member
    (root / "00001.tar").write_bytes(tar[: tar.index(b"b5.jpg") + 512 + 100])
    (root / "media").mkdir()
    (root / "media/c0.png").write_bytes(encode_image(chelsea, "PNG"))
    (root / "index.csv").write_bytes(b"path,caption\nmedia/c0.png,\"a cat, twice\"\nmedia/gone.jpg,missing file\n"
                                     b"media/c0.png,\xff\xfe bytes\n")
    return {"root": root, "inputs": [str(root / "{00000..00001}.tar"), str(root / "index.csv")],
            "photos": {"a0": astronaut, "a1": coffee, "a2": chelsea}}


@pytest.fixture(scope="module")
def video_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    mp4 = counter_video(102)
    samples = [
        {"__key__": "v0", "mp4": mp4, "txt": CAPTIONS[5]},
        {"__key__": "v1", "webm": counter_video(102, codec="libvpx", fmt="webm"), "txt": CAPTIONS[4]},
        {"__key__": "v2", "mp4": counter_video(36), "txt": "only three seconds"},
        {"__key__": "v3", "mp4": b"", "txt": "zero length"},
        {"__key__": "v4", "mp4": mp4[: len(mp4) // 2], "txt": "truncated, its index is at the end"},
        {"__key__": "v5", "avi": counter_video(60, codec="mpeg4", fmt="avi")},
    ]
    write_tar(root / "00000.tar", samples[:3])
    write_tar(root / "00001.tar", samples[3:])
    return {"root": root, "inputs": [str(root / "{00000..00001}.tar")], "samples": samples}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _config(data, assets, output, **overrides) -> TokenizeConfig:
    options = {"workers": 2, "shard_size": 3, "batch_size": 2, **overrides}
    return TokenizeConfig("image", data["inputs"], str(output), assets["vqgan"], assets["tokenizer"], **options)


@pytest.fixture(scope="module")
def image_run(image_data, assets, tmp_path_factory):
    """The reference image run (2 workers)."""
    output = tmp_path_factory.mktemp("image_run") / "codes"
    manifest = tokenize_dataset(_config(image_data, assets, output))
    return output, manifest


# ------------------------------------------------------------------------------------ captions


def test_caption_tokenizer(assets, tmp_path):
    tokenizer = CaptionTokenizer(assets["tokenizer"])
    ids, length = tokenizer.encode("A Cat named CHELSEA")
    assert ids.dtype == np.int32 and ids.shape == (TEXT_LENGTH,)
    assert (ids[0], ids[length - 1]) == (2, 3) and not ids[length:].any()  # bos … eos, then pad 0
    np.testing.assert_array_equal(ids, tokenizer.encode("a cat named chelsea")[0])  # lower-cased
    assert tokenizer.decode(ids, length) == "a cat named chelsea"
    long_ids, long_length = tokenizer.encode(" ".join(CAPTIONS * 5))
    assert long_length == TEXT_LENGTH and long_ids[-1] == 3
    none_ids, none_length = tokenizer.encode_none()
    assert none_length == 3 and none_ids[1] == tokenizer.none_id not in tokenizer.encode("none None NONE")[0]
    assert tokenizer.encode(None)[1] == tokenizer.encode(" ")[1] == 0
    again = train_tokenizer([str(Path(assets["tokenizer"]).parent / "captions.txt")], tmp_path / "tok", 120)
    assert (tmp_path / "tok.model").read_bytes() == Path(assets["tokenizer"]).read_bytes()
    assert again.fingerprint() == tokenizer.fingerprint()


def test_caption_reading_skips_media_bytes_and_the_sample_is_bounded(tmp_path, monkeypatch):
    import tarfile

    from preprocess.train_tokenizer import sample_captions

    samples = [{"__key__": f"k{i}", "jpg": b"\xff" * 50_000, "txt": f"caption {i}".encode()} for i in range(6)]
    samples.append({"__key__": "k6", "mp4": b"\x00" * 50_000, "json": b'{"caption": "from json"}'})
    tar = write_tar(tmp_path / "media.tar", samples)
    extracted = []
    extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: extracted.append(m.name) or extract(self, m))
    assert list(readers.iter_captions([str(tar)])) == [f"caption {i}" for i in range(6)] + ["from json"]
    assert all(name.endswith((".txt", ".json")) for name in extracted) and len(extracted) == 7
    captions = [f"c{i}" for i in range(1000)]
    assert sample_captions(iter(captions[:50]), 100) == captions[:50]  # a corpus that fits: all, in order
    sample = sample_captions(iter(captions), 100)
    assert len(sample) == 100 and len(set(sample)) == 100 and set(sample) <= set(captions)
    assert sample == sample_captions(iter(captions), 100) and sample != captions[:100]  # seeded, and uniform
    assert max(int(c[1:]) for c in sample) > 500


# ------------------------------------------------------------------------------------ images


def test_image_conversions_to_rgb():
    def pixel(image, fmt="PNG", xy=(0, 0)):
        return decode_image(encode_image(image, fmt)).getpixel(xy)

    assert pixel(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG") == (255, 0, 0)
    paletted = Image.new("RGB", (8, 8), (10, 200, 30)).quantize(4)
    assert pixel(paletted) == (10, 200, 30)
    assert pixel(Image.new("L", (8, 8), 77)) == (77, 77, 77)
    grey16 = Image.fromarray(np.array([[0, 32896, 65535]], np.uint16))
    assert Image.open(io.BytesIO(encode_image(grey16, "PNG"))).mode == "I;16"
    assert [pixel(grey16, xy=(x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    rgba = Image.new("RGBA", (2, 1), (200, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 200, 255))
    assert [pixel(rgba, xy=(x, 0)) for x in range(2)] == [(255, 255, 255), (0, 0, 200)]  # alpha over white
    transparent_palette = Image.new("P", (2, 1), 0)
    transparent_palette.putpalette([0, 0, 0, 250, 0, 0])
    transparent_palette.putpixel((1, 0), 1)
    transparent_palette.info["transparency"] = 0
    assert [pixel(transparent_palette, xy=(x, 0)) for x in range(2)] == [(255, 255, 255), (250, 0, 0)]


def test_resize_short_side_and_centre_crop():
    image = Image.fromarray(photo("astronaut", (120, 60)))
    expected = np.asarray(image.resize((128, 64), Image.BICUBIC))[:, 32:96]
    np.testing.assert_array_equal(np.asarray(resize_center_crop(image, 64)), expected)
    tall = Image.fromarray(photo("chelsea", (40, 80)))
    np.testing.assert_array_equal(np.asarray(resize_center_crop(tall, 20)),
                                  np.asarray(tall.resize((20, 40), Image.BICUBIC))[10:30])
    big = photo("astronaut", (800, 600))  # a JPEG this large decodes at 1/8 scale (DCT), then resizes
    fast, full = load_image(encode_image(big, "JPEG", quality=95), 64), load_image(encode_image(big, "PNG"), 64)
    assert fast.shape == (3, 64, 64) and (fast - full).abs().mean() < 0.03
    square = photo("coffee", (64, 64))
    tensor = load_image(encode_image(square, "PNG"), 64)  # already the size: exact pixels, [-1, 1]
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, torch.from_numpy(square.copy()).permute(2, 0, 1).float() / 127.5 - 1)


def test_pixel_range_round_trip():
    """Every uint8 value survives the trip to the VQ-GAN's [-1, 1] and back; decoder overshoot is clipped."""
    values = torch.arange(256, dtype=torch.uint8)
    torch.testing.assert_close(model_to_uint8(uint8_to_model(values)), values)
    assert model_to_uint8(torch.tensor([-1.7, -1.0, 0.0, 1.0, 2.5])).tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize("data, reason", [
    (b"", readers.ZERO_BYTE),
    (encode_image(photo("astronaut"), "JPEG")[:1500], readers.CORRUPT_IMAGE),
    (encode_image(photo("coffee"), "PNG")[:400], readers.CORRUPT_IMAGE),
    (b"<html>not found</html>", readers.CORRUPT_IMAGE),
    (bomb_png(), readers.DECOMPRESSION_BOMB),
])
def test_bad_images_are_skipped_with_a_reason(data, reason):
    with pytest.raises(SkipInput) as info:
        decode_image(data)
    assert info.value.reason == reason


# ------------------------------------------------------------------------------------ videos


def test_clip_sampling_rule():
    starts = np.arange(120) / 12  # 10 s at 12 fps
    assert clip_frame_indices(starts, 10.0, ClipSampling()) == [[0, 4, 9, 14, 19, 24, 28, 33, 38, 43]]
    two = clip_frame_indices(starts, 10.0, ClipSampling(max_clips=5))
    assert len(two) == 2 and two[1] == [48, 52, 57, 62, 67, 72, 76, 81, 86, 91]  # 4 s + 4 s fit in 10 s
    assert clip_frame_indices(starts, 10.0, ClipSampling(start=6.5)) == []
    assert clip_frame_indices(np.arange(48) / 12, 4.0, ClipSampling()) == [[0, 4, 9, 14, 19, 24, 28, 33, 38, 43]]
    assert clip_frame_indices(np.arange(47) / 12, 47 / 12, ClipSampling()) == []


@pytest.mark.parametrize("codec, fmt", [("libx264", "mp4"), ("libvpx", "webm"), ("mpeg4", "avi")])
def test_decoded_frames_are_the_sampled_source_frames(codec, fmt):
    data = counter_video(102, fps=12, codec=codec, fmt=fmt)  # 8.5 s
    sampling = ClipSampling(num_frames=10, fps=2.5, start=0.25, max_clips=3)
    clips = video_clips(data, sampling, 64)
    expected = [[int(np.floor((0.25 + 4 * c + 0.4 * j) * 12 + 1e-6)) for j in range(10)] for c in range(2)]
    assert [[read_counter(frame) for frame in clip] for clip in clips] == expected
    assert clips[0].shape == (10, 3, 64, 64) and clips[0].dtype == np.uint8
    np.testing.assert_allclose(clips[0][0].transpose(1, 2, 0), counter_frame(3), atol=40)  # the pixels too


@pytest.mark.parametrize("data, reason", [
    (b"", readers.ZERO_BYTE),
    (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200, readers.CORRUPT_VIDEO),
    (counter_video(60)[:2000], readers.CORRUPT_VIDEO),
    (counter_video(47), readers.VIDEO_TOO_SHORT),
])
def test_bad_videos_are_skipped_with_a_reason(data, reason):
    with pytest.raises(SkipInput) as info:
        video_clips(data, ClipSampling(), 64)
    assert info.value.reason == reason


# ------------------------------------------------------------------------------------ inputs


def test_captions():
    assert decode_caption(b"  A Cat \n") == ("A Cat", None)
    assert decode_caption(b"caf\xe9") == ("caf\ufffd", readers.CAPTION_NON_UTF8)
    assert decode_caption(None) == (None, readers.CAPTION_MISSING)
    assert decode_caption(b"   ") == (None, readers.CAPTION_MISSING)
    assert readers.sample_caption({"json": b'{"caption": "from json"}'}) == ("from json", None)


def test_tar_and_index_readers(image_data):
    root = image_data["root"]
    with pytest.raises(FileNotFoundError, match="1 of 3 inputs"):
        list_units([str(root / "{00000..00002}.tar")], rows_per_unit=2)
    units = list_units(image_data["inputs"], rows_per_unit=2)
    assert units == [InputUnit(str(root / "00000.tar")), InputUnit(str(root / "00001.tar")),
                     InputUnit(str(root / "index.csv"), (0, 2)), InputUnit(str(root / "index.csv"), (2, 3))]
    good = list(iter_unit(units[0], "image"))
    assert [item.key for item in good] == [f"a{i}" for i in range(8)] and all(isinstance(i, RawItem) for i in good)
    assert (good[1].caption, good[6].caption_issue, good[7].caption_issue) == (
        CAPTIONS[1], readers.CAPTION_MISSING, readers.CAPTION_NON_UTF8)
    bad = list(iter_unit(units[1], "image"))
    assert [(i.key, i.reason if isinstance(i, Skip) else None) for i in bad] == [
        ("b0", None), ("b1", None), ("b2", None), ("b3", readers.NO_MEDIA), ("b4", None), ("b5", readers.BROKEN_TAR)]
    rows = list(iter_unit(units[2], "image")) + list(iter_unit(units[3], "image"))
    assert (rows[0].key, rows[0].caption) == ("media/c0.png", "a cat, twice")
    assert (rows[1].key, rows[1].reason) == ("media/gone.jpg", readers.MISSING_FILE)
    assert (rows[2].caption, rows[2].caption_issue) == ("\ufffd\ufffd bytes", readers.CAPTION_NON_UTF8)


@pytest.mark.parametrize("damage", ["checksum", "zeros"])
def test_tar_with_a_bad_header_mid_way(tmp_path, damage):
    """Python < 3.12 tarfile reads a bad header as the end of the archive: the reader must not stop silently."""
    data = bytearray(write_tar(tmp_path / "ok.tar", [{"__key__": f"k{i}", "txt": f"caption {i}", "jpg": b"x" * 10}
                                                     for i in range(4)]).read_bytes())
    header = data.index(b"k2.jpg")
    if damage == "checksum":
        data[header + 148: header + 156] = b"9999999\x00"
    else:
        data[header: header + 512] = bytes(512)
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    items = list(readers.iter_tar(str(tmp_path / "bad.tar"), "image"))
    assert [i.key for i in items[:2]] == ["k0", "k1"] and len(items) == 3
    assert items[2].reason == readers.BROKEN_TAR and "header" in items[2].detail and "k1" in items[2].key


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_more_workers_than_tars_neither_hang_nor_duplicate(video_data):
    units = [(i, u) for i, u in enumerate(list_units(video_data["inputs"], 10))]
    stream = DecodeStream(units, "video", 64, ClipSampling(), chunk_size=1)
    chunks = list(DataLoader(stream, batch_size=None, num_workers=3, timeout=60))
    keys = [k for c in chunks for k in c["keys"]]
    skips = [s[0] for c in chunks for s in c["skips"]]
    assert sorted(keys) == ["v0", "v1", "v5"] and sorted(skips) == ["v2", "v3", "v4"]
    assert sum(c["num_inputs"] for c in chunks if c["end"]) == 6


def test_an_unexpected_decoder_error_skips_the_input(video_data, monkeypatch):
    units = [(i, u) for i, u in enumerate(list_units(video_data["inputs"], 10))]
    stream = DecodeStream(units, "video", 64, ClipSampling(), chunk_size=8)
    monkeypatch.setattr(stream, "decode", lambda media: 1 / 0)
    skips = [s for chunk in stream for s in chunk["skips"]]
    assert [s[0] for s in skips] == [f"v{i}" for i in range(6)]
    assert {(s[1], s[2]) for s in skips} == {(readers.DECODE_ERROR, "ZeroDivisionError: division by zero")}


# ------------------------------------------------------------------------------------ end to end


def test_image_run_end_to_end(image_run, image_data, assets):
    output, manifest = image_run
    ds = ShardDataset(output)
    assert manifest["num_inputs"] == 17 and manifest["num_skipped"] == 6 and len(ds) == 11
    assert manifest["num_inputs_used"] + manifest["num_skipped"] == manifest["num_inputs"]
    assert manifest["skipped_by_reason"] == {"broken_tar": 1, "corrupt_image": 1, "decompression_bomb": 1,
                                             "missing_file": 1, "no_media": 1, "zero_byte_file": 1}
    assert [s["key"] for s in manifest["skipped"]["broken_tar"]] == ["b5"]
    assert manifest["captions"] == {"caption_missing": ["a6"], "caption_non_utf8": ["a7", "media/c0.png"]}
    assert manifest["grid"] == [1, 8, 8] and manifest["resolution"] == 64 and manifest["codebook_size"] == 512
    keys = [ds.key(i) for i in range(len(ds))]
    assert keys == [f"a{i}" for i in range(8)] + ["b4", "media/c0.png", "media/c0.png"]
    assert [s["name"] for s in manifest["shards"]] == [
        "shard-00000-0000", "shard-00000-0001", "shard-00000-0002", "shard-00001-0000", "shard-00002-0000"]

    vqgan = VQGAN.from_pretrained(assets["vqgan"]).eval()
    tokenizer = CaptionTokenizer(assets["tokenizer"])
    with torch.inference_mode():
        reference = vqgan.encode(torch.stack([load_image(encode_image(image_data["photos"][k], fmt, **opts), 64)
                                              for k, fmt, opts in [("a0", "JPEG", {"quality": 90}), ("a1", "PNG", {}),
                                                                   ("a2", "WEBP", {"quality": 90})]]))
    for i in range(3):
        np.testing.assert_array_equal(ds[i]["codes"][0], reference[i].numpy())
        ids, length = tokenizer.encode(CAPTIONS[i])
        np.testing.assert_array_equal(ds[i]["text"], ids)
        assert ds[i]["text_len"] == length > 2
    assert ds[6]["text_len"] == 0 and not ds[6]["text"].any()  # no caption: empty-text flag
    np.testing.assert_array_equal(ds[7]["text"], tokenizer.encode("caf\ufffd latte")[0])  # replacement char
    assert ds[0]["text"].shape == (TEXT_LENGTH,) and ds[0]["codes"].dtype == np.uint16


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_output_does_not_depend_on_workers(image_run, image_data, assets, tmp_path):
    output, _ = image_run
    tokenize_dataset(_config(image_data, assets, tmp_path / "w0", workers=0))
    tokenize_dataset(_config(image_data, assets, tmp_path / "w3", workers=3, batch_size=2))
    assert _files(tmp_path / "w0") == _files(output) == _files(tmp_path / "w3")


def test_interrupted_run_resumes_to_the_same_bytes(image_run, image_data, assets, tmp_path, monkeypatch):
    output, _ = image_run
    from preprocess import shards

    real_write = shards.ShardWriter.write_shard
    written = []

    def dying_write(self, name, *args):
        if len(written) == 2:  # killed while writing the third shard: its temporary folder stays behind
            (self.folder / f".tmp-{name}").mkdir()
            (self.folder / f".tmp-{name}" / "codes.npy").write_bytes(b"half")
            raise KeyboardInterrupt
        written.append(name)
        real_write(self, name, *args)

    monkeypatch.setattr(shards.ShardWriter, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(_config(image_data, assets, tmp_path / "run", workers=2))
    assert len(written) == 2 and not (tmp_path / "run" / MANIFEST).exists()
    monkeypatch.setattr(shards.ShardWriter, "write_shard", real_write)
    tokenize_dataset(_config(image_data, assets, tmp_path / "run", workers=2))
    assert _files(tmp_path / "run") == _files(output)

    # a finished unit loses its last shard (its record stays); a leftover temporary file lies around
    shutil.rmtree(tmp_path / "run" / "shard-00000-0002")
    (tmp_path / "run" / ".tmp-unit-00000.json.123").write_text("{")
    tokenize_dataset(_config(image_data, assets, tmp_path / "run", workers=0))
    assert _files(tmp_path / "run") == _files(output)

    with pytest.raises(ValueError, match="shard_size"):
        tokenize_dataset(_config(image_data, assets, tmp_path / "run", shard_size=4))


def test_two_splits_merged_equal_one_run(image_run, image_data, assets, tmp_path):
    output, manifest = image_run
    for split in range(2):
        part = tokenize_dataset(_config(image_data, assets, tmp_path / "split", workers=0, num_splits=2, split=split))
        assert [u["unit"] for u in part["units"]] == list(range(split, 3, 2))
    subprocess.run([sys.executable, "preprocess/merge_manifests.py", str(tmp_path / "split")], cwd=ROOT, check=True)
    merged = {k: v for k, v in _files(tmp_path / "split").items() if not k.startswith("manifest.split-")}
    assert merged == _files(output)


def test_torchrun_processes_take_their_splits_and_merge_to_one_run(image_run, image_data, assets, tmp_path):
    """Under torchrun each process reads RANK / WORLD_SIZE (and would take cuda:LOCAL_RANK with --device cuda)."""
    from preprocess.tokenize import parse_args
    from pretrain.distributed import free_port

    output, _ = image_run
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(free_port()), "preprocess/tokenize.py", "--modality", "image", "--input", *image_data["inputs"],
                    "--output", str(tmp_path / "codes"), "--vqgan", assets["vqgan"], "--tokenizer", assets["tokenizer"],
                    "--workers", "0", "--shard-size", "3", "--batch-size", "2"], cwd=ROOT, check=True)
    subprocess.run([sys.executable, "preprocess/merge_manifests.py", str(tmp_path / "codes")], cwd=ROOT, check=True)
    merged = {k: v for k, v in _files(tmp_path / "codes").items() if not k.startswith("manifest.split-")}
    assert merged == _files(output)
    args = ["--modality", "image", "--input", "x.tar", "--output", "o", "--vqgan", "v", "--tokenizer", "t"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOCAL_RANK", "3")
        assert parse_args(args + ["--device", "cuda"]).device == "cuda:3"
        assert parse_args(args + ["--device", "cuda:1"]).device == "cuda:1" and parse_args(args).device == "cpu"


def test_input_patterns_expand_braces_then_globs(tmp_path):
    for name in ("00000.tar", "00001.tar", "b.jsonl", "a.jsonl"):
        (tmp_path / name).write_text("")
    assert readers.expand_inputs([str(tmp_path / "{00001..00000}.tar"), str(tmp_path / "*.jsonl")]) == [
        str(tmp_path / n) for n in ("00001.tar", "00000.tar", "a.jsonl", "b.jsonl")]  # braces in order, globs sorted


def test_bad_arguments_are_answered_in_one_line(image_data, assets, tmp_path):
    """As the trainers do: `prog: error: …` naming what is wrong, exit status 1, no traceback."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "not.model").write_bytes(b"not a sentencepiece model")
    good = ["--modality", "image", "--vqgan", assets["vqgan"], "--tokenizer", assets["tokenizer"]]
    inputs = image_data["inputs"]
    cases = [
        ("tokenize", [*good, "--input", str(tmp_path / "missing.tar"), "--output", str(tmp_path / "o")],
         "inputs are not local files"),
        ("tokenize", [*good, "--input", str(tmp_path / "*.tar"), "--output", str(tmp_path / "o")],
         "matches no file"),
        ("tokenize", [*good, "--input", *inputs, "--output", str(tmp_path / "a_file")], "is a file; give a folder"),
        ("tokenize", ["--modality", "image", "--vqgan", str(tmp_path / "no_vqgan"), "--tokenizer", assets["tokenizer"],
                      "--input", *inputs, "--output", str(tmp_path / "o")], "no_vqgan/config.json does not exist"),
        ("tokenize", ["--modality", "image", "--vqgan", assets["vqgan"], "--tokenizer", str(tmp_path / "not.model"),
                      "--input", *inputs, "--output", str(tmp_path / "o")], "is not a sentencepiece model"),
        ("train_tokenizer", ["--input", str(tmp_path / "*.tar"), "--output", str(tmp_path / "tok")], "matches no file"),
        ("merge_manifests", [str(tmp_path / "nowhere")], "no split manifests"),
    ]
    def run(case):
        script, args, _ = case
        return subprocess.run([sys.executable, f"preprocess/{script}.py", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    with ThreadPoolExecutor(2) as pool:  # one Python start-up per case: two at a time on a 2-core runner
        procs = list(pool.map(run, cases))
    for (script, _, message), proc in zip(cases, procs):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (script, message, proc.stderr[-1500:])
        assert lines[-1].startswith(f"{script}: error: ") and message in lines[-1], (script, lines[-1])


def test_scripts_run_as_files_beside_another_copy_of_the_package(tmp_path):
    """`python preprocess/<script>.py` must not let its folder's tokenize.py shadow the standard library's,
    whichever copy of the package is imported (an editable install of another checkout, site-packages)."""
    shutil.copytree(ROOT / "preprocess", tmp_path / "preprocess")
    for script in ("tokenize", "train_tokenizer", "merge_manifests"):
        proc = subprocess.run([sys.executable, str(ROOT / "preprocess" / f"{script}.py"), "--help"], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr[-2000:]


def test_video_run_end_to_end_with_the_cli(video_data, assets, tmp_path):
    output = tmp_path / "codes"
    subprocess.run([sys.executable, "preprocess/tokenize.py", "--modality", "video", "--input", *video_data["inputs"],
                    "--output", str(output), "--vqgan", assets["vqgan"], "--tokenizer", assets["tokenizer"],
                    "--workers", "2", "--shard-size", "4", "--batch-size", "2", "--clips-per-video", "2"],
                   cwd=ROOT, check=True)
    ds = ShardDataset(output)
    manifest = ds.manifest
    assert manifest["grid"] == [10, 8, 8] and manifest["sampling"] == {"num_frames": 10, "fps": 2.5, "start": 0.0,
                                                                        "max_clips": 2}
    assert [ds.key(i) for i in range(len(ds))] == ["v0#0", "v0#1", "v1#0", "v1#1", "v5#0"]  # v5: 5 s, one clip
    assert manifest["skipped_by_reason"] == {"corrupt_video": 1, "video_too_short": 1, "zero_byte_file": 1}
    assert manifest["num_inputs_used"] + manifest["num_skipped"] == manifest["num_inputs"] == 6
    assert ds.details()["captions"] == {"caption_missing": ["v5"]}
    vqgan = VQGAN.from_pretrained(assets["vqgan"]).eval()
    clips = video_clips(video_data["samples"][1]["webm"], ClipSampling(max_clips=2), 64)
    with torch.inference_mode():
        reference = vqgan.encode_video(torch.from_numpy(np.stack(clips)).float() / 127.5 - 1)
    np.testing.assert_array_equal(ds[2]["codes"], reference[0].numpy())
    np.testing.assert_array_equal(ds[3]["codes"], reference[1].numpy())
    assert ds[0]["text_len"] > 2 and ds[4]["text_len"] == 0
    ds.check_compatible({"codebook_size": 512, "grid": (10, 8, 8), "tokenizer_fingerprint":
                         CaptionTokenizer(assets["tokenizer"]).fingerprint()})


def test_curation_filters_skip_with_reasons_and_keep_bytes_independent_of_workers(assets, tmp_path):
    from test_containers import encode_frames

    def moving(i):  # a white square crossing a gray frame, 3 px a frame
        frame = np.full((64, 64, 3), 90, np.uint8)
        frame[24:40, (3 * i) % 48:(3 * i) % 48 + 16] = 255
        return frame

    red, blue = np.full((64, 64, 3), (200, 30, 30), np.uint8), np.full((64, 64, 3), (30, 30, 200), np.uint8)
    videos = {"moving": [moving(i) for i in range(125)], "cut": [red] * 62 + [blue] * 63, "still": [red] * 125,
              "small": [np.full((48, 48, 3), 128, np.uint8)] * 125, "wide": [np.full((64, 224, 3), 128, np.uint8)] * 125}
    tar = write_tar(tmp_path / "videos.tar", [{"__key__": key, "mp4": encode_frames(frames), "txt": key.encode()}
                                               for key, frames in videos.items()])
    outputs = []
    for workers in (0, 2):
        config = TokenizeConfig("video", [str(tar)], str(tmp_path / f"codes{workers}"), assets["vqgan"],
                                assets["tokenizer"], workers=workers, shard_size=4, batch_size=2, min_side=56,
                                max_aspect=3.0, cut_threshold=40.0, min_motion=2.0)
        manifest = tokenize_dataset(config)
        outputs.append(_files(tmp_path / f"codes{workers}"))
    assert manifest["skipped_by_reason"] == {"extreme_aspect": 1, "shot_cut": 1, "static_clip": 1, "too_small": 1}
    assert ShardDataset(tmp_path / "codes0").key(0) == "moving" and manifest["num_samples"] == 1
    assert outputs[0] == outputs[1]
    assert json.loads((tmp_path / "codes0" / "settings.json").read_text())["curation"] == {
        "min_side": 56, "max_aspect": 3.0, "cut_threshold": 40.0, "min_motion": 2.0}
    small = encode_image(np.full((40, 40, 3), 128, np.uint8), "PNG")
    with pytest.raises(SkipInput) as info:
        readers.image_pixels(small, 32, readers.Curation(min_side=56))
    assert info.value.reason == readers.TOO_SMALL


def test_remote_inputs_give_the_bytes_of_local_ones(image_data, assets, tmp_path, monkeypatch):
    """http:// (a server on 127.0.0.1) and pipe: inputs, with retries and a clear error after them."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(image_data["root"]))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        runs = {"local": [str(image_data["root"] / "{00000..00001}.tar")],
                "http": [f"{url}/{{00000..00001}}.tar"],
                "pipe": [f"pipe:cat {image_data['root'] / '00000.tar'}", f"pipe:cat {image_data['root'] / '00001.tar'}"]}
        shards = {}
        for name, inputs in runs.items():
            config = TokenizeConfig("image", inputs, str(tmp_path / name), assets["vqgan"], assets["tokenizer"],
                                    workers=2, shard_size=3, batch_size=2)
            manifest = tokenize_dataset(config)
            shards[name] = {k: v for k, v in _files(tmp_path / name).items() if k.startswith("shard-")}
            assert manifest["num_inputs"] == 14 and manifest["num_samples"] == 9, name
        assert shards["http"] == shards["local"] == shards["pipe"] and shards["local"]
        monkeypatch.setattr(readers, "RETRIES", 2)
        monkeypatch.setattr(readers.time, "sleep", lambda seconds: None)
        with pytest.raises(OSError, match=rf"input {url}/missing.tar could not be read after 2 tries: HTTP Error 404"):
            list(readers.iter_tar(f"{url}/missing.tar", "image"))
    finally:
        server.shutdown()
