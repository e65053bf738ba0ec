"""Write docs/configuration.md, the reference of every config key of both trainers, from the typed configs.

    python tools/config_reference.py            # rewrite docs/configuration.md
    python tools/config_reference.py --check    # exit 1 when the committed file is stale (a test runs this)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from model import typed_config
from model.config import PRESETS as NUWA_PRESETS
from model.vqgan import PRESETS as VQGAN_PRESETS
from pretrain.config import DATA_FIXED, PretrainConfig
from pretrain.vqgan_trainer import VQGANTrainingConfig

PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def table(config_class: type) -> list[str]:
    rows = ["| key | type | default | what it is |", "|---|---|---|---|"]
    for key in typed_config.describe(config_class):
        cell = json.dumps(key.default, ensure_ascii=False).replace("|", "\\|")
        rows.append(f"| `{key.name}` | `{key.type.replace('|', ' or ')}` | `{cell}` | {key.doc.replace('|', '/')} |")
    return rows


def presets(named: dict, to_dict) -> list[str]:
    values = {name: to_dict(preset) for name, preset in named.items()}
    keys = [k for k in next(iter(values.values())) if len({json.dumps(v.get(k)) for v in values.values()}) > 1]
    rows = ["| preset | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, fields in values.items():
        rows.append(f"| `{name}` | " + " | ".join(json.dumps(fields.get(k)) for k in keys) + " |")
    return rows


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Every key of both trainers, generated from the typed config classes by `python tools/config_reference.py`",
        "(a test fails when this file is stale). Set keys in a YAML/JSON file (`--config`) or on the command line",
        "(`--section.key value`); unknown keys and values of the wrong type are errors. `--help` lists the same keys.",
        "",
        "## Pre-training: `pretrain/main.py`",
        "",
        "The `model` section starts from the preset named by `model.preset` (default `nuwa-336`); its other keys",
        "override the preset's fields. The defaults below are `nuwa-336`'s. "
        + ", ".join(f"`model.{k}`" for k in DATA_FIXED)
        + " are read from the shard manifests unless the file or an override sets them; a value that differs"
        " from the data is refused.",
        "",
        *table(PretrainConfig),
        "",
        "NÜWA presets (`model/config.py`), the fields in which they differ:",
        "",
        *presets(NUWA_PRESETS, dict),
        "",
        "## VQ-GAN: `pretrain/train_vqgan.py`",
        "",
        "The `model` section starts from the preset named by `preset` (default `tiny`); the defaults below are",
        "`VQGANConfig`'s own, which `f16-12288` keeps.",
        "",
        *table(VQGANTrainingConfig),
        "",
        "VQ-GAN presets (`model/vqgan.py`), the fields in which they differ:",
        "",
        *presets(VQGAN_PRESETS, lambda c: typed_config.to_dict(c) if dataclasses.is_dataclass(c) else c),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare with the committed file")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not PATH.is_file() or PATH.read_text(encoding="utf-8") != text:
            print(f"{PATH} is stale: run python tools/config_reference.py", file=sys.stderr)
            return 1
        print(f"{PATH} is up to date")
        return 0
    PATH.parent.mkdir(exist_ok=True)
    PATH.write_text(text, encoding="utf-8")
    print(f"wrote {PATH}: {text.count(chr(10) + '| `')} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
