"""The portable NÜWA model folder: `model.safetensors` + `config.json`, readable without DeepSpeed.

    config.json  {"format": "nuwa-pretrained/1", "model": NuwaConfig fields, "dtype": "float32",
                  "preset", "step", "source", "tokenizer", "tokenizer_fingerprint", "vqgan_fingerprint",
                  "vqgan_seg_fingerprint" (runs on sketch shards)}

Everything besides `format`, `model` and `dtype` is provenance (`info`): which run and step the
weights came from and which tokenizer, VQ-GAN (and VQ-GAN-Seg) their ids and codes mean, so that sampling can
refuse a mismatched pair. Weights are safetensors only: loading never executes pickled code.
`config.json` is written last, so a folder without it is an interrupted export, never a model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model import storage, typed_config
from model.config import NuwaConfig
from model.nuwa import Nuwa

FORMAT = "nuwa-pretrained/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_state_dict(state: dict[str, torch.Tensor], config: NuwaConfig, where: str) -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped tensor."""
    with torch.device("meta"):
        expected = Nuwa(config).state_dict()
    storage.check_state_dict(state, expected, where, "NÜWA model of its config")


def refuse_overwrite(path: Path, force: bool) -> None:
    existing = [name for name in (WEIGHTS, CONFIG) if (path / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{path} already holds {', '.join(existing)}; pass --force (force=True) to overwrite")


def save_state(state: dict[str, torch.Tensor], config: NuwaConfig, path: str | Path, info: dict | None = None,
               dtype: torch.dtype | None = None, force: bool = False) -> Path:
    """Write a checked state dict as a model folder; an existing export is replaced only with `force`."""
    path = Path(path)
    check_state_dict(state, config, "the weights to save")
    refuse_overwrite(path, force)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in state.items()}
    stored = next(v.dtype for v in tensors.values() if v.is_floating_point())
    record = {"format": FORMAT, "model": config.to_dict(), "dtype": str(stored).removeprefix("torch."), **(info or {})}
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG).unlink(missing_ok=True)  # from here on the folder reads as incomplete until the end
    with storage.atomic_path(path / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    storage.atomic_write(path / CONFIG, json.dumps(record, indent=1, sort_keys=True))
    return path


def save_pretrained(model: Nuwa, path: str | Path, info: dict | None = None, force: bool = False) -> Path:
    """Export a live model (its current dtype) with optional provenance `info`."""
    return save_state(model.state_dict(), model.config, path, info=info, force=force)


def read_info(path: str | Path) -> dict:
    """The folder's config.json: model config, dtype and provenance (tokenizer, VQ-GAN, step)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model folder")
    file = path / CONFIG
    if not file.is_file():
        hint = " (an interrupted export: convert again)" if (path / WEIGHTS).exists() else ""
        raise FileNotFoundError(f"{path} has no {CONFIG}{hint}; make one with tools/convert_checkpoint.py "
                                f"to-safetensors")
    try:
        info = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: unreadable ({e})") from e
    if info.get("format") != FORMAT:
        raise ValueError(f"{file}: format {info.get('format')!r}, expected {FORMAT!r}")
    return info


def load_pretrained(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Nuwa:
    """A ready model (eval mode) from a model folder; `dtype` None keeps the stored precision."""
    path = Path(path)
    info = read_info(path)
    config = typed_config.from_dict(NuwaConfig, info["model"])
    weights = path / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{path} has no {WEIGHTS}")
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{weights}: unreadable safetensors file ({type(e).__name__}: {e})") from e
    check_state_dict(state, config, str(weights))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        model = Nuwa(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
