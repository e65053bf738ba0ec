"""tools/sample.py: all six tasks from a model folder, real input media, and bad requests refused."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import export_tiny_model
from model.tasks import keep_top_rows
from model.vqgan import VQGAN
from preprocess.text import CaptionTokenizer
from preprocess.readers import load_image
from tools import sample
from tools.media import encode_mp4
from tools.make_demo_data import encode_jpeg, random_spec, render_frame, render_video


@pytest.fixture(scope="module")
def setup(code_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_cli")
    export_tiny_model(code_shards, root / "model")
    spec = random_spec(np.random.default_rng(0), speed=0.3125)
    (root / "clip.mp4").write_bytes(encode_mp4(render_video(spec, 2.0, 10, 32), fps=10))
    (root / "photo.jpg").write_bytes(encode_jpeg(render_frame(spec, 0.0, 32)))
    return root, code_shards


def run(setup, *args, expect_exit=None):
    root, shards = setup
    argv = ["--model", str(root / "model"), "--vqgan", shards["vqgan"], "--output", str(root / "out"),
            "--num-candidates", "2", *map(str, args)]
    if expect_exit is None:
        return sample.main(argv)
    with pytest.raises(SystemExit) as exit_info:
        sample.main(argv)
    assert exit_info.value.code == expect_exit


@pytest.mark.parametrize("task, args, files", [
    ("t2i", ["--text", "a red square"], {"t2i.png": (64, 32, 1)}),
    ("t2i", ["--text", "a red square", "--guidance", "3"], {"t2i.png": (64, 32, 1)}),
    ("t2v", ["--text", "a red square moving left", "--top-k", "8"], {"t2v-0.gif": (32, 32, 2), "t2v-1.gif": (32, 32, 2)}),
    ("v2v", ["--input", "clip.mp4", "--given-frames", "1"], {"v2v-0.gif": (32, 32, 2)}),
    ("i2i", ["--input", "photo.jpg", "--rows", "16"], {"i2i.png": (64, 32, 1)}),
    ("ti2i", ["--input", "photo.jpg", "--region", "8,8,24,24", "--text", "a blue circle"], {"ti2i.png": (64, 32, 1)}),
    ("tv2v", ["--input", "clip.mp4", "--from-frame", "1", "--text", "a green circle moving up",
              "--temperature", "0.7", "--top-p", "0.9"], {"tv2v-1.gif": (32, 32, 2), "tv2v-frames.png": (64, 64, 1)}),
])
def test_every_task_writes_its_files(setup, capsys, task, args, files):
    root, _ = setup
    run(setup, "--task", task, *[root / a if a in ("clip.mp4", "photo.jpg") else a for a in args])
    printed = capsys.readouterr().out.split()
    for name, (width, height, frames) in files.items():
        assert str(root / "out" / name) in printed
        with Image.open(root / "out" / name) as image:
            assert image.size == (width, height) and getattr(image, "n_frames", 1) == frames


def test_input_codes_and_keep_mask_reach_the_sampler(setup, monkeypatch):
    root, shards = setup
    seen = {}
    real_generate = sample.generate

    def spy(model, text, grid, **kwargs):
        seen.update(kwargs, grid=grid, text=text)
        return real_generate(model, text, grid, **kwargs)

    monkeypatch.setattr(sample, "generate", spy)
    run(setup, "--task", "i2i", "--input", root / "photo.jpg", "--rows", "16")
    vqgan = VQGAN.from_pretrained(shards["vqgan"])
    expected = vqgan.encode(load_image((root / "photo.jpg").read_bytes(), 32)[None])[:, None]
    assert torch.equal(seen["reference"], expected)
    assert torch.equal(seen["keep"], keep_top_rows((1, 4, 4), 16, 8))
    none_ids, _ = CaptionTokenizer(shards["tokenizer"]).encode_none()  # I2I is conditioned on "None"
    assert torch.equal(seen["text"][0], torch.from_numpy(none_ids.astype(np.int64)))
    assert torch.equal(seen["unconditional"][0], seen["text"][0])  # guidance's unconditional text is "None"


def test_bad_requests(setup, capsys):
    root, _ = setup
    run(setup, "--task", "tv2v", "--input", root / "clip.mp4", "--from-frame", "2", "--text", "x", expect_exit=1)
    assert "frame index 2 is outside the video" in capsys.readouterr().err
    run(setup, "--task", "ti2i", "--input", root / "photo.jpg", "--region", "0,0,40,8", "--text", "x", expect_exit=1)
    assert "inside the 32x32 image" in capsys.readouterr().err
    run(setup, "--task", "i2i", expect_exit=1)
    assert "needs --input" in capsys.readouterr().err
    run(setup, "--task", "v2v", "--input", root / "clip.mp4", "--guidance", "2", expect_exit=1)
    assert "--guidance steers towards --text" in capsys.readouterr().err
    run(setup, "--task", "t2i", "--text", " ".join(["red"] * 100))
    assert "only the first 75 fit" in capsys.readouterr().err
