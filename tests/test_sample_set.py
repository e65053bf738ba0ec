"""tools/sample.py on evaluation sets: batched, the same files on 1 and 2 ranks, resumable, refusals."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SKETCH_CODEBOOK, export_tiny_model
from model.pretrained import load_pretrained
from model.sampling import SamplingConfig, generate, sample_logits
from model.vqgan import VQGAN, VQGANConfig
from preprocess.readers import ClipSampling, video_clips
from pretrain.distributed import free_port
from tools import sample
from tools.make_demo_data import encode_jpeg, random_spec, render_frame, render_label_map

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(code_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_set")
    export_tiny_model(code_shards, root / "model")
    photos = root / "photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"{i}.jpg").write_bytes(encode_jpeg(render_frame(random_spec(np.random.default_rng(i), speed=0.3125), 0.0, 32)))
    captions = ["a red square moving left", "a blue circle moving up", "a green square moving right"]
    (root / "t2i.jsonl").write_text("".join(json.dumps({"text": c}) + "\n" for c in captions))
    (root / "ti2i.jsonl").write_text("".join(json.dumps({"text": c, "input": f"photos/{i}.jpg"}) + "\n"
                                             for i, c in enumerate(captions[:2])))
    return root, code_shards


def argv(setup, output, *args):
    root, shards = setup
    return ["--model", str(root / "model"), "--vqgan", shards["vqgan"], "--output", str(output), *map(str, args)]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_noise_rows_do_not_depend_on_their_batch(setup):
    """Each row draws from its own noise: alone or beside other rows, it samples the same codes."""
    root, _ = setup
    model = load_pretrained(root / "model")
    text = torch.randint(3, 60, (3, 77))
    grid = model.config.video_grid
    noise = torch.rand(3, grid[0] * grid[1] * grid[2])
    together = generate(model, text, grid, noise=noise, sampling=SamplingConfig(top_k=20))
    alone = generate(model, text[1:2], grid, noise=noise[1:2], sampling=SamplingConfig(top_k=20))
    assert torch.equal(together[1:2], alone)
    assert not torch.equal(together[0], together[1])


def test_inverse_cdf_draw_picks_the_first_code_past_the_noise():
    logits = torch.log(torch.tensor([[0.1, 0.0, 0.2, 0.3, 0.4]]).clamp_min(1e-30)).expand(6, -1)
    noise = torch.tensor([0.0, 0.05, 0.1, 0.35, 0.65, 0.9999])
    assert sample_logits(logits, SamplingConfig(), None, noise).tolist() == [0, 0, 2, 3, 4, 4]
    top2 = sample_logits(logits, SamplingConfig(top_k=2), None, noise)  # only codes 3 and 4 survive
    assert top2.tolist() == [3, 3, 3, 3, 4, 4]  # 3 holds 3/7 of what is left
    draws = sample_logits(torch.tensor([[0.0, 1.0, 2.0]]).expand(100_000, -1), SamplingConfig(), None,
                          torch.rand(100_000, generator=torch.Generator().manual_seed(0)))
    frequencies = torch.bincount(draws, minlength=3) / 100_000
    assert torch.allclose(frequencies, torch.tensor([0.0, 1.0, 2.0]).softmax(0), atol=0.005)


def test_one_and_two_ranks_write_the_same_files_and_a_rerun_resumes(setup, tmp_path):
    root, _ = setup
    args = ["--task", "t2i", "--prompts", root / "t2i.jsonl", "--num-samples", "2", "--batch-size", "4",
            "--top-k", "16", "--seed", "3"]
    sample.main(argv(setup, tmp_path / "one", *args))
    one = files(tmp_path / "one")
    assert sorted(one) == sorted([f"{i:06d}-{j}.png" for i in range(3) for j in range(2)]
                                 + ["index.jsonl", "sampling.json"])
    index = [json.loads(line) for line in one["index.jsonl"].decode().splitlines()]
    assert [(r["index"], r["sample"], r["caption"]) for r in index][:3] == [
        (0, 0, "a red square moving left"), (0, 1, "a red square moving left"), (1, 0, "a blue circle moving up")]
    assert one["000000-0.png"] != one["000000-1.png"]

    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(free_port()), "tools/sample.py", *argv(setup, tmp_path / "two", *args)],
                   cwd=ROOT, check=True, capture_output=True)
    assert files(tmp_path / "two") == one

    (tmp_path / "one" / "000002-1.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one").glob("*.png")}
    sample.main(argv(setup, tmp_path / "one", *args))
    assert files(tmp_path / "one") == one
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one").glob("*.png")}
    assert [name for name in before if after[name] != before[name]] == ["000002-0.png"]  # its batch only

    with pytest.raises(SystemExit):
        sample.main(argv(setup, tmp_path / "one", *args[:-1], "4"))  # another seed into the same folder


def test_inputs_and_held_out_shards_as_conditions(setup, tmp_path, capsys):
    root, shards = setup
    sample.main(argv(setup, tmp_path / "ti2i", "--task", "ti2i", "--prompts", root / "ti2i.jsonl",
                     "--region", "8,8,24,24", "--batch-size", "3"))
    index = [json.loads(line) for line in (tmp_path / "ti2i" / "index.jsonl").read_text().splitlines()]
    assert [r["input"] for r in index] == [str(root / "photos/0.jpg"), str(root / "photos/1.jpg")]

    sample.main(argv(setup, tmp_path / "v2v", "--task", "v2v", "--shards", shards["video"], "--limit", "3",
                     "--num-samples", "1"))
    index = [json.loads(line) for line in (tmp_path / "v2v" / "index.jsonl").read_text().splitlines()]
    assert [r["path"] for r in index] == ["000000-0.mp4", "000001-0.mp4", "000002-0.mp4"]
    assert all(r["input"].startswith("shards:") and r["caption"] is None for r in index)
    clip = video_clips((tmp_path / "v2v" / "000000-0.mp4").read_bytes(), ClipSampling(num_frames=2), 32)[0]
    assert clip.shape == (2, 3, 32, 32)
    capsys.readouterr()

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a red square"}) + "\n" + json.dumps({"txt": "typo"}) + "\n")
    with pytest.raises(SystemExit):
        sample.main(argv(setup, tmp_path / "bad", "--task", "t2i", "--prompts", bad))
    assert "line 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample.main(argv(setup, tmp_path / "bad", "--task", "ti2i", "--prompts", root / "t2i.jsonl", "--region", "0,0,8,8"))
    assert "needs \"input\"" in capsys.readouterr().err


def test_sketch_tasks_sample_from_label_maps_and_shards(sketch_shards, tmp_path, capsys):
    """S2I from a PNG label map, S2V from a label stack, and S2V over held-out shards' own sketch codes."""
    export_tiny_model(sketch_shards, tmp_path / "model", sketch_codebook_size=SKETCH_CODEBOOK)
    VQGAN(VQGANConfig.from_preset("tiny", resolution=32, num_classes=4, in_channels=4, out_channels=4,
                                  codebook_size=SKETCH_CODEBOOK)).save_pretrained(tmp_path / "seg")
    spec = random_spec(np.random.default_rng(0), speed=0.3125)
    Image.fromarray(render_label_map(spec, 0.0, 32)).save(tmp_path / "map.png")
    np.savez(tmp_path / "clip.npz", labels=np.stack([render_label_map(spec, t / 2.5, 32) for t in range(2)]), fps=2.5)
    base = ["--model", str(tmp_path / "model"), "--vqgan", sketch_shards["vqgan"], "--vqgan-seg", str(tmp_path / "seg"),
            "--num-candidates", "2"]
    sample.main(base + ["--task", "s2i", "--sketch", str(tmp_path / "map.png"), "--output", str(tmp_path / "s2i")])
    sample.main(base + ["--task", "s2v", "--sketch", str(tmp_path / "clip.npz"), "--output", str(tmp_path / "s2v")])
    with Image.open(tmp_path / "s2i" / "s2i.png") as image, Image.open(tmp_path / "s2v" / "s2v-1.gif") as video:
        assert image.size == (64, 32) and (video.size, video.n_frames) == ((32, 32), 2)
    sample.main(base[:4] + ["--task", "s2v", "--shards", sketch_shards["video"], "--limit", "2", "--output",
                            str(tmp_path / "set")])
    index = [json.loads(line) for line in (tmp_path / "set" / "index.jsonl").read_text().splitlines()]
    assert [r["path"] for r in index] == ["000000-0.mp4", "000001-0.mp4"] and index[0]["sketch"].startswith("shards:")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        sample.main(base[:4] + ["--task", "s2i", "--sketch", str(tmp_path / "map.png"), "--output", str(tmp_path / "x")])
    assert "needs --vqgan-seg" in capsys.readouterr().err
    record = json.loads((tmp_path / "model" / "config.json").read_text())  # as converted from a run on sketch shards
    (tmp_path / "model" / "config.json").write_text(json.dumps({**record, "vqgan_seg_fingerprint": "0" * 16}))
    with pytest.raises(SystemExit):
        sample.main(base + ["--task", "s2i", "--sketch", str(tmp_path / "map.png"), "--output", str(tmp_path / "y")])
    assert "is not the VQ-GAN-Seg that coded the model's sketches" in capsys.readouterr().err
