"""The one-command demo at CI size: every stage runs for real, the report links real samples,
and a second run reuses every finished stage."""
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_demo_pipeline_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "tools/demo.py", "--size", "ci", "--output", str(out)]
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

    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "finished in" not in "".join(l for l in second.stdout.splitlines(True) if "[demo] pretrain" in l)
    assert second.stdout.count("done before") == 9  # data, tokenizer, vqgan, 4× tokenize, pretrain, convert
