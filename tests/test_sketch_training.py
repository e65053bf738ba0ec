"""S2I and S2V in the trainer: sketch codes reach the model, the task joins the schedule and validation, a run
resumes exactly, and wrong set-ups are refused."""
import pytest
import torch

from conftest import SKETCH_CODEBOOK, export_tiny_model, tiny_model_overrides
from model.config import NuwaConfig
from model.nuwa import Nuwa
from pretrain.config import load_config
from test_pretrain import metrics, resume_in_process_exactly, single_process, write_config  # noqa: F401 (a fixture)

SCHEDULE = '[{"start_step": 0, "weights": {"t2i": 1.0, "s2i": 1.0, "s2v": 1.0}}]'


def config_for(tmp_path, shards, *overrides, **trainer):
    return load_config(write_config(tmp_path, shards, **trainer),
                       ["--data.num_workers", "0", "--data.schedule", SCHEDULE, "--model.sketch_codebook_size",
                        str(SKETCH_CODEBOOK), "--data.micro_batch", '{"t2i": 4, "s2i": 4, "s2v": 2}', *overrides])


def test_sketch_tasks_train_validate_and_resume_exactly(tmp_path, sketch_shards, single_process):
    from pretrain.trainer import Trainer

    val = ["--data.val_image_shards", sketch_shards["image"], "--data.val_video_shards", sketch_shards["video"],
           "--trainer.eval_every", "2", "--trainer.eval_batches", "2"]
    def config(*more):
        return config_for(tmp_path, sketch_shards, *val, *more, steps=4, checkpoint_every=2, keep_last=2)

    trainer = Trainer(config("--trainer.output_dir", str(tmp_path / "spied")))
    module, seen = trainer.engine.module, []
    forward = module.forward

    def spy(text, codes, sketch=None):
        seen.append(None if sketch is None else tuple(sketch.shape))
        return forward(text, codes, sketch)

    module.forward = spy
    trainer.train()
    assert (4, 1, 4, 4) in seen and (2, 2, 4, 4) in seen and None in seen  # s2i, s2v and t2i batches
    assert {"val/s2i", "val/s2v", "val/s2v/frame1", "val/t2i"} <= set(metrics(tmp_path / "spied")[4])
    assert trainer.state.consumed["s2i"] > 0 and trainer.state.consumed["s2v"] > 0
    whole, again = resume_in_process_exactly(tmp_path, config)
    assert again[4]["val/s2v"] == whole[4]["val/s2v"]


def test_the_sketch_changes_the_prediction(sketch_shards):
    overrides = tiny_model_overrides(sketch_shards["vocab_size"])
    overrides.pop("preset")
    torch.manual_seed(0)
    model = Nuwa(NuwaConfig.from_preset("tiny", sketch_codebook_size=SKETCH_CODEBOOK, **overrides)).eval()
    codes, text = torch.randint(0, 32, (1, 1, 4, 4)), torch.zeros(1, 77, dtype=torch.long)
    sketch = torch.randint(0, SKETCH_CODEBOOK, (1, 1, 4, 4))
    other = sketch.clone()
    other[0, 0, 3, 3] = (other[0, 0, 3, 3] + 1) % SKETCH_CODEBOOK
    a, b = model(text, codes, sketch)[0], model(text, codes, other)[0]
    assert not torch.allclose(a, b)
    assert torch.equal(a[:, :4], b[:, :4])  # slot 0-3 (row 0): 3×3 windows do not reach the changed corner


def test_fine_tuning_a_text_model_on_sketches_adds_the_sketch_embedding(tmp_path, sketch_shards, single_process,
                                                                        capsys):
    from pretrain.trainer import Trainer

    export_tiny_model(sketch_shards, tmp_path / "text-model")
    Trainer(config_for(tmp_path, sketch_shards, "--trainer.init_from", str(tmp_path / "text-model")))
    assert "1 initialised fresh: sketch_embed.weight" in capsys.readouterr().out


def test_sketch_tasks_need_sketches_and_a_sketch_encoder(tmp_path, sketch_shards, code_shards, single_process):
    from pretrain.trainer import Trainer

    with pytest.raises(ValueError, match="set model.sketch_codebook_size"):
        load_config(write_config(tmp_path, sketch_shards), ["--data.schedule", SCHEDULE, "--data.micro_batch",
                                                            '{"t2i": 4, "s2i": 4, "s2v": 2}'])
    with pytest.raises(ValueError, match=r"data.micro_batch has no size for \['s2i', 's2v'\]"):
        load_config(write_config(tmp_path, sketch_shards), ["--data.schedule", SCHEDULE,
                                                            "--model.sketch_codebook_size", "8"])
    with pytest.raises(ValueError, match="holds no sketch codes"):
        Trainer(config_for(tmp_path, code_shards))
    with pytest.raises(ValueError, match=r"model.sketch_codebook_size 9"):
        Trainer(config_for(tmp_path, sketch_shards, "--model.sketch_codebook_size", "9"))
