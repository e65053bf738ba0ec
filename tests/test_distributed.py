"""Process-group start-up: the launchers' environments, SLURM's included."""
import os
import shutil
import subprocess
import sys

import pytest

from pretrain.distributed import free_port, slurm_environment
from test_pretrain import ROOT, check, launch, metrics, write_config


def test_slurm_environment_is_read_only_for_a_multi_task_srun_step():
    step = {"SLURM_STEP_NUM_TASKS": "16", "SLURM_STEP_NUM_NODES": "2", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
            "MASTER_ADDR": "node-a"}
    assert slurm_environment(step) == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8",
                                       "MASTER_PORT": "29500"}
    assert slurm_environment({**step, "RANK": "3"}) == {}  # torchrun or deepspeed under srun set their own
    assert slurm_environment({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}) == {}  # an salloc/sbatch shell, no step
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        slurm_environment({k: v for k, v in step.items() if k != "MASTER_ADDR"})


def test_two_tasks_started_by_srun_train_together(tmp_path, code_shards):
    config = write_config(tmp_path, code_shards, steps=2, checkpoint_every=2)
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    procs = [subprocess.Popen([sys.executable, "pretrain/main.py", "--config", str(config)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**env, "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "1",
                                   "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for rank in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outs):
        check(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    assert sorted(metrics(tmp_path / "run")) == [1, 2]
    tag = tmp_path / "run/checkpoints/step-00000002"
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= {
        p.name for p in tag.iterdir()}


def test_two_nodes_on_one_machine_train_and_resume_like_one_node(tmp_path, code_shards):
    """torchrun's multi-node path (two agents, --nnodes 2 --node_rank i, one rank each) on this machine."""
    def two_nodes(config, *extra):
        port = str(free_port())
        agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                                    str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port",
                                    port, "pretrain/main.py", "--config", str(config), *extra], cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for node in (0, 1)]
        for agent in agents:
            out = agent.communicate(timeout=300)[0]
            assert agent.returncode == 0, out[-3000:]

    one_node = write_config(tmp_path, code_shards, name="one", checkpoint_every=4)
    check(launch(["--config", one_node], ranks=2))
    nodes = write_config(tmp_path, code_shards, name="nodes", checkpoint_every=4)
    two_nodes(nodes)
    single, multi = metrics(tmp_path / "one"), metrics(tmp_path / "nodes")
    assert sorted(multi) == list(range(1, 9))
    for step in multi:
        assert multi[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-6, abs=1e-6), step
    (tmp_path / "nodes/metrics.jsonl").unlink()
    shutil.rmtree(tmp_path / "nodes/checkpoints/step-00000008")
    two_nodes(nodes, "--resume", "auto")  # from step 4, on two nodes again
    resumed = metrics(tmp_path / "nodes")
    assert sorted(resumed) == [5, 6, 7, 8]
    for step in resumed:
        assert resumed[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-6, abs=1e-6), step
