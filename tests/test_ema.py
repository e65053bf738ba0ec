"""trainer.ema_decay: the weight average is saved, resumed bit for bit, and exported, under ZeRO-2 and ZeRO-3."""
import shutil

import pytest
import torch
from safetensors.torch import load_file

from pretrain.convert import to_safetensors
from test_pretrain import ROOT, check, launch, write_config


def average(tag):
    return {f.name: torch.load(f, weights_only=True)["values"] for f in sorted((tag / "ema").glob("rank-*.pt"))}


def resume_from_half_way(tmp_path, code_shards, ds_config, launcher, steps):
    """The average after `steps` steps, uninterrupted and resumed from the half-way checkpoint."""
    runs = {}
    for name in ("full", "resumed"):
        config = write_config(tmp_path, code_shards, name=name, steps=steps, checkpoint_every=steps // 2)
        args = ["--config", config, "--trainer.ema_decay", "0.5", "--trainer.ds_config", ROOT / ds_config]
        if name == "resumed":
            half = tmp_path / "full/checkpoints" / f"step-{steps // 2:08d}"
            shutil.copytree(half, tmp_path / "resumed/checkpoints" / half.name)
            args += ["--resume", "auto"]
        check(launch(args, ranks=2, launcher=launcher))
        runs[name] = tmp_path / name / "checkpoints" / f"step-{steps:08d}"
    return runs


def test_zero2_average_resumes_exactly_and_exports(tmp_path, code_shards):
    runs = resume_from_half_way(tmp_path, code_shards, "ds_configs/cpu.json", "deepspeed", 6)
    full, resumed = average(runs["full"]), average(runs["resumed"])
    assert list(full) == ["rank-00000.pt"]  # ZeRO-2: every rank holds the whole average; rank 0 saves it
    for name, value in full["rank-00000.pt"].items():
        assert torch.equal(value, resumed["rank-00000.pt"][name]), name
    weights = load_file(to_safetensors(runs["full"], tmp_path / "weights") / "model.safetensors")
    ema = load_file(to_safetensors(runs["full"], tmp_path / "ema", ema=True) / "model.safetensors")
    assert ema.keys() == weights.keys()
    assert all(torch.equal(ema[k], full["rank-00000.pt"][k]) for k in ema)
    assert not torch.equal(ema["head.weight"], weights["head.weight"])  # an average of earlier weights


def test_zero3_average_is_sliced_per_rank_resumes_exactly_and_joins(tmp_path, code_shards):
    runs = resume_from_half_way(tmp_path, code_shards, "ds_configs/zero3.json", "torchrun", 4)
    full, resumed = average(runs["full"]), average(runs["resumed"])
    assert list(full) == ["rank-00000.pt", "rank-00001.pt"]  # one slice of every parameter per rank
    for rank, values in full.items():
        for name, value in values.items():
            assert torch.equal(value, resumed[rank][name]), (rank, name)
    # With a decay that rounds to 0 the average is the weights: the joined slices must equal DeepSpeed's export.
    config = write_config(tmp_path, code_shards, name="follow", steps=2, checkpoint_every=2)
    check(launch(["--config", config, "--trainer.ema_decay", "1e-30", "--trainer.ds_config",
                  ROOT / "ds_configs/zero3.json"], ranks=2, launcher="torchrun"))
    tag = tmp_path / "follow/checkpoints/step-00000002"
    weights = load_file(to_safetensors(tag, tmp_path / "weights") / "model.safetensors")
    ema = load_file(to_safetensors(tag, tmp_path / "ema", ema=True) / "model.safetensors")
    assert ema.keys() == weights.keys()
    for name in weights:
        assert torch.equal(ema[name], weights[name]), name


def test_decay_out_of_range_is_refused(tmp_path, code_shards):
    from pretrain.config import load_config

    with pytest.raises(ValueError, match=r"trainer.ema_decay must be in \[0, 1\)"):
        load_config(write_config(tmp_path, code_shards), ["--trainer.ema_decay", "1.0"])
