"""Sketch codes beside the visual codes: preprocess/tokenize.py --vqgan-seg codes every sample's label map
(images: {key}.seg.png; videos: {key}.seg.npz at the clip's frames), skips what lacks or mismatches one, and
writes shard format /3."""
import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from model.vqgan import VQGAN, VQGANConfig
from preprocess.readers import ClipSampling, label_clips, label_map
from preprocess.shards import SKETCH_FORMAT, ShardDataset
from preprocess.tokenize import main as tokenize
from tools.make_demo_data import encode_jpeg, random_spec, render_frame, render_label_map, render_video
from tools.media import encode_mp4

SEG = dict(resolution=32, num_classes=4, in_channels=4, out_channels=4, ch=16, ch_mult=(1, 2, 2), z_channels=16,
           embed_dim=16, codebook_size=64, norm_groups=4, attn_levels=())


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def npz(labels: np.ndarray, fps: float) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=labels, fps=fps)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def seg_vqgan(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("seg") / "vqgan-seg"
    VQGAN(VQGANConfig.from_preset("tiny", **SEG)).save_pretrained(folder)
    return folder


def run(code_shards, seg_vqgan, modality, tar, output, *extra):
    tokenize(["--modality", modality, "--input", str(tar), "--output", str(output), "--vqgan", code_shards["vqgan"],
              "--tokenizer", code_shards["tokenizer"], "--vqgan-seg", str(seg_vqgan), "--workers", "0", *extra])
    return ShardDataset(output)


def test_image_label_maps_become_sketch_codes(code_shards, seg_vqgan, tmp_path):
    rng = np.random.default_rng(0)
    specs = [random_spec(rng, speed=None) for _ in range(4)]
    with wds.TarWriter(str(tmp_path / "images.tar")) as writer:
        for i, spec in enumerate(specs):
            sample = {"__key__": f"{i:04d}", "jpg": encode_jpeg(render_frame(spec, 0.0, 48)), "txt": "a shape"}
            if i != 2:  # sample 2 has no label map; sample 3's is another size
                sample["seg.png"] = png(render_label_map(spec, 0.0, 48 if i != 3 else 40))
            writer.write(sample)
    shards = run(code_shards, seg_vqgan, "image", tmp_path / "images.tar", tmp_path / "codes")
    assert shards.manifest["format"] == SKETCH_FORMAT and shards.has_sketch
    assert shards.manifest["sketch"]["grid"] == [1, 8, 8] and shards.manifest["sketch"]["num_classes"] == 4
    assert shards.manifest["skipped_by_reason"] == {"bad_label_map": 1, "no_label_map": 1}
    seg = VQGAN.from_pretrained(seg_vqgan).eval()
    assert [shards.key(i) for i in range(len(shards))] == ["0000", "0001"]
    for i in range(2):
        labels = torch.from_numpy(label_map(png(render_label_map(specs[i], 0.0, 48)), 32, 4).astype(np.int64))
        assert np.array_equal(shards[i]["sketch"], seg.encode(labels[None]).numpy().astype(np.uint16))
        assert shards[i]["sketch"].shape == (1, 8, 8) and shards[i]["codes"].shape[0] == 1


def test_video_label_stacks_follow_the_clip_frames(code_shards, seg_vqgan, tmp_path):
    spec = random_spec(np.random.default_rng(1), speed=0.3125)
    frames = render_video(spec, seconds=4.0, fps=10, image_size=32)  # 40 frames
    labels = np.stack([render_label_map(spec, i / 10, 32) for i in range(40)])
    with wds.TarWriter(str(tmp_path / "videos.tar")) as writer:
        writer.write({"__key__": "full", "mp4": encode_mp4(frames, 10), "seg.npz": npz(labels, 10.0), "txt": "a"})
        writer.write({"__key__": "short", "mp4": encode_mp4(frames, 10), "seg.npz": npz(labels[:20], 10.0),
                      "txt": "b"})
    shards = run(code_shards, seg_vqgan, "video", tmp_path / "videos.tar", tmp_path / "codes", "--num-frames", "2",
                 "--frame-rate", "0.5")
    assert len(shards) == 1 and shards.manifest["skipped_by_reason"] == {"bad_label_map": 1}
    assert "end at 2.00 s; the clip needs 4.00 s" in json.dumps(shards.details()["skipped"])
    seg = VQGAN.from_pretrained(seg_vqgan).eval()
    expected = seg.encode(torch.from_numpy(labels[[0, 20]].astype(np.int64)))  # clip frames at 0 s and 2 s
    assert np.array_equal(shards[0]["sketch"], expected.numpy().astype(np.uint16))
    clip, = label_clips(npz(labels, 10.0), [0.0], ClipSampling(num_frames=10), 32, 4)
    assert np.array_equal(clip, labels[::4])  # 2.5 fps from a 10-fps stack: every 4th map
