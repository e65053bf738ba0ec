"""Held-out validation in the trainer and from a converted model: sharded, and changing no training number."""
import json
import subprocess
import sys

import pytest

from pretrain.convert import to_safetensors
from test_pretrain import ROOT, check, launch, metrics, write_config


def val_config(tmp_path, code_shards, name, **trainer):
    return write_config(tmp_path, code_shards, name=name, steps=3, checkpoint_every=3, **trainer)


def held_out(code_shards):
    return ["--data.val_image_shards", code_shards["image"], "--data.val_video_shards", code_shards["video"],
            "--trainer.eval_batches", "3"]


def test_validation_in_the_trainer_changes_no_training_number_and_the_tool_agrees(tmp_path, code_shards):
    off = val_config(tmp_path, code_shards, "off")
    check(launch(["--config", off]))
    one = val_config(tmp_path, code_shards, "one")
    check(launch(["--config", one, *held_out(code_shards), "--trainer.eval_every", "2"]))
    plain, single = metrics(tmp_path / "off"), metrics(tmp_path / "one")
    for step in (1, 2, 3):
        assert single[step]["loss"] == plain[step]["loss"]  # bit for bit: evaluating changes no training number
        assert not any(k.startswith("val/") for k in plain[step])
    assert {k for k in single[1] if k.startswith("val/")} == set()  # step 1: not due
    keys = {k for k in single[2] if k.startswith("val/")}
    assert keys == {"val/t2i", "val/t2v", "val/v2v", "val/t2v/frame1", "val/t2v/frames2+", "val/v2v/frame1",
                    "val/v2v/frames2+"} == {k for k in single[3] if k.startswith("val/")}  # 3: the final one
    assert 0 < single[3]["val/t2v/frames2+"] < single[3]["val/t2v/frame1"]  # later frames follow the first

    to_safetensors(tmp_path / "one", tmp_path / "model")
    out = subprocess.run([sys.executable, "tools/evaluate.py", "loss", "--model", str(tmp_path / "model"),
                          "--config", str(one), *held_out(code_shards)], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=300).stdout
    tool = json.loads(out[out.index("{"):])
    assert tool.keys() == keys
    for key in keys:  # the converted model, evaluated by the tool, gives the trainer's final numbers
        assert tool[key] == pytest.approx(single[3][key], rel=1e-6), key


SHARDED = """
import json, os, sys
import torch, torch.distributed as dist
sys.path.insert(0, "tests")
from conftest import tiny_model_overrides
from model.config import NuwaConfig
from model.nuwa import Nuwa
from preprocess.text import CaptionTokenizer
from pretrain.config import load_config
from pretrain.validation import evaluate, model_tasks, validation_sets
shards = json.loads(sys.argv[1])
dist.init_process_group("gloo")
config = load_config(None, ["--data.tokenizer", shards["tokenizer"], "--data.val_image_shards", shards["image"],
                            "--data.val_video_shards", shards["video"]],
                     data={"model": tiny_model_overrides(shards["vocab_size"])})
torch.manual_seed(0)
model = Nuwa(config.model)
sets = validation_sets(config, model_tasks(config), CaptionTokenizer(shards["tokenizer"]))
result = evaluate(model, sets, {"t2i": 4, "v2v": 2, "t2v": 2}, 5, torch.device("cpu"), dist.get_rank(),
                  dist.get_world_size())
if dist.get_rank() == 0:
    print(json.dumps(result))
dist.barrier()
dist.destroy_process_group()  # a gloo group left to interpreter exit can abort ("terminate called …")
"""


def test_sharded_validation_gives_the_same_numbers_on_any_number_of_ranks(code_shards, tmp_path):
    """5 micro-batches of a task on 1, 2 or 3 ranks (3: one rank repeats a batch to keep pace)."""
    from pretrain.distributed import free_port

    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    results = []
    for ranks in (1, 2, 3):
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                              "--master_port", str(free_port()), str(script), json.dumps(code_shards)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert len(results[0]) == 7 and all(r.keys() == results[0].keys() for r in results)
    for result in results[1:]:
        for key, value in result.items():
            assert value == pytest.approx(results[0][key], rel=1e-9), key
