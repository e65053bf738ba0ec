"""Typed configs: files, presets and `--section.key value` overrides, with strict validation."""
import json
from dataclasses import dataclass, field
from typing import Optional

import pytest

from model import typed_config
from model.config import NuwaConfig


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Run:
    model: str = "tiny"
    steps: int = 10
    seed: Optional[int] = None
    optim: Optim = field(default_factory=Optim)
    weights: dict[str, float] = field(default_factory=dict)


def test_file_then_overrides_with_types(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 20\noptim:\n  betas: [0.8, 0.9]\nweights: {t2i: 2, v2v: 1}\n")
    run = typed_config.load(Run, path, ["--optim.lr", "3e-4", "--steps=30", "--seed", "7", "--model", "nuwa-256"])
    assert run == Run(model="nuwa-256", steps=30, seed=7, optim=Optim(lr=3e-4, betas=(0.8, 0.9)),
                      weights={"t2i": 2.0, "v2v": 1.0})
    assert isinstance(run.weights["t2i"], float) and isinstance(run.optim.betas, tuple)
    json_path = tmp_path / "run.json"
    json_path.write_text(json.dumps(typed_config.to_dict(run)))
    assert typed_config.load(Run, json_path) == run


@pytest.mark.parametrize("overrides, match", [
    (["--stpes", "3"], "unknown config key"),
    (["--optim.lrate", "3"], r"unknown config key\(s\) optim.lrate"),
    (["--steps", "3.5"], "steps: expected an int"),
    (["--optim.lr", "fast"], "optim.lr: expected a float"),
    (["--optim.betas", "[0.9]"], "expected 2 items"),
    (["--seed"], "has no value"),
    (["steps", "3"], "expected an override"),
])
def test_bad_overrides_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        typed_config.load(Run, overrides=overrides)


def test_missing_file_and_preset_base(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        typed_config.load(Run, tmp_path / "nope.yaml")
    base = NuwaConfig.from_preset("tiny").to_dict()
    config = typed_config.load(NuwaConfig, overrides=["--decoder_layers", "4", "--video_extent", "[3,5,null]"], base=base)
    assert config.decoder_layers == 4 and config.video_extent == (3, 5, None) and config.width == 128
