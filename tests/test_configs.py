"""configs/, --dry-run, --help and the generated configuration reference: what a new user runs first."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from model import typed_config
from pretrain import main as pretrain_main
from pretrain import train_vqgan
from pretrain.config import PretrainConfig, load_config
from pretrain.vqgan_trainer import VQGANTrainingConfig
from tools import config_reference, estimate_memory

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIGS = ["cpu-smoke.yaml", "nuwa-256.yaml", "nuwa-336-1gpu.yaml", "nuwa-336-64gpu.yaml"]
VQGAN_CONFIGS = ["vqgan-demo.yaml", "vqgan-f16-12288.yaml", "vqgan-seg-demo.yaml"]


def test_every_config_file_is_tested():
    assert sorted(p.name for p in (ROOT / "configs").iterdir()) == sorted(PRETRAIN_CONFIGS + VQGAN_CONFIGS)


def data_overrides(code_shards):
    """Point a config's data at the fixture shards (whose grid, codebook and vocabulary the model then takes)."""
    return ["--data.image_shards", code_shards["image"], "--data.video_shards", code_shards["video"],
            "--data.tokenizer", code_shards["tokenizer"]]


def dry_run(main, argv, capsys) -> str:
    main(argv)
    return capsys.readouterr().out


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, (pattern, text[-2000:])
    return float(match.group(1).replace(",", ""))


@pytest.mark.parametrize("name", PRETRAIN_CONFIGS)
def test_pretrain_configs_dry_run(name, code_shards, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name ds_configs/ relative to the repository root, where runs start
    path = ROOT / "configs" / name
    out = dry_run(pretrain_main.main, ["--config", str(path), *data_overrides(code_shards), "--dry-run",
                                       "--world-size", "64", "--gpus-per-node", "8"], capsys)
    config = load_config(path, data_overrides(code_shards))
    # what the data fixes came from the manifests, not the preset
    assert (config.model.codebook_size, config.model.grid_height, config.model.text_vocab_size) == (
        32, 4, code_shards["vocab_size"])
    assert "from the shard manifests: model.text_vocab_size" in out
    for task in ("t2i", "v2v"):
        micro = config.data.micro_batch[task]
        assert re.search(rf"^{task}\s+{micro}\s+{micro * 64 * config.trainer.grad_accum}\s", out, re.M), out
    assert "tokens per step" in out and "steps per epoch" in out
    assert number(r"= ([\d.]+) GiB \(rough", out) > 0


def test_64_gpu_dry_run_agrees_with_estimate_memory(code_shards, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = str(ROOT / "configs/nuwa-336-64gpu.yaml")
    out = dry_run(pretrain_main.main, ["--config", path, *data_overrides(code_shards), "--dry-run",
                                       "--world-size", "64"], capsys)
    assert re.search(r"^t2i\s+2\s+128\s", out, re.M)  # the paper's global batch of 128
    assert "ranks: 64 (8 per node)" in out and "memory per GPU (ZeRO-2, ds_configs/zero2.json)" in out
    estimate_memory.main(["--config", path, *data_overrides(code_shards), "--gpus", "64", "--gpus-per-node", "8"])
    table = capsys.readouterr().out
    assert number(r"model states ([\d.]+) GiB", out) == number(r"\nZeRO-2 +([\d.]+)", table)
    video = number(r"\nvideo \(2, 4, 4\) +[\d.]+ +([\d.]+)", table)  # checkpointed, per sample
    assert number(r"\((?:v2v|t2v), 2 samples, checkpointed\) ([\d.]+) GiB", out) == pytest.approx(2 * video, abs=0.01)
    params = number(r"parameters: ([\d,]+) \(", out)
    assert params / 1e6 == pytest.approx(number(r"([\d.]+)M parameters", table), abs=0.05)


@pytest.mark.parametrize("name", VQGAN_CONFIGS)
def test_vqgan_configs_dry_run(name, tmp_path, capsys):
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "index.jsonl").write_text(json.dumps({"path": "red.png", "caption": "red"}) + "\n")
    out = dry_run(train_vqgan.main, ["--config", str(ROOT / "configs" / name), "--data.paths", f"[{tmp_path}]",
                                     "--data.video_paths", "[]", "--dry-run", "--world-size", "8"], capsys)
    config = typed_config.read_file(ROOT / "configs" / name)
    batch = config["trainer"]["batch_size"]
    assert f"global batch {batch} × 8 = {8 * batch} images" in out and "inputs: 1 units (1 of images" in out
    assert number(r"VQ-GAN ([\d,]+)", out) > 0


def test_help_lists_every_key_with_default_and_doc():
    for script, config_class in (("pretrain/main.py", PretrainConfig), ("pretrain/train_vqgan.py", VQGANTrainingConfig)):
        out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, check=True,
                             timeout=120).stdout
        keys = typed_config.describe(config_class)
        assert len(keys) > 30 and all(key.doc for key in keys), [k.name for k in keys if not k.doc]
        for key in keys:
            assert f"--{key.name} {key.type}  (default: {json.dumps(key.default)})" in out, key.name


def test_configuration_reference_is_current():
    assert config_reference.main(["--check"]) == 0, "docs/configuration.md is stale: python tools/config_reference.py"
    text = (ROOT / "docs/configuration.md").read_text()
    for config_class in (PretrainConfig, VQGANTrainingConfig):
        for key in typed_config.describe(config_class):
            assert f"| `{key.name}` |" in text


def test_dry_run_refusals_are_one_line(code_shards):
    proc = subprocess.run([sys.executable, "pretrain/main.py", "--config", "configs/cpu-smoke.yaml", "--dry-run",
                           *data_overrides(code_shards), "--model.codebook_size", "64"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("pretrain: error: shards in ")
    assert "codebook_size is 32 in the shards but 64 in the model config" in proc.stderr
    proc = subprocess.run([sys.executable, "pretrain/train_vqgan.py", "--config", "configs/vqgan-demo.yaml",
                           "--dry-run", "--data.paths", "[nowhere/at/all]"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("train_vqgan: error: ")
    assert "Traceback" not in proc.stderr
