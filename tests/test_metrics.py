"""Metrics: Fréchet distance and IS against references, CLIP's tokenizer, and tools/evaluate.py end to end
with small TorchScript extractors that have the standard files' call signatures."""
import gzip
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image, ImageFilter

from evaluation.clip_text import ClipTokenizer, byte_characters
from evaluation.extractors import Inception
from evaluation.statistics import frechet_distance, gaussian, inception_score, psnr
from model.vqgan import VQGAN
from preprocess.readers import model_to_uint8, uint8_to_model
from tools import evaluate
from tools.media import encode_mp4


def scipy_frechet(mu1, s1, mu2, s2):
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def test_frechet_distance_matches_scipy_and_the_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 12)), rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) + 0.5
    assert frechet_distance(*gaussian(a), *gaussian(b)) == pytest.approx(scipy_frechet(*gaussian(a), *gaussian(b)),
                                                                          rel=1e-9)
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])  # diagonal: Σ (√v1 − √v2)² + ‖μ1 − μ2‖²
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(*gaussian(a), *gaussian(a)) == pytest.approx(0, abs=1e-9)
    few = rng.normal(size=(5, 12))  # fewer samples than dimensions: a singular covariance stays real and finite
    assert np.isfinite(frechet_distance(*gaussian(few), *gaussian(a)))


def test_inception_score_by_hand():
    p = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    marginal = p.mean(0)
    expected = np.exp(np.mean([(row * np.log(row / marginal)).sum() for row in p]))
    assert inception_score(p, splits=1) == (pytest.approx(expected, rel=1e-12), 0.0)
    assert inception_score(np.tile(np.eye(5), (2, 1)), splits=2)[0] == pytest.approx(5, rel=1e-9)  # one-hot, balanced
    assert inception_score(np.full((6, 3), 1 / 3), splits=3) == (pytest.approx(1), pytest.approx(0))
    with pytest.raises(ValueError, match="at least 10"):
        inception_score(p)


def test_psnr_by_hand():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 16  # MSE = 256 / 48
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / (256 / 48)))


def test_clip_tokenizer_merges_by_rank(tmp_path):
    vocab = tmp_path / "vocab.txt.gz"
    with gzip.open(vocab, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(["c a", "ca t</w>", "a</w> ", "r e", "re d</w>"]).replace("a</w> ", "h i</w>") + "\n")
    tokenizer = ClipTokenizer(vocab)
    characters, _ = byte_characters()
    ids = {token: i for i, token in enumerate(characters + [c + "</w>" for c in characters]
                                               + ["ca", "cat</w>", "hi</w>", "re", "red</w>"])}
    assert tokenizer.encode("A  RED cat!") == [ids["a</w>"], ids["red</w>"], ids["cat</w>"], ids["!</w>"]]
    assert tokenizer.encode("caa") == [ids["ca"], ids["a</w>"]]
    tokens = tokenizer(["red cat", "cat " * 100])
    start, end = len(ids), len(ids) + 1
    assert tokens[0, :4].tolist() == [start, ids["red</w>"], ids["cat</w>"], end] and tokens[0, 4:].eq(0).all()
    assert tokens.shape == (2, 77) and tokens[1, 0] == start and tokens[1, 76] == end


