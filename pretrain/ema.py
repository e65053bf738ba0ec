"""An exponential moving average of the weights (`trainer.ema_decay`), kept in fp32 where ZeRO keeps them.

Under ZeRO-1/2 every rank holds the whole model, so every rank keeps the whole average (the same on
every rank) and rank 0 saves it. Under ZeRO-3 a rank holds only its partition of each parameter
(`param.ds_tensor`: the flattened parameter, padded to a multiple of the world size, cut into equal
slices), so each rank averages and saves its own slices, and `full_state` joins them. The average
follows the module's weights after each optimizer step (bf16 weights under bf16 training, the fp32
masters rounded once), accumulated in fp32.

Files: `{tag}/ema/rank-XXXXX.pt` (torch, tensors only, loaded with weights_only=True), one per rank
under ZeRO-3, one under ZeRO-1/2.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from model.storage import atomic_path, load_torch
from pretrain.errors import CheckpointError

FOLDER = "ema"


def rank_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / FOLDER / f"rank-{rank:05d}.pt"


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = dict(module.named_parameters())
        self.partitioned = any(hasattr(p, "ds_tensor") for p in self.params.values())
        self.values = {name: self.local(p).detach().float().clone() for name, p in self.params.items()}

    def local(self, param: torch.nn.Parameter) -> torch.Tensor:
        """What this rank holds of a parameter: its ZeRO-3 slice, or the whole tensor."""
        return param.ds_tensor if self.partitioned else param.data

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.values[name].lerp_(self.local(param).float(), 1 - self.decay)

    def save(self, tag_dir: Path, rank: int, world: int) -> None:
        """Collective caller: each rank that holds slices writes them (rank 0 alone when not partitioned)."""
        if not self.partitioned and rank != 0:
            return
        shapes = {name: list(getattr(p, "ds_shape", p.shape)) for name, p in self.params.items()}
        record = {"values": self.values, "shapes": shapes, "world": world if self.partitioned else 1}
        (tag_dir / FOLDER).mkdir(exist_ok=True)
        with atomic_path(rank_file(tag_dir, rank)) as tmp:
            torch.save(record, tmp)

    def load(self, tag_dir: Path, rank: int, world: int) -> bool:
        """Continue the average saved in a tag; False when the tag has none (it then starts from the weights).
        A tag saved by another number of ZeRO-3 ranks (or another stage) is joined and cut anew."""
        if not (tag_dir / FOLDER).is_dir():
            return False
        head = load_torch(rank_file(tag_dir, 0))
        if head["world"] == (world if self.partitioned else 1):
            values = load_torch(rank_file(tag_dir, rank))["values"] if self.partitioned else head["values"]
        else:
            values = {name: self.cut(value, self.values.get(name), rank, world)
                      for name, value in full_state(tag_dir).items()}
        if values.keys() != self.values.keys():
            raise CheckpointError(f"{tag_dir / FOLDER} holds the average of other parameters than this model's")
        for name, value in values.items():
            self.values[name].copy_(value)
        return True

    def cut(self, full: torch.Tensor, mine: torch.Tensor | None, rank: int, world: int) -> torch.Tensor:
        """This rank's part of a whole averaged parameter: its ZeRO-3 slice, or all of it."""
        if mine is None or not self.partitioned:
            return full
        flat = full.reshape(-1)
        size = mine.numel()
        return torch.nn.functional.pad(flat, (0, size * world - flat.numel()))[rank * size:(rank + 1) * size]


def full_state(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The whole fp32 average of a tag, its ZeRO-3 slices joined (for export)."""
    first = rank_file(tag_dir, 0)
    if not first.is_file():
        raise CheckpointError(f"checkpoint {tag_dir} has no weight average (it was trained without "
                              f"trainer.ema_decay)")
    head = load_torch(first)
    records = [head] + [load_torch(rank_file(tag_dir, r)) for r in range(1, head["world"])]
    state = {}
    for name, shape in records[0]["shapes"].items():
        flat = torch.cat([record["values"][name].reshape(-1) for record in records])
        state[name] = flat[:math.prod(shape)].reshape(shape)
    return state
