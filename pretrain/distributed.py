"""Process-group start-up for both trainers: under `deepspeed`, `torchrun`, `srun` (one task per
rank), or plain `python` (a group of one), on CUDA (NCCL) or CPU (gloo)."""
from __future__ import annotations

import contextlib
import datetime
import glob
import os
import socket
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for a one-process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_device(device: str = "auto") -> torch.device:
    """"auto" (CUDA when available), "cuda" or "cpu"; CUDA is this process's LOCAL_RANK GPU."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, got {device!r}")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def slurm_environment(environ: dict) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and MASTER_PORT for a task that `srun` started directly
    (srun sets only SLURM_* variables); empty when a launcher set RANK or the step has one task."""
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", 1))
    if "RANK" in environ or tasks <= 1:
        return {}
    if "MASTER_ADDR" not in environ:
        raise ValueError(f"started by srun as one of {tasks} tasks, but MASTER_ADDR is not set: export "
                         "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) before srun")
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": str(tasks), "LOCAL_RANK": environ["SLURM_LOCALID"],
            "LOCAL_WORLD_SIZE": str(tasks // int(environ.get("SLURM_STEP_NUM_NODES", 1))),
            "MASTER_PORT": environ.get("MASTER_PORT", "29500")}


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> tuple[int, int, torch.device]:
    """Join (or, for a plain `python` run, create) the process group; returns (rank, world size, device).

    A collective that waits longer than `timeout_s` raises instead of hanging, so one failed rank
    ends the others. CPU ranks on one machine split its cores between them unless OMP_NUM_THREADS says.
    """
    os.environ.update(slurm_environment(os.environ))
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    placed = pick_device(device)
    if placed.type == "cuda":
        torch.cuda.set_device(placed)
    elif "OMP_NUM_THREADS" not in os.environ:
        local_ranks = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", 1)))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_ranks))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if placed.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size(), placed


def release_shared_memory(rank: int) -> None:
    """DeepSpeed's CPU all-reduce maps one /dev/shm segment per rank (~70 MB) and never unlinks it, so each run
    would leave its segments in memory until the machine reboots. Once every rank has mapped every segment (the
    barrier: DeepSpeed maps them while it initialises), each rank unlinks its own; the mappings stay valid, and
    nothing is left behind, even by a killed run. Needs the process group."""
    dist.barrier()
    for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{os.environ.get('MASTER_PORT')}_{rank}"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def agree(fn: Callable[[], T], mistakes: tuple[type[Exception], ...]) -> T:
    """Run `fn` on every rank and agree on the outcome: if it raised one of `mistakes` on any rank, every
    rank raises the error of the lowest such rank (same type and message), so no rank goes on alone
    into a collective that the others never join. Needs the process group."""
    try:
        result, failure = fn(), None
    except mistakes as e:
        result, failure = None, (type(e).__name__, str(e))
    outcomes = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, failure)
    failed = [(rank, outcome) for rank, outcome in enumerate(outcomes) if outcome is not None]
    if failed:
        rank, (kind, message) = failed[0]
        where = f" (rank {rank} of {len(outcomes)})" if len(outcomes) > 1 else ""
        raise {cls.__name__: cls for cls in mistakes}[kind](message + where)
    return result