class InceptionStandIn(torch.nn.Module):
    """inception-2015-12-05.pt's signature: uint8 [N, 3, 299, 299] → features or probabilities."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Linear(48, 16)
        self.classes = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 299, 299)
        f = self.features(torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1))
        if return_features:
            return f
        logits = f @ self.classes.weight.t() if no_output_bias else self.classes(f)
        return logits.softmax(-1)


class I3DStandIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.head = torch.nn.Linear(3 * 2 * 4 * 4, 8)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[3:] == (224, 224) and not rescale and not resize and return_features
        assert x.min() >= -1 and x.max() <= 1
        return self.head(torch.nn.functional.adaptive_avg_pool3d(x, (2, 4, 4)).flatten(1))


class ClipStandIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.image = torch.nn.Linear(3, 4)
        self.text = torch.nn.Embedding(49408, 4)

    @torch.jit.export
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, 224, 224)
        return self.image(x.mean((2, 3)))

    @torch.jit.export
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Two image folders (one blurred), a generated folder with an index, two video folders, stand-in files."""
    root = tmp_path_factory.mktemp("metrics")
    rng = np.random.default_rng(0)
    for name in ("real", "blurry", "generated", "real_videos", "generated_videos"):
        (root / name).mkdir()
    index = []
    for i in range(24):
        image = np.zeros((32, 32, 3), np.uint8)
        top, left = rng.integers(0, 20, size=2)
        image[top: top + 12, left: left + 12] = rng.integers(0, 256, size=3)
        Image.fromarray(image).save(root / "real" / f"{i:03d}.png")
        Image.fromarray(image).filter(ImageFilter.GaussianBlur(2)).save(root / "blurry" / f"{i:03d}.png")
        Image.fromarray(np.roll(image, 3, axis=1)).save(root / "generated" / f"{i:03d}-0.png")
        index.append({"path": f"{i:03d}-0.png", "caption": ["a red square", "a blue circle"][i % 2]})
    (root / "generated" / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index))
    for i in range(6):
        frames = rng.integers(0, 256, size=(1, 1, 1, 3)) * np.ones((10, 32, 32, 3))
        frames[:, :, : 4 + 2 * i] = 255
        (root / "real_videos" / f"{i}.mp4").write_bytes(encode_mp4(frames.astype(np.uint8), 2.5))
        (root / "generated_videos" / f"{i}.mp4").write_bytes(encode_mp4(frames[:, :, ::-1].astype(np.uint8), 2.5))
    torch.jit.script(InceptionStandIn()).save(str(root / "inception.pt"))
    torch.jit.script(I3DStandIn()).save(str(root / "i3d.pt"))
    torch.jit.script(ClipStandIn()).save(str(root / "clip.pt"))
    with gzip.open(root / "vocab.txt.gz", "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\nr e\nre d</w>\n")
    return root


def run(capsys, *argv):
    evaluate.main([str(a) for a in argv])
    return json.loads(capsys.readouterr().out)


def test_fid_and_fid_k_through_the_cli(media, capsys):
    same = run(capsys, "fid", "--real", media / "real", "--generated", media / "real", "--inception",
               media / "inception.pt", "--resolution", 32, "--blur", "2")
    assert same["fid"] == pytest.approx(0, abs=1e-6) and same["fid-k"]["2.0"] == pytest.approx(0, abs=1e-6)
    assert same["real_count"] == same["generated_count"] == 24
    assert len(same["protocol"]["extractors"]["inception"]["sha256"]) == 64 and same["protocol"]["resolution"] == 32

    result = run(capsys, "fid", "--real", media / "real", "--generated", media / "blurry", "--inception",
                 media / "inception.pt", "--resolution", 32, "--blur", "4", "--output", media / "fid.json")
    inception = Inception(media / "inception.pt", torch.device("cpu"))
    load = lambda folder: np.stack([np.asarray(Image.open(p)) for p in sorted((media / folder).glob("*.png"))])
    real, blurry = load("real"), load("blurry")
    expected = frechet_distance(*gaussian(inception.features(real)), *gaussian(inception.features(blurry)))
    assert result["fid"] == pytest.approx(expected, rel=1e-9) and result["fid"] > 1e-3
    blur = lambda images: np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(4))) for x in images])
    expected_k = frechet_distance(*gaussian(inception.features(blur(real))), *gaussian(inception.features(blur(blurry))))
    assert result["fid-k"]["4.0"] == pytest.approx(expected_k, rel=1e-9) and result["fid-k"]["4.0"] < result["fid"]
    assert json.loads((media / "fid.json").read_text()) == result


