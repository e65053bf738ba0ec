"""Checkpoint conversion: safetensors exports judged against DeepSpeed's own states and the losses
the engine logged; universal checkpoints that resume on another world size; bad input refused.

Four training launches are shared by the tests (a launch costs ~25 s of start-up): ZeRO-2 on two
ranks, ZeRO-3 on one rank, and one resume of each on the other world size. One rank with twice
the micro-batches takes exactly the samples two ranks take per micro-step, so the runs on both
world sizes are the same optimisation and their losses can be compared step by step.
"""
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import CODEBOOK
from model.pretrained import WEIGHTS, load_pretrained, read_info, save_pretrained
from model.vqgan import VQGAN
from preprocess.text import CaptionTokenizer
from pretrain import checkpoint
from pretrain.checkpoint import CheckpointError
from pretrain.config import load_config
from pretrain.convert import to_safetensors, to_universal
from pretrain.data import TASK_MODALITY, MultiTaskData, StreamState, TaskDataset, active_tasks, open_shards, task_at
from pretrain.trainer import engine_config
from test_pretrain import ROOT, check, launch, metrics, write_config

ONE_RANK = ["--data.micro_batch", "{t2i: 8, v2v: 4, t2v: 4}"]  # twice write_config's: what two ranks take
ZERO3 = str(ROOT / "ds_configs/zero3.json")
RESUME_TOLERANCE = 1e-5  # measured ≤ 3e-7: float32 sums over ranks in another order, never another sample
EXPORT_TOLERANCE = 1e-6  # measured 0: the same weights, samples and code as the engine's forward


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory, code_shards):
    """Two ranks, ZeRO-2, 8 steps; complete tags at steps 4 and 8."""
    root = tmp_path_factory.mktemp("zero2")
    check(launch(["--config", write_config(root, code_shards, checkpoint_every=4)], ranks=2))
    return root / "run"


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, code_shards):
    """One rank, ZeRO-3, 8 steps, the two-rank global batch; complete tags at steps 4 and 8."""
    root = tmp_path_factory.mktemp("zero3")
    check(launch(["--config", write_config(root, code_shards, checkpoint_every=4, ds_config=ZERO3), *ONE_RANK]))
    return root / "run"


def tag(run, step):
    return run / "checkpoints" / checkpoint.tag_for(step)


@torch.no_grad()
def next_step_loss(model, tag_dir, world_size) -> float:
    """The loss the trainer logs for the step after `tag_dir`, recomputed with `model` on the same samples."""
    marker = checkpoint.read_marker(tag_dir)
    config = load_config(data=marker["config"], overrides=["--data.num_workers", "0"])
    state, seed = marker["state"], config.trainer.seed
    tokenizer = CaptionTokenizer(config.data.tokenizer)
    tasks = active_tasks(config.data, config.trainer.steps)
    shards = open_shards(config.data, config.model, tokenizer.fingerprint(), tasks)
    datasets = {t: TaskDataset(shards[TASK_MODALITY[t]], t, tokenizer.encode_none()[0]) for t in sorted(tasks)}
    ranks = [MultiTaskData(datasets, config.data, seed, StreamState(dict(state["consumed"])), r, world_size)
             for r in range(world_size)]
    losses = []
    for micro_step in range(state["micro_step"], state["micro_step"] + config.trainer.grad_accum):
        task = task_at(config.data, seed, state["step"], micro_step)
        batches = [data.next_batch(task) for data in ranks]
        losses.append(sum(model(b["text"], b["codes"])[1].item() for b in batches) / world_size)
    return sum(losses) / len(losses)


def cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools/convert_checkpoint.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def assert_losses_continue(resumed, uninterrupted):
    assert sorted(resumed) == [5, 6, 7, 8]
    for step in resumed:
        assert resumed[step]["loss"] == pytest.approx(uninterrupted[step]["loss"], abs=RESUME_TOLERANCE), step
        assert resumed[step]["lr"] == pytest.approx(uninterrupted[step]["lr"], rel=1e-9)


