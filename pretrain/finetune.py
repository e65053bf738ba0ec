"""Fine-tuning: start a run from a converted model's weights (`trainer.init_from`), optionally frozen in part
(`optim.freeze`).

Weights only: the optimizer, the schedule and the data position start fresh, as a new run. The export
must mean the same ids and codes as the run's shards (tokenizer and VQ-GAN fingerprints). A parameter the
export lacks (a part the run adds, e.g. a sketch embedding) keeps its fresh initialisation and is listed; a
parameter of another shape, or one the run's model lacks, is refused by name.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

import torch
from safetensors.torch import load_file

from model.pretrained import WEIGHTS, read_info


def check_provenance(info: dict, folder: str, shards: dict) -> None:
    """The export's tokenizer and VQ-GAN are those that made every shard folder of the run."""
    for modality, shard in sorted(shards.items()):
        for field, what in (("tokenizer_fingerprint", "tokenizer"), ("vqgan_fingerprint", "VQ-GAN")):
            theirs, ours = info.get(field), shard.manifest.get(field)
            if theirs and ours and theirs != ours:
                raise ValueError(f"trainer.init_from {folder} was trained with another {what} ({field} {theirs}) "
                                 f"than the one that made {shard.folder} ({ours})")


def load_initial_weights(model: torch.nn.Module, folder: str, shards: dict) -> list[str]:
    """Copy the export's tensors into `model` (cast to its dtypes); returns the parameters the export lacks."""
    info = read_info(folder)
    check_provenance(info, folder, shards)
    state = load_file(str(Path(folder) / WEIGHTS))
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ValueError(f"trainer.init_from {folder} holds {len(unexpected)} tensors the run's model lacks "
                         f"({', '.join(unexpected[:5])}): a smaller model config than the export's?")
    wrong = [f"{name} {tuple(state[name].shape)} in the export, {tuple(tensor.shape)} here"
             for name, tensor in own.items() if name in state and state[name].shape != tensor.shape]
    if wrong:
        raise ValueError(f"trainer.init_from {folder}: shapes differ: {'; '.join(wrong)}")
    with torch.no_grad():
        for name, tensor in own.items():
            if name in state:
                tensor.copy_(state[name])
    return sorted(set(own) - set(state))


def model_differences(info: dict, run_model: dict) -> list[str]:
    """Model config fields where the run differs from the export (shapes aside, e.g. windows or rotary)."""
    theirs = info.get("model", {})
    return [f"{key}: {theirs.get(key)!r} → {value!r}" for key, value in sorted(run_model.items())
            if key in theirs and theirs[key] != value]


def freeze(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Stop gradients to the parameters whose names match any pattern (fnmatch); returns their names.
    A pattern that matches nothing is refused (a typo would otherwise train everything)."""
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ValueError(f"optim.freeze: {pattern!r} matches no parameter (e.g. {', '.join(names[:3])})")
    frozen = [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return frozen