def test_inception_score_and_clipsim_through_the_cli(media, capsys):
    score = run(capsys, "is", "--generated", media / "generated", "--inception", media / "inception.pt",
                "--resolution", 32, "--splits", 4)
    inception = Inception(media / "inception.pt", torch.device("cpu"))
    images = np.stack([np.asarray(Image.open(p)) for p in sorted((media / "generated").glob("*.png"))])
    assert score["is"] == pytest.approx(inception_score(inception.probabilities(images), 4)[0], rel=1e-9)

    result = run(capsys, "clipsim", "--generated", media / "generated", "--clip", media / "clip.pt",
                 "--clip-vocab", media / "vocab.txt.gz", "--resolution", 32)
    from evaluation.extractors import Clip
    clip = Clip(media / "clip.pt", media / "vocab.txt.gz", torch.device("cpu"))
    captions = [json.loads(line)["caption"] for line in (media / "generated" / "index.jsonl").read_text().splitlines()]
    expected = (clip.image_features(images) * clip.text_features(captions)).sum(-1).mean().item()
    assert result["clipsim"] == pytest.approx(expected, rel=1e-6) and result["generated_count"] == 24


def test_fvd_through_the_cli(media, capsys):
    same = run(capsys, "fvd", "--real", media / "real_videos", "--generated", media / "real_videos", "--i3d",
               media / "i3d.pt", "--resolution", 32)
    assert same["fvd"] == pytest.approx(0, abs=1e-6) and same["real_count"] == 6 and same["protocol"]["frames"] == 10
    result = run(capsys, "fvd", "--real", media / "real_videos", "--generated", media / "generated_videos", "--i3d",
                 media / "i3d.pt", "--resolution", 32, "--frames", 8)
    assert result["fvd"] > 1e-3 and result["protocol"]["frames"] == 8


def test_vqgan_reconstruction_metrics(media, code_shards, capsys):
    result = run(capsys, "vqgan", "--vqgan", code_shards["vqgan"], "--data", media / "real", "--lpips", "auto",
                 "--inception", media / "inception.pt", "--limit", 8)
    vqgan = VQGAN.from_pretrained(code_shards["vqgan"]).eval()
    images = np.stack([np.asarray(Image.open(p)) for p in sorted((media / "real").glob("*.png"))[:8]])
    with torch.no_grad():
        x = uint8_to_model(torch.from_numpy(images).permute(0, 3, 1, 2))
        out = model_to_uint8(vqgan.decode(vqgan.encode(x))).permute(0, 2, 3, 1).numpy()
    assert result["count"] == 8 and result["psnr"] == pytest.approx(np.mean([psnr(a, b) for a, b in zip(images, out)]))
    assert 0 < result["lpips"] and -1 <= result["ssim"] <= 1 and result["rfid"] > 0
    assert result["vqgan_fingerprint"] == vqgan.fingerprint()


def test_unreadable_inputs_are_counted_and_missing_files_refused(media, capsys, tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes((media / "real" / "000.png").read_bytes())
    (tmp_path / "c.png").write_bytes(b"not an image")
    result = run(capsys, "fid", "--real", tmp_path, "--generated", tmp_path, "--inception", media / "inception.pt",
                 "--resolution", 32)
    assert result["real_count"] == 2 and result["protocol"]["skipped"] == {"real": {"corrupt_image": 1},
                                                                          "generated": {"corrupt_image": 1}}
    with pytest.raises(SystemExit):
        evaluate.main(["fid", "--real", str(tmp_path), "--generated", str(tmp_path), "--inception", "missing.pt"])
    assert "missing.pt" in capsys.readouterr().err


class TracedOnAGpu(torch.nn.Module):
    """What OpenAI's CLIP archive does inside: tensors placed on "cuda" and cast to float16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.device("cuda")).to(torch.float16) * 2


def test_gpu_device_constants_and_half_casts_are_rewritten_on_cpu(tmp_path):
    from evaluation.extractors import load_script
    torch.jit.script(TracedOnAGpu()).save(str(tmp_path / "gpu.pt"))
    if not torch.cuda.is_available():  # as saved, it cannot run here
        with pytest.raises(RuntimeError):
            torch.jit.load(str(tmp_path / "gpu.pt"))(torch.ones(2))
    out = load_script(tmp_path / "gpu.pt", torch.device("cpu"))(torch.ones(2))
    assert out.device.type == "cpu" and out.dtype == torch.float32 and out.tolist() == [2.0, 2.0]
