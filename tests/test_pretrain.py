"""The DeepSpeed trainer: real multi-process runs (gloo on CPU), exact resume, bad input refused."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_model_overrides
from pretrain import checkpoint
from pretrain.config import load_config
from pretrain.data import (TASK_MODALITY, GlobalOrderSampler, MultiTaskData, StreamState, TaskDataset,
                           caption_dropped, open_shards, roll_shifts, task_at)
from preprocess.shards import ShardDataset
from preprocess.text import CaptionTokenizer
from pretrain.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path, code_shards, name="run", **trainer):
    config = {
        "model": tiny_model_overrides(code_shards["vocab_size"]),
        "data": {"image_shards": code_shards["image"], "video_shards": code_shards["video"],
                 "tokenizer": code_shards["tokenizer"], "micro_batch": {"t2i": 4, "v2v": 2, "t2v": 2},
                 "num_workers": 1},
        "optim": {"lr": 3e-3},
        "trainer": {"steps": 8, "grad_accum": 2, "precision": "fp32", "ds_config": str(ROOT / "ds_configs/cpu.json"),
                    "output_dir": str(tmp_path / name), "checkpoint_every": 4, "log_every": 2, **trainer},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(args, ranks=None, env=None, timeout=300, launcher="deepspeed"):
    """Run pretrain/main.py under a launcher with `ranks` processes (deepspeed or torchrun), or plain python."""
    prefix = [sys.executable]
    if ranks and launcher == "deepspeed":  # a free port: the launcher's default 29500 may be taken by another run
        prefix = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port())]
    elif ranks:
        prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                  "--master_port", str(free_port())]
    return subprocess.run(prefix + [str(ROOT / "pretrain/main.py"), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def metrics(output_dir) -> dict[int, dict]:
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def resume_in_process_exactly(tmp_path, config) -> tuple[dict, dict]:
    """`config(*overrides)` makes a 4-step config that checkpoints every 2: run it whole in `run/`, then from
    its step-2 checkpoint in a copy, in this process; steps 3 and 4 must give the same losses. Returns both
    runs' metrics."""
    from pretrain.trainer import Trainer

    Trainer(config("--trainer.output_dir", str(tmp_path / "run"))).train()
    shutil.copytree(tmp_path / "run", tmp_path / "half")
    shutil.rmtree(tmp_path / "half" / "checkpoints" / "step-00000004")
    (tmp_path / "half" / "metrics.jsonl").unlink()
    resumed = Trainer(config("--trainer.output_dir", str(tmp_path / "half")), resume="auto")
    assert resumed.state.step == 2
    resumed.train()
    whole, again = metrics(tmp_path / "run"), metrics(tmp_path / "half")
    assert [again[s]["loss"] for s in (3, 4)] == [whole[s]["loss"] for s in (3, 4)]
    return whole, again


def check(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_ranks_zero2_resume_continues_exactly(tmp_path, code_shards):
    config = write_config(tmp_path, code_shards, checkpoint_every=2, keep_last=3)
    segments = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    check(launch(["--config", config], ranks=2))
    assert set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) <= segments  # DeepSpeed's CPU all-reduce
    # maps a /dev/shm segment per rank and never unlinks it; the trainer does (pretrain/distributed.py)
    full = metrics(tmp_path / "run")
    assert sorted(full) == list(range(1, 9))
    assert np.mean([full[s]["loss"] for s in (7, 8)]) < np.mean([full[s]["loss"] for s in (1, 2)]) - 0.1
    tags = checkpoint.complete_tags(tmp_path / "run/checkpoints")
    assert [t.name for t in tags] == ["step-00000004", "step-00000006", "step-00000008"]  # step 2 pruned
    assert {p.name for p in tags[0].iterdir()} == {
        "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt", "trainer_state.json"}

    # A second run starts from the step-4 checkpoint only, on 2 ranks again: same samples, same losses.
    resumed = write_config(tmp_path, code_shards, name="resumed", checkpoint_every=2, keep_last=3)
    shutil.copytree(tags[0], tmp_path / "resumed/checkpoints" / tags[0].name)
    check(launch(["--config", resumed, "--resume", "auto"], ranks=2))
    part = metrics(tmp_path / "resumed")
    assert sorted(part) == [5, 6, 7, 8]
    for step in part:
        assert part[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-6, abs=1e-6), step
        assert part[step]["lr"] == pytest.approx(full[step]["lr"], rel=1e-9)
        assert {k for k in part[step] if k.startswith("loss/")} == {k for k in full[step] if k.startswith("loss/")}
    end_full = checkpoint.read_marker(tags[-1])["state"]
    end_part = checkpoint.read_marker(tmp_path / "resumed/checkpoints/step-00000008")["state"]
    assert end_part == end_full and end_part["consumed"]["t2i"] > 0


