"""trainer.init_from: a run starts from a converted model's weights, bit for bit, refuses mismatches by name,
freezes what optim.freeze names, and resumes like any other run."""
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import export_tiny_model, tiny_model_overrides
from model.config import NuwaConfig
from model.nuwa import Nuwa
from model.pretrained import save_pretrained
from preprocess.text import CaptionTokenizer
from pretrain.config import load_config
from test_pretrain import resume_in_process_exactly, single_process, write_config  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def export(code_shards, tmp_path_factory):
    """A converted tiny model with the fixture shards' tokenizer and VQ-GAN."""
    return export_tiny_model(code_shards, tmp_path_factory.mktemp("export") / "model", seed=123)


def config_for(tmp_path, code_shards, *overrides, **trainer):
    return load_config(write_config(tmp_path, code_shards, **trainer), ["--data.num_workers", "0", *overrides])


def test_the_run_starts_from_the_export_bit_for_bit(tmp_path, code_shards, export, single_process, capsys):
    from pretrain.trainer import Trainer

    trainer = Trainer(config_for(tmp_path, code_shards, "--trainer.init_from", str(export)))
    exported = load_file(str(export / "model.safetensors"))
    state = trainer.engine.module.state_dict()
    assert set(state) == set(exported) and all(torch.equal(state[k], exported[k]) for k in exported)
    assert trainer.state.step == 0 and sum(trainer.state.consumed.values()) == 0
    assert f"init_from {export}: {len(exported)} tensors loaded" in capsys.readouterr().out


def test_frozen_parameters_do_not_move_and_missing_ones_are_listed(tmp_path, code_shards, export, single_process,
                                                                    capsys):
    from pretrain.trainer import Trainer

    partial = tmp_path / "partial"
    shutil.copytree(export, partial)
    state = load_file(str(export / "model.safetensors"))
    dropped = sorted(k for k in state if k.startswith("decoder.0.mlp."))
    from safetensors.torch import save_file
    save_file({k: v for k, v in state.items() if k not in dropped}, str(partial / "model.safetensors"))
    config = config_for(tmp_path, code_shards, "--trainer.init_from", str(partial),
                        "--optim.freeze", '["encoder.*", "text_embed.*"]', steps=2, checkpoint_every=100)
    trainer = Trainer(config)
    assert f"{len(dropped)} initialised fresh: {', '.join(dropped)}" in capsys.readouterr().out
    before = {k: v.clone() for k, v in trainer.engine.module.state_dict().items()}
    trainer.train()
    after = trainer.engine.module.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "text_embed."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before[dropped[0]], after[dropped[0]])  # a fresh, trained part


def test_mismatches_are_refused_by_name(tmp_path, code_shards, export, single_process):
    from pretrain.trainer import Trainer

    with pytest.raises(ValueError, match=r"shapes differ: .*decoder\.0\..* in the export"):
        Trainer(config_for(tmp_path, code_shards, "--trainer.init_from", str(export), "--model.width", "64",
                           "--model.heads", "2"))
    with pytest.raises(ValueError, match=r"holds \d+ tensors the run's model lacks \(decoder\.1\."):
        bigger = tmp_path / "bigger"
        torch.manual_seed(0)
        overrides = tiny_model_overrides(code_shards["vocab_size"])
        overrides.pop("preset")
        save_pretrained(Nuwa(NuwaConfig.from_preset("tiny", **{**overrides, "decoder_layers": 2})), bigger,
                        info={"tokenizer_fingerprint": CaptionTokenizer(code_shards["tokenizer"]).fingerprint()})
        Trainer(config_for(tmp_path, code_shards, "--trainer.init_from", str(bigger)))
    other = tmp_path / "other"
    shutil.copytree(export, other)
    text = (other / "config.json").read_text()
    (other / "config.json").write_text(text.replace(CaptionTokenizer(code_shards["tokenizer"]).fingerprint(), "0" * 16))
    with pytest.raises(ValueError, match="another tokenizer"):
        Trainer(config_for(tmp_path, code_shards, "--trainer.init_from", str(other)))
    with pytest.raises(ValueError, match="matches no parameter"):
        Trainer(config_for(tmp_path, code_shards, "--trainer.init_from", str(export), "--optim.freeze", '["encoderr.*"]'))


def test_a_fine_tuning_run_resumes_exactly(tmp_path, code_shards, export, single_process):
    resume_in_process_exactly(tmp_path, lambda *more: config_for(tmp_path, code_shards, "--trainer.init_from",
                                                                 str(export), *more, steps=4, checkpoint_every=2,
                                                                 keep_last=2))