def test_zero2_export_equals_the_ranks_weights_and_reproduces_the_logged_loss(zero2_run, code_shards, tmp_path):
    out = to_safetensors(tag(zero2_run, 4), tmp_path / "model")
    model = load_pretrained(out)
    saved = torch.load(tag(zero2_run, 4) / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    loaded = model.state_dict()
    assert loaded.keys() == saved["module"].keys()
    for name, tensor in saved["module"].items():  # fp32 training: the module is the fp32 master copy
        assert torch.equal(loaded[name], tensor), name
    assert next_step_loss(model, tag(zero2_run, 4), world_size=2) == pytest.approx(
        metrics(zero2_run)[5]["loss"], abs=EXPORT_TOLERANCE)
    info = read_info(out)
    assert info["step"] == 4 and info["preset"] == "tiny" and info["dtype"] == "float32"
    assert info["model"]["codebook_size"] == CODEBOOK and info["vqgan_fingerprint"] == VQGAN.from_pretrained(code_shards["vqgan"]).fingerprint()
    assert info["tokenizer"] == code_shards["tokenizer"]
    assert info["tokenizer_fingerprint"] == CaptionTokenizer(code_shards["tokenizer"]).fingerprint()
    assert read_info(to_safetensors(zero2_run, tmp_path / "newest"))["step"] == 8  # a run folder: newest tag


def test_bf16_export_round_trip(zero2_run, tmp_path):
    proc = cli("to-safetensors", zero2_run / "checkpoints", tmp_path / "bf16", "--dtype", "bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {tmp_path / 'bf16' / WEIGHTS}" in proc.stdout and "bf16, " in proc.stdout
    model = load_pretrained(tmp_path / "bf16")
    fp32 = load_pretrained(to_safetensors(tag(zero2_run, 8), tmp_path / "fp32"))
    assert read_info(tmp_path / "bf16")["dtype"] == "bfloat16"
    for (name, half), full in zip(model.state_dict().items(), fp32.state_dict().values()):
        assert half.dtype == torch.bfloat16 and torch.equal(half, full.to(torch.bfloat16)), name
    save_pretrained(model, tmp_path / "again", info={"step": 8})
    again = load_pretrained(tmp_path / "again")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    widened = load_pretrained(tmp_path / "again", dtype=torch.float32)
    text = torch.randint(0, model.config.text_vocab_size, (2, 77), generator=torch.Generator().manual_seed(0))
    codes = torch.randint(0, CODEBOOK, (2, 2, 4, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert widened(text, codes)[1].item() == pytest.approx(fp32(text, codes)[1].item(), abs=2e-2)


def test_universal_from_two_ranks_resumes_on_one(zero2_run, code_shards, tmp_path):
    out = to_universal(tag(zero2_run, 4), tmp_path / "one/checkpoints/step-00000004", workers=1)
    assert {p.name for p in out.iterdir()} == {"mp_rank_00_model_states.pt", "trainer_state.json", "zero"}
    assert {p.name for p in (out / "zero/head.weight").iterdir()} >= {"fp32.pt", "exp_avg.pt", "exp_avg_sq.pt"}
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # nothing left beside it
    check(launch(["--config", write_config(tmp_path, code_shards, name="one", checkpoint_every=4), "--resume", "auto",
                  *ONE_RANK]))
    assert_losses_continue(metrics(tmp_path / "one"), metrics(zero2_run))
    assert (checkpoint.read_marker(tag(tmp_path / "one", 8))["state"]
            == checkpoint.read_marker(tag(zero2_run, 8))["state"])  # same data position, counters, tokens


def test_zero3_universal_from_one_rank_resumes_on_two_and_exports(zero3_run, code_shards, tmp_path):
    to_universal(zero3_run / "checkpoints/step-00000004", tmp_path / "two/checkpoints/step-00000004", workers=1)
    config = write_config(tmp_path, code_shards, name="two", checkpoint_every=2, ds_config=ZERO3)
    check(launch(["--config", config, "--resume", "auto"], ranks=2))
    two = metrics(tmp_path / "two")
    assert_losses_continue(two, metrics(zero3_run))
    assert (checkpoint.read_marker(tag(tmp_path / "two", 8))["state"]
            == checkpoint.read_marker(tag(zero3_run, 8))["state"])
    # The two-rank ZeRO-3 tag at step 6 (its weights split across both ranks) exported and judged by step 7.
    model = load_pretrained(to_safetensors(tag(tmp_path / "two", 6), tmp_path / "model"))
    assert next_step_loss(model, tag(tmp_path / "two", 6), world_size=2) == pytest.approx(two[7]["loss"],
                                                                                         abs=EXPORT_TOLERANCE)


def test_bad_checkpoints_and_outputs_are_refused(zero2_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        to_safetensors(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint there"):
        to_universal(tmp_path / "empty", tmp_path / "out")

    def broken(name, damage):
        copy = shutil.copytree(tag(zero2_run, 8), tmp_path / name)
        damage(copy)
        return copy

    incomplete = broken("incomplete", lambda t: (t / checkpoint.STATE_FILE).unlink())
    with pytest.raises(CheckpointError, match="incomplete: no trainer_state.json"):
        to_safetensors(incomplete, tmp_path / "out")
    no_model = broken("no_model", lambda t: (t / "mp_rank_00_model_states.pt").unlink())
    with pytest.raises(CheckpointError, match=r"missing DeepSpeed files: no \*_model_states.pt"):
        to_universal(no_model, tmp_path / "out")
    for rank in (0, 1):
        lost = broken(f"no_rank{rank}", lambda t: (t / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").unlink())
        for convert in (to_safetensors, to_universal):
            with pytest.raises(CheckpointError, match=rf"saved by 2 ranks but the optim states of rank\(s\) \[{rank}]"):
                convert(lost, tmp_path / "out")

    def truncate(t):
        file = t / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    truncated = broken("truncated", truncate)
    for convert in (to_safetensors, to_universal):
        with pytest.raises(CheckpointError, match="zero_pp_rank_1_mp_rank_00_optim_states.pt is truncated"):
            convert(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written for a refused input

    # Existing outputs: kept without --force (CLI and API), replaced with it.
    export = to_safetensors(tag(zero2_run, 4), tmp_path / "export")
    proc = cli("to-safetensors", tag(zero2_run, 8), export)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"convert_checkpoint: error: {export} already holds "
                                                     f"model.safetensors, config.json; pass --force (force=True) "
                                                     f"to overwrite")
    assert read_info(export)["step"] == 4
    assert read_info(to_safetensors(tag(zero2_run, 8), export, force=True))["step"] == 8
    universal = to_universal(tag(zero2_run, 4), tmp_path / "universal", workers=1)
    with pytest.raises(FileExistsError, match="pass --force"):
        to_universal(tag(zero2_run, 8), universal)
    replaced = to_universal(tag(zero2_run, 8), universal, force=True, workers=1)
    assert checkpoint.read_marker(replaced)["state"]["step"] == 8
    with pytest.raises(FileExistsError, match="not a checkpoint folder; it is not replaced, even with --force"):
        to_universal(tag(zero2_run, 8), export, force=True)
    with pytest.raises(CheckpointError, match="is a universal checkpoint"):
        to_safetensors(universal, tmp_path / "out")


def test_load_pretrained_names_what_does_not_match(zero2_run, tmp_path):
    export = to_safetensors(tag(zero2_run, 4), tmp_path / "export")
    state = load_file(str(export / WEIGHTS))
    state["head.extra"] = state.pop("head.bias")
    save_file(state, str(export / WEIGHTS))
    with pytest.raises(ValueError, match=r"missing keys: head.bias; unexpected keys: head.extra"):
        load_pretrained(export)
    (export / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json .an interrupted export"):
        load_pretrained(export)


def test_universal_resume_sets_load_universal_and_needs_zero(code_shards, tmp_path):
    config = load_config(write_config(tmp_path, code_shards))
    ds = engine_config(config, 2, {"t2i"}, load_universal=True)
    assert ds["checkpoint"] == {"load_universal": True} and "checkpoint" not in engine_config(config, 2, {"t2i"})
    (tmp_path / "zero0.json").write_text('{"zero_optimization": {"stage": 0}}')
    config.trainer.ds_config = str(tmp_path / "zero0.json")
    with pytest.raises(ValueError, match="universal checkpoint is loaded through the ZeRO optimizer"):
        engine_config(config, 2, {"t2i"}, load_universal=True)