def test_two_ranks_zero3_under_torchrun(tmp_path, code_shards):
    config = write_config(tmp_path, code_shards, steps=6, checkpoint_every=6)
    proc = launch(["--config", config, "--trainer.ds_config", ROOT / "ds_configs/zero3.json"], ranks=2,
                  launcher="torchrun")
    check(proc)
    run = metrics(tmp_path / "run")
    assert run[6]["loss"] < run[1]["loss"] - 0.1
    tag = tmp_path / "run/checkpoints/step-00000006"
    assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "trainer_state.json"} <= {p.name for p in tag.iterdir()}
    assert "trained 6 steps (0 → 6)" in proc.stdout


def test_sigterm_saves_and_exits_cleanly(tmp_path, code_shards):
    config = write_config(tmp_path, code_shards, steps=10_000, checkpoint_every=10_000)
    proc = subprocess.Popen([sys.executable, str(ROOT / "pretrain/main.py"), "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "run/metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    last = max(metrics(tmp_path / "run"))
    tags = checkpoint.complete_tags(tmp_path / "run/checkpoints")
    assert [t.name for t in tags] == [checkpoint.tag_for(last)]
    assert f"stop requested: saved at step {last}" in out


def test_data_order_is_global_across_world_sizes():
    """Two ranks together take exactly the samples one rank takes, in the same global order."""
    one = GlobalOrderSampler(10, "t2i", seed=3, start=4, micro_batch=3, rank=0, world_size=1)
    two = [GlobalOrderSampler(10, "t2i", seed=3, start=4, micro_batch=3, rank=r, world_size=2) for r in (0, 1)]
    it1, it2 = iter(one), [iter(s) for s in two]
    single = [i for _ in range(6) for i in next(it1)]
    paired = [i for _ in range(3) for it in it2 for i in next(it)]
    assert single == paired
    assert sorted(single[6:16]) == list(range(10))  # positions 10..19: epoch 1, each sample once
    assert len(set(single[:6])) == 6 and single[6:16] != single[:10]  # epoch 0's tail; a reshuffled epoch


def taken(config, task, field, world_size, start, micro_steps):
    """`field` of the batches that `world_size` ranks, resumed at global position `start` of `task`, take in
    `micro_steps` micro-steps (rank 0's, then rank 1's, … for each micro-step), with seed 3."""
    tokenizer = CaptionTokenizer(config.data.tokenizer)
    tasks = {"t2i", "t2v", "v2v"}
    shards = open_shards(config.data, config.model, tokenizer.fingerprint(), tasks)
    datasets = {t: TaskDataset(shards[TASK_MODALITY[t]], t, tokenizer.encode_none()[0]) for t in tasks}
    ranks = [MultiTaskData(datasets, config.data, 3, StreamState({**StreamState().consumed, task: start}), r,
                           world_size) for r in range(world_size)]
    return torch.cat([data.next_batch(task)[field] for _ in range(micro_steps) for data in ranks])


def test_caption_dropout_follows_the_global_position(code_shards, tmp_path):
    """The same positions lose their caption on 1 or 2 ranks and after a resume; V2V is untouched."""
    drops = caption_dropped(3, "t2i", range(4000), 0.25)
    assert 0.22 < drops.float().mean() < 0.28 and not torch.equal(drops, caption_dropped(3, "t2v", range(4000), 0.25))
    torch.testing.assert_close(caption_dropped(3, "t2i", range(100, 110), 0.25), drops[100:110])
    config = load_config(write_config(tmp_path, code_shards), ["--data.caption_dropout", "0.5",
                                                              "--data.num_workers", "0"])
    none = torch.from_numpy(CaptionTokenizer(config.data.tokenizer).encode_none()[0].astype(np.int64))
    for task in ("t2i", "t2v"):
        one = taken(config, task, "text", 1, 0, 6)
        is_none = (one == none).all(1)
        assert torch.equal(is_none, caption_dropped(3, task, range(len(one)), 0.5)) and 0 < is_none.sum() < len(one)
        torch.testing.assert_close(taken(config, task, "text", 2, 0, 3), one)
        resumed = taken(config, task, "text", 1, 8, 2)  # a run resumed at position 8
        torch.testing.assert_close(resumed, one[8: 8 + len(resumed)])
    assert (taken(config, "v2v", "text", 1, 0, 4) == none).all()
    with pytest.raises(ValueError, match="caption_dropout"):
        load_config(write_config(tmp_path, code_shards), ["--data.caption_dropout", "1.0"])


def test_video_rolls_follow_the_global_position(code_shards, tmp_path):
    """roll_videos rolls each clip by the shift of its global position (the same on 1 or 2 ranks and after a
    resume) and leaves images alone."""
    shifts = roll_shifts(3, "t2v", range(2000), (4, 5))
    assert {s for s in shifts} == {(r, c) for r in range(4) for c in range(5)}  # every roll of a 4x5 grid
    assert shifts != roll_shifts(3, "v2v", range(2000), (4, 5))
    assert shifts[100:110] == roll_shifts(3, "t2v", range(100, 110), (4, 5))
    plain, rolls = (load_config(write_config(tmp_path, code_shards), ["--data.num_workers", "0",
                                                                     "--data.roll_videos", roll])
                    for roll in ("false", "true"))
    for task in ("t2v", "v2v"):
        unrolled, rolled = taken(plain, task, "codes", 1, 0, 6), taken(rolls, task, "codes", 1, 0, 6)
        shifts = roll_shifts(3, task, range(len(unrolled)), unrolled.shape[-2:])
        expected = torch.stack([torch.roll(c, s, dims=(-2, -1)) for c, s in zip(unrolled, shifts)])
        assert torch.equal(rolled, expected) and not torch.equal(rolled, unrolled)
        assert torch.equal(taken(rolls, task, "codes", 2, 0, 3), rolled)
        resumed = taken(rolls, task, "codes", 1, 4, 2)  # a run resumed at position 4
        assert torch.equal(resumed, rolled[4: 4 + len(resumed)])
    assert torch.equal(taken(rolls, "t2i", "codes", 1, 0, 2), taken(plain, "t2i", "codes", 1, 0, 2))


def test_task_sequence_follows_weights_and_schedule(code_shards, tmp_path):
    config = load_config(write_config(tmp_path, code_shards), [
        "--data.schedule", "[{start_step: 0, weights: {t2i: 1, v2v: 1}}, {start_step: 100, weights: {t2v: 1}}]"])
    early = [task_at(config.data, 0, step=s // 2, micro_step=s) for s in range(200)]
    late = [task_at(config.data, 0, step=100 + s, micro_step=200 + s) for s in range(20)]
    assert set(early) == {"t2i", "v2v"} and 60 < early.count("t2i") < 140
    assert set(late) == {"t2v"}
    assert early == [task_at(config.data, 0, step=s // 2, micro_step=s) for s in range(200)]


def test_shards_that_contradict_the_model_are_refused(code_shards, tmp_path):
    config = load_config(write_config(tmp_path, code_shards), ["--model.codebook_size", "64"])
    with pytest.raises(ValueError, match="codebook_size is 32 in the shards but 64 in the model config"):
        open_shards(config.data, config.model, "any", {"t2i"})
    config = load_config(write_config(tmp_path, code_shards), ["--model.frames", "3"])
    with pytest.raises(ValueError, match=r"grid is \[2, 4, 4\] in the shards but \(3, 4, 4\)"):
        open_shards(config.data, config.model, "any", {"v2v"})
    proc = launch(["--config", write_config(tmp_path, code_shards), "--model.grid_width", "5"])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("pretrain: error: shards in ")
    assert "grid is [1, 4, 4] in the shards but (1, 4, 5)" in proc.stderr


def test_bad_resume_paths_and_checkpoints_are_refused(code_shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint .*nowhere: no such folder"):
        checkpoint.resolve(tmp_path / "nowhere", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpoint.resolve(tmp_path / "empty", tmp_path)
    assert checkpoint.resolve("auto", tmp_path / "fresh") is None
    with pytest.raises(ValueError, match="another model config: width: 32 in the checkpoint, 64 now"):
        checkpoint.check_same_model({"width": 32, "heads": 2}, {"width": 64, "heads": 2}, tmp_path)
    proc = launch(["--config", write_config(tmp_path, code_shards, name="r"), "--resume", tmp_path / "nowhere"])
    assert proc.returncode == 1 and "no such folder" in proc.stderr.splitlines()[-1]
    missing = write_config(tmp_path, code_shards, name="m")
    proc = launch(["--config", missing, "--data.video_shards", tmp_path / "none"])
    assert proc.returncode == 1 and "manifest.json not found" in proc.stderr.splitlines()[-1]


@pytest.fixture
def single_process(monkeypatch):
    """The environment of a one-process group, undone after the test (later launches must not inherit it)."""
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def poison_micro_batch(trainer, number: int = 1, rank: int | None = None):
    """Make the `number`-th micro-batch's loss NaN (on `rank` only, if given), as a bad batch or an fp16 overflow
    would."""
    module, forward, calls = trainer.engine.module, trainer.engine.module.forward, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        logits, loss = forward(*args, **kwargs)
        return logits, loss * float("nan") if len(calls) == number and rank in (None, trainer.rank) else loss
    module.forward = poisoned


def discard_first_micro_batch(trainer):
    """Draw the first micro-batch and throw it away unused: what a skipped one must be equivalent to."""
    from pretrain.trainer import task_at

    forward, calls = trainer.forward, []

    def discarding(task):
        calls.append(1)
        if len(calls) == 1:
            forward(task)
            config = trainer.config
            task = task_at(config.data, config.trainer.seed, trainer.state.step, trainer.state.micro_step)
        return forward(task)
    trainer.forward = discarding


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nan_loss_is_skipped_or_stops(tmp_path, code_shards, single_process, policy):
    from pretrain.trainer import Trainer

    config = load_config(write_config(tmp_path, code_shards, steps=3, checkpoint_every=100),
                         ["--data.num_workers", "0", "--trainer.nan_policy", policy])
    trainer = Trainer(config)
    poison_micro_batch(trainer, 2)
    if policy == "stop":
        before = {k: v.clone() for k, v in trainer.engine.module.state_dict().items()}
        with pytest.raises(FloatingPointError, match=r"non-finite loss at step 1, micro-step 1 \((t2i|t2v|v2v)\); "
                                                     r"stopping before the update"):
            trainer.train()
        after = trainer.engine.module.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # the bad step was never applied
        return
    trainer.train()
    state = trainer.state
    assert (state.step, state.micro_step, state.skipped_batches) == (3, 7, 1)  # 6 good micro-batches + 1 bad
    samples = sum(state.consumed.values())
    assert samples > 0 and len(metrics(tmp_path / "run")) == 3


def test_a_skipped_micro_batch_leaves_no_trace_and_the_host_waits_once_a_step(tmp_path, code_shards, single_process):
    """`skip` without a wait per micro-step: the first micro-batch of step 1 is NaN and is backpropagated before the
    host has seen its loss (its gradients zeroed on the device). The weights must equal, bit for bit, those of a run
    that drew that micro-batch and threw it away unused; and with no bad batch the host waits once a step."""
    from pretrain.trainer import Trainer

    def trained(name, change):
        config = load_config(write_config(tmp_path, code_shards, name=name, steps=2, checkpoint_every=100),
                             ["--data.num_workers", "0", "--trainer.nan_policy", "skip"])
        trainer = Trainer(config)
        change(trainer)
        waits = []
        all_reduce = trainer.all_reduce
        trainer.all_reduce = lambda values: waits.append(1) or all_reduce(values)
        losses = [trainer.train_step()["losses"] for _ in range(2)]
        return trainer, losses, len(waits)

    skipped, skipped_losses, skipped_waits = trained("skipped", poison_micro_batch)
    discarded, discarded_losses, _ = trained("discarded", discard_first_micro_batch)
    clean, _, clean_waits = trained("clean", lambda trainer: None)
    assert (skipped.state.skipped_batches, skipped.state.micro_step) == (1, 5)
    # (the discarding stand-in files the replacement under the discarded batch's task: compare the values)
    assert [sorted(sum(step.values(), [])) for step in skipped_losses] == \
        [sorted(sum(step.values(), [])) for step in discarded_losses]
    for (name, a), b in zip(skipped.engine.module.state_dict().items(), discarded.engine.module.state_dict().values()):
        assert torch.equal(a, b), name
    assert clean_waits == 2 and skipped_waits == 3  # once a step, plus once for the step that had to replace one
    assert any(not torch.equal(a, b) for a, b in zip(clean.engine.module.state_dict().values(),
                                                     skipped.engine.module.state_dict().values()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync debug mode needs a GPU")
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_on_cuda_the_host_waits_only_at_the_once_a_step_points(tmp_path, code_shards, single_process, policy):
    """A training step under torch.cuda.set_sync_debug_mode("error"): any device→host wait raises, except in the
    step's one all-reduce of the losses and in the update (DeepSpeed's engine.step at the boundary)."""
    from pretrain.trainer import Trainer

    config = load_config(write_config(tmp_path, code_shards, steps=3, checkpoint_every=100),
                         ["--data.num_workers", "0", "--trainer.nan_policy", policy])
    trainer = Trainer(config)
    assert trainer.device.type == "cuda"
    trainer.train_step()  # builds the 3DNA plans and caches

    def allowed(function):
        def call(*args, **kwargs):
            torch.cuda.set_sync_debug_mode(0)
            try:
                return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")
        return call

    trainer.all_reduce = allowed(trainer.all_reduce)
    engine_step = trainer.engine.step
    trainer.engine.step = lambda *a, **k: (allowed(engine_step) if trainer.engine.is_gradient_accumulation_boundary()
                                           else engine_step)(*a, **k)
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_samples_are_generated_into_tensorboard(tmp_path, code_shards, single_process):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretrain.trainer import Trainer

    config = load_config(write_config(tmp_path, code_shards, steps=2, checkpoint_every=100),
                         ["--data.num_workers", "0", "--trainer.sample_every", "2", "--trainer.vqgan",
                          code_shards["vqgan"]])
    Trainer(config).train()
    events = EventAccumulator(str(tmp_path / "run/tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"samples/t2i", "samples/t2v", "samples/v2v"} <= set(events.Tags()["images"])
    assert events.Images("samples/t2v")[0].step == 2
    with pytest.raises(ValueError, match="needs trainer.vqgan"):
        load_config(write_config(tmp_path, code_shards), ["--trainer.sample_every", "2"])


def test_video_tasks_train_on_the_first_frames_when_asked(tmp_path, code_shards, single_process):
    from pretrain.trainer import Trainer

    config = load_config(write_config(tmp_path, code_shards, steps=4, checkpoint_every=100),
                         ["--data.num_workers", "0", "--data.frames", '{"t2v": 1}'])
    trainer = Trainer(config)
    module, seen = trainer.engine.module, []
    forward = module.forward

    def recording(text, codes, sketch=None):
        seen.append(codes.clone())
        return forward(text, codes, sketch)

    module.forward = recording
    trainer.train()
    shapes = {tuple(codes.shape[:2]) for codes in seen}
    assert shapes == {(4, 1), (2, 1), (2, 2)}  # t2i 4 images, t2v 2 one-frame clips, v2v 2 whole clips
    video = ShardDataset(code_shards["video"])
    first_frames = [video[i]["codes"][:1] for i in range(len(video))]
    t2v = [c for codes in seen if tuple(codes.shape[:2]) == (2, 1) for c in codes]
    assert all(any(np.array_equal(c.numpy(), f) for f in first_frames) for c in t2v)
    assert trainer.tokens_per_sample["t2v"] * 2 == trainer.tokens_per_sample["v2v"]
    for frames in ('{"t2i": 1}', '{"t2v": 0}', '{"v2v": 3}'):
        with pytest.raises(ValueError, match="data.frames"):
            load_config(write_config(tmp_path, code_shards), ["--data.frames", frames])


def test_telemetry_in_metrics(tmp_path, code_shards, single_process):
    """Step time, data wait, MFU (against trainer.peak_tflops) and memory, every step."""
    from model.flops import training_flops
    from pretrain.data import task_grid
    from pretrain.trainer import Trainer

    config = load_config(write_config(tmp_path, code_shards, steps=3, checkpoint_every=100),
                         ["--data.num_workers", "0", "--trainer.peak_tflops", "0.001"])
    Trainer(config).train()
    for record in metrics(tmp_path / "run").values():
        assert record["step_time_s"] > 0 and 0 <= record["data_wait"] < 1
        assert record["memory/cpu_rss_peak_gib"] > 0.1 and record["memory/gpu_peak_gib"] is None
        flops = sum(record[f"tokens_{t}"] // (math.prod(task_grid(config, t))) * training_flops(config.model,
                    task_grid(config, t)) for t in ("t2i", "v2v", "t2v") if f"tokens_{t}" in record)
        assert record["mfu"] == pytest.approx(flops / record["step_time_s"] / 1e9, rel=1e-9)
        assert record["tokens"] == sum(v for k, v in record.items() if k.startswith("tokens_"))
