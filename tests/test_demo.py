"""The one-command demo at CI size: every stage runs for real, the report links real samples,
and a second run reuses every finished stage."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tools.demo import SIZES, Demo

ROOT = Path(__file__).resolve().parents[1]


def test_demo_pipeline_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "tools/demo.py", "--size", "ci", "--output", str(out), "--sketch"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    for stage in ("data", "tokenizer", "vqgan", "tokenize images/train", "tokenize videos/heldout", "pretrain",
                  "convert"):
        assert f"[demo] {stage}: finished" in first.stdout, stage
    report = (out / "report.md").read_text()
    assert "## Learning check" in report
    for task in ("t2i", "t2v", "v2v"):
        assert re.search(rf"^\| {task} \| 4 \| \d+% \(p = [\d.e+-]+\) \| \d+% \| 20% \|", report, re.M), task
    linked = re.findall(r"\]\((samples/[^)]+)\)", report)
    assert len(linked) == 12
    for name in linked:
        with Image.open(out / name) as image:
            assert image.size == (64, 64)
            assert getattr(image, "n_frames", 1) == (1 if name.endswith(".png") else 10)
    assert (out / "pretrain/tb").is_dir() and (out / "model/model.safetensors").is_file()
    sketch = (out / "sketch-report.md").read_text()  # the S2I stage: VQ-GAN-Seg, sketch codes, fine-tuning
    assert re.search(r"^\| shape class matches \| \d+% \(p = [\d.e+-]+\) \| \d+% \| 33% \|$", sketch, re.M)
    assert re.search(r"pixel accuracy [\d.]+%", sketch) and (out / "model-s2i/model.safetensors").is_file()

    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "finished in" not in "".join(l for l in second.stdout.splitlines(True) if "[demo] pretrain" in l)
    assert second.stdout.count("done before") == 14  # data, tokenizer, vqgan, 4× tokenize, pretrain, convert,
    # and the sketch stage's vqgan-seg, 2× tokenize, fine-tune, convert


def test_a_stage_config_that_changed_since_the_last_run_is_refused(tmp_path):
    """Finished stages are reused by their outputs, so a config that differs from the one that made them stops the
    demo (it would otherwise report on the old model) instead of being silently ignored."""
    demo = Demo(tmp_path, SIZES["ci"])
    path = demo.write_yaml("pretrain.yaml", {"optim": {"lr": 2e-3}})
    assert demo.write_yaml("pretrain.yaml", {"optim": {"lr": 2e-3}}) == path  # the same config: reused
    with pytest.raises(SystemExit, match="--fresh"):
        demo.write_yaml("pretrain.yaml", {"optim": {"lr": 3e-3}})
    assert "0.002" in path.read_text()
