"""Both trainers share one run-folder convention and resume with `--resume auto` after a SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pretrain import checkpoint
from test_pretrain import ROOT, metrics, write_config


def start(script: str, config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, script, "--config", str(config), *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_once_saved(proc: subprocess.Popen, checkpoints: Path, timeout: float = 240) -> None:
    """SIGKILL the run as soon as it has a complete checkpoint (no chance to save or clean up)."""
    deadline = time.time() + timeout
    while not checkpoint.complete_tags(checkpoints):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()


def finish(script: str, config: Path) -> str:
    proc = subprocess.run([sys.executable, script, "--config", str(config), "--resume", "auto"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_pretrain_resumes_exactly_after_sigkill(tmp_path, code_shards):
    script = "pretrain/main.py"
    reference = write_config(tmp_path, code_shards, name="reference", checkpoint_every=2)
    finish(script, reference)  # nothing to resume: a fresh run, uninterrupted
    killed = write_config(tmp_path, code_shards, name="killed", checkpoint_every=2)
    checkpoints = tmp_path / "killed/checkpoints"
    kill_once_saved(start(script, killed), checkpoints)
    step = checkpoint.read_marker(checkpoint.complete_tags(checkpoints)[-1])["state"]["step"]
    (checkpoints / "step-00000099").mkdir()  # a tag whose save was cut short: never resumed from
    (checkpoints / "step-00000099" / "mp_rank_00_model_states.pt").write_bytes(b"half a file")
    out = finish(script, killed)
    assert f"trained {8 - step} steps ({step} → 8)" in out
    full, resumed = metrics(tmp_path / "reference"), metrics(tmp_path / "killed")  # later lines win
    for s in range(step + 1, 9):
        assert resumed[s]["loss"] == pytest.approx(full[s]["loss"], rel=1e-6, abs=1e-6), s
    assert checkpoint.read_marker(checkpoints / "step-00000008")["state"] == \
        checkpoint.read_marker(tmp_path / "reference/checkpoints/step-00000008")["state"]
    assert {"config.json", "metrics.jsonl", "tb", "checkpoints"} <= {p.name for p in (tmp_path / "killed").iterdir()}


def vqgan_config(tmp_path: Path, name: str) -> Path:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    rows = []
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 200 - 20 * i, 90)).save(images / f"{i}.png")
        rows.append(json.dumps({"path": f"{i}.png", "caption": "a colour"}))
    (images / "index.jsonl").write_text("\n".join(rows) + "\n")
    config = {"preset": "tiny",
              "model": {"resolution": 32, "ch": 16, "ch_mult": [1, 2, 2], "attn_levels": [], "norm_groups": 4,
                        "z_channels": 16, "embed_dim": 16, "codebook_size": 32},
              "data": {"paths": [str(images)], "num_workers": 0, "shuffle_buffer": 4},
              "loss": {"perceptual_weight": 0.0, "disc_start": 3, "disc_layers": 2},
              "trainer": {"steps": 8, "batch_size": 2, "checkpoint_every": 2, "keep_last": 2, "log_every": 1,
                          "restart_every": 0, "output_dir": str(tmp_path / name), "device": "cpu"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_vqgan_resumes_after_sigkill_with_the_same_conventions(tmp_path):
    script = "pretrain/train_vqgan.py"
    config = vqgan_config(tmp_path, "run")
    checkpoints = tmp_path / "run/checkpoints"
    kill_once_saved(start(script, config, "--resume", "auto"), checkpoints)
    step = checkpoint.read_marker(checkpoint.complete_tags(checkpoints)[-1])["state"]["step"]
    out = finish(script, config)
    assert f"at step {step}" in out and f"trained {8 - step} steps ({step} → 8)" in out
    assert [t.name for t in checkpoint.complete_tags(checkpoints)] == ["step-00000006", "step-00000008"]
    marker = checkpoint.read_marker(checkpoints / "step-00000008")
    assert marker["state"] == {"step": 8} and marker["config"]["trainer"]["output_dir"] == str(tmp_path / "run")
    assert max(metrics(tmp_path / "run")) == 8
    assert {"config.json", "metrics.jsonl", "tb", "checkpoints", "final"} <= {p.name for p in (tmp_path / "run").iterdir()}


def test_vqgan_runs_of_the_earlier_layout_are_refused_with_a_way_on(tmp_path):
    config = vqgan_config(tmp_path, "old")
    old = tmp_path / "old/checkpoints/step_00000004"
    (old / "vqgan").mkdir(parents=True)
    (old.parent / "latest").write_text("step_00000004\n")
    with pytest.raises(checkpoint.CheckpointError, match="earlier VQ-GAN layout"):
        checkpoint.resolve("auto", tmp_path / "old")
    proc = subprocess.run([sys.executable, "pretrain/train_vqgan.py", "--config", str(config), "--resume", "auto"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_vqgan: error: ") and f"--trainer.init {old / 'vqgan'}" in last
    with pytest.raises(checkpoint.CheckpointError, match="earlier VQ-GAN layout"):
        checkpoint.resolve(old, None)
