"""Ranks take the same decisions: a bad checkpoint on one rank, a dead rank, values that cannot work."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from pretrain.config import load_config
from pretrain.distributed import free_port
from test_pretrain import ROOT, check, launch, metrics, write_config


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_file_of_one_rank_makes_every_rank_fall_back_or_refuse(tmp_path, code_shards):
    config = write_config(tmp_path, code_shards, steps=4, checkpoint_every=2)
    check(launch(["--config", config], ranks=2))
    full = metrics(tmp_path / "run")
    newest = tmp_path / "run/checkpoints/step-00000004"
    truncate(newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt")

    started = time.time()
    proc = launch(["--config", config, "--resume", newest], ranks=2, timeout=120)
    assert proc.returncode != 0 and time.time() - started < 90
    errors = re.findall(r"pretrain: error: .*?\(rank \d of 2\)", proc.stderr)
    assert len(errors) == 2 and len(set(errors)) == 1, proc.stderr[-3000:]  # both ranks, the same message
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt is truncated" in errors[0]
    assert "Traceback" not in proc.stderr

    proc = launch(["--config", config, "--resume", "auto", "--trainer.steps", "4"], ranks=2)
    check(proc)
    assert "--resume auto: skipping step-00000004 (kept on disk)" in proc.stdout
    assert "resumed from" in proc.stdout and "step-00000002 at step 2" in proc.stdout
    assert newest.is_dir()  # never deleted: the step-4 tag written now replaced only its marker-less files
    resumed = metrics(tmp_path / "run")
    for step in (3, 4):
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-6, abs=1e-6)


def test_a_rank_killed_mid_run_ends_the_others(tmp_path, code_shards):
    config = write_config(tmp_path, code_shards, steps=10_000, checkpoint_every=10_000, log_every=1)
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    procs = [subprocess.Popen([sys.executable, "pretrain/main.py", "--config", str(config), "--trainer.timeout_s", "30"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for rank in (0, 1)]
    log = tmp_path / "run/metrics.jsonl"
    deadline = time.time() + 180
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert time.time() < deadline and procs[0].poll() is None
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    _, err = procs[0].communicate(timeout=120)
    assert time.time() - killed < 45  # within trainer.timeout_s (and its detection), not a hang
    assert procs[0].returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("pretrain: error: lost contact with the other ranks"), err[-3000:]
    assert "Traceback" not in err
    procs[1].communicate()


SKIP_ON_ONE_RANK = r"""
import sys
import torch
from pretrain.config import load_config
from pretrain.trainer import Trainer
sys.path.insert(0, "tests")
from test_pretrain import discard_first_micro_batch, poison_micro_batch

config_path, output = sys.argv[1:3]


def run(name, change):
    trainer = Trainer(load_config(config_path, ["--data.num_workers", "0", "--trainer.nan_policy", "skip",
                                                "--trainer.ds_config", f"{output}/zero3.json",
                                                "--trainer.output_dir", f"{output}/{name}"]))
    change(trainer)
    losses = [sorted(sum(trainer.train_step()["losses"].values(), [])) for _ in range(2)]
    local = [getattr(p, "ds_tensor", p).detach().clone() for p in trainer.engine.module.parameters()]
    return trainer, losses, local


skipped, skipped_losses, skipped_weights = run("skipped", lambda trainer: poison_micro_batch(trainer, rank=1))
_, discarded_losses, discarded_weights = run("discarded", discard_first_micro_batch)
same = skipped_losses == discarded_losses and all(map(torch.equal, skipped_weights, discarded_weights))
print(f"rank {skipped.rank}: skipped {skipped.state.skipped_batches}, micro-step {skipped.state.micro_step}, "
      f"same as discarded {same}", flush=True)
"""


def test_a_nan_on_one_rank_is_skipped_by_every_rank_under_zero3(tmp_path, code_shards):
    """Rank 1's first micro-batch is NaN, rank 0's is not: under `nan_policy: skip` both ranks drop that micro-step
    (decided on the device, before the host sees a loss) and end with the weights of a run that threw it away;
    every parameter is partitioned, so the gradient hooks meet ZeRO-3's own."""
    config = write_config(tmp_path, code_shards, steps=2, checkpoint_every=100)
    zero3 = json.loads((ROOT / "ds_configs/zero3.json").read_text())
    zero3["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # every parameter partitioned
    (tmp_path / "zero3.json").write_text(json.dumps(zero3))
    script = tmp_path / "skip_on_one_rank.py"
    script.write_text(SKIP_ON_ONE_RANK)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(script), str(config), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    check(proc)
    for rank in (0, 1):
        assert f"rank {rank}: skipped 1, micro-step 5, same as discarded True" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.parametrize("override, message", [
    (["--data.micro_batch", json.dumps({"t2i": 0, "v2v": 2, "t2v": 2})], r"data.micro_batch: \{'t2i': 0\}"),
    (["--trainer.grad_accum", "0"], "trainer.grad_accum must be at least 1"),
    (["--trainer.steps", "0"], "trainer.steps must be at least 1"),
    (["--optim.lr", "0"], "optim.lr must be positive"),
    (["--optim.betas", "[0.9, 1.0]"], r"optim.betas must be in \[0, 1\)"),
    (["--data.schedule", json.dumps([{"start_step": 0, "weights": {"t2i": -1}}])], "negative weights"),
    (["--data.schedule", json.dumps([{"start_step": 0}, {"start_step": 0}])], "start_step values must increase"),
])
def test_values_that_cannot_work_are_refused(tmp_path, code_shards, override, message):
    with pytest.raises(ValueError, match=message):
        load_config(write_config(tmp_path, code_shards), override)
