"""Multi-task data for pre-training: task sequence, per-task sample streams, loaders.

The whole position of the data stream is `consumed[task]`, a global count of samples taken
from each task. Global position p of a task maps to sample `order[perm_e[p mod n]]` of epoch
e = p // n, with a permutation seeded by (seed, task, epoch); micro-step m of the run is task
`task_at(m)`, drawn from a generator seeded by (seed, m) with the weights in force at that
step. Both are pure functions of the config and the counts, identical on every rank, so a
resume — on any number of ranks — continues the same global sequence: each micro-step takes
the next world_size × micro_batch positions, rank r the r-th slice of them. Caption dropout
(which T2I/T2V positions train under the "None" text) and the roll of a video clip
(`roll_videos`) are functions of the position too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from preprocess.shards import ShardDataset
from preprocess.text import CaptionTokenizer
from pretrain.config import CAPTIONED_TASKS, SKETCH_TASKS, TASK_MODALITY, TASKS, DataConfig, PretrainConfig

TASK_IDS = {name: i for i, name in enumerate(TASKS)}


def weights_at(config: DataConfig, step: int) -> dict[str, float]:
    """Task weights of the last schedule stage that started at or before `step`."""
    stage = max((s for s in config.schedule if s.start_step <= step), key=lambda s: s.start_step)
    return {task: stage.weights.get(task, 0.0) for task in TASKS}


def task_at(config: DataConfig, seed: int, step: int, micro_step: int) -> str:
    """The task of global micro-step `micro_step` (drawn at optimizer step `step`)."""
    weights = weights_at(config, step)
    p = np.array([weights[t] for t in TASKS], dtype=np.float64)
    if p.sum() <= 0:
        raise ValueError(f"data.schedule gives every task weight 0 at step {step}")
    rng = np.random.default_rng([seed, micro_step])
    return TASKS[rng.choice(len(TASKS), p=p / p.sum())]


@dataclass
class StreamState:
    """The data position saved with every checkpoint."""
    consumed: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TASKS})


class TaskDataset(Dataset):
    """One task's view of a shard folder: which samples it may use, and what condition they carry."""

    def __init__(self, shards: ShardDataset, task: str, none_text: np.ndarray, frames: int | None = None):
        self.shards, self.task, self.frames = shards, task, frames
        lengths = shards.text_lengths()
        # T2I/T2V need a caption; V2V uses every video with the constant "None" condition; S2I/S2V every
        # sample's sketch (their text is "None" and unused).
        self.captioned = task in CAPTIONED_TASKS
        self.indices = np.flatnonzero(lengths > 0) if self.captioned else np.arange(len(lengths))
        self.none_text = torch.from_numpy(none_text.astype(np.int64))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        sample = self.shards[int(self.indices[i])]
        text = torch.from_numpy(sample["text"].astype(np.int64)) if self.captioned else self.none_text
        first = slice(self.frames)  # data.frames: the first N frames (None: all)
        item = {"codes": torch.from_numpy(sample["codes"][first].astype(np.int64)), "text": text}
        if self.task in SKETCH_TASKS:
            item["sketch"] = torch.from_numpy(sample["sketch"][first].astype(np.int64))
        return item


def caption_dropped(seed: int, task: str, positions: range, rate: float) -> torch.Tensor:
    """[len(positions)] bool: which global positions of a captioned task train under "None" instead,
    the unconditional model that classifier-free guidance (SamplingConfig.guidance) needs."""
    # The trailing 1 keeps these streams apart from the epoch permutations' [seed, task, epoch].
    return torch.tensor([np.random.default_rng([seed, TASK_IDS[task], p, 1]).random() < rate for p in positions],
                        dtype=torch.bool)


def roll_shifts(seed: int, task: str, positions: range, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """(rows, columns) to roll the clip at each global position by (`DataConfig.roll_videos`)."""
    # The trailing 2 keeps these streams apart from caption dropout's [seed, task, position, 1].
    rngs = (np.random.default_rng([seed, TASK_IDS[task], p, 2]) for p in positions)
    return [(int(rng.integers(grid[0])), int(rng.integers(grid[1]))) for rng in rngs]


class GlobalOrderSampler:
    """Yields this rank's index batches from global position `start` on, forever.

    Indices are positions into a TaskDataset; epochs reshuffle with (seed, task, epoch).
    """

    def __init__(self, size: int, task: str, seed: int, start: int, micro_batch: int, rank: int, world_size: int):
        if size == 0:
            raise ValueError(f"task {task} has no usable samples")
        self.size, self.task, self.seed = size, task, seed
        self.start, self.micro_batch, self.rank, self.world_size = start, micro_batch, rank, world_size
        self._epoch, self._perm = -1, None

    def position_to_index(self, position: int) -> int:
        epoch = position // self.size
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, TASK_IDS[self.task], epoch])
            self._epoch, self._perm = epoch, rng.permutation(self.size)
        return int(self._perm[position % self.size])

    def __iter__(self):
        position = self.start
        while True:
            first = position + self.rank * self.micro_batch
            yield [self.position_to_index(p) for p in range(first, first + self.micro_batch)]
            position += self.world_size * self.micro_batch


class MultiTaskData:
    """One loader per active task, each resumed at its consumed count; `next_batch(task)` advances it."""

    def __init__(self, datasets: dict[str, TaskDataset], config: DataConfig, seed: int, state: StreamState,
                 rank: int, world_size: int):
        self.config, self.state, self.seed, self.rank, self.world_size = config, state, seed, rank, world_size
        self._none_text = {task: dataset.none_text for task, dataset in datasets.items()}
        self._iterators = {}
        for task, dataset in datasets.items():
            sampler = GlobalOrderSampler(len(dataset), task, seed, state.consumed[task], config.micro_batch[task],
                                         rank, world_size)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                                persistent_workers=config.num_workers > 0,
                                prefetch_factor=2 if config.num_workers > 0 else None)
            self._iterators[task] = iter(loader)

    def next_batch(self, task: str) -> dict:
        if task not in self._iterators:
            raise ValueError(f"the schedule drew task {task} but no data was configured for it")
        batch = next(self._iterators[task])
        micro_batch = self.config.micro_batch[task]
        first = self.state.consumed[task] + self.rank * micro_batch  # this rank's first global position
        self.state.consumed[task] += self.world_size * micro_batch
        if task in CAPTIONED_TASKS and self.config.caption_dropout > 0:
            drop = caption_dropped(self.seed, task, range(first, first + micro_batch), self.config.caption_dropout)
            batch["text"][drop] = self._none_text[task]
        if TASK_MODALITY[task] == "video" and self.config.roll_videos:
            codes = batch["codes"]  # [B, S, H, W]
            shifts = roll_shifts(self.seed, task, range(first, first + micro_batch), codes.shape[-2:])
            for key in ("codes", "sketch"):  # a sketch lies on the code grid: it rolls with the clip
                if key in batch:
                    batch[key] = torch.stack([torch.roll(c, s, dims=(-2, -1)) for c, s in zip(batch[key], shifts)])
        return batch


def open_checked(folder: str, modality: str, model_config, tokenizer_fingerprint: str,
                 sketches: bool = False) -> ShardDataset:
    """A shard folder whose grid, codebook and tokenizer are the model's, holding samples; with `sketches`
    (a sketch task uses it) also sketch codes on the same grid from a VQ-GAN-Seg of the model's codebook."""
    shards = ShardDataset(folder)
    grid = model_config.image_grid if modality == "image" else model_config.video_grid
    shards.check_compatible({"grid": grid, "codebook_size": model_config.codebook_size,
                             "tokenizer_vocab_size": model_config.text_vocab_size,
                             "tokenizer_fingerprint": tokenizer_fingerprint})
    if len(shards) == 0:
        raise ValueError(f"{folder} holds no samples")
    if sketches:
        sketch = shards.manifest.get("sketch")
        if not sketch:
            raise ValueError(f"{folder} holds no sketch codes (S2I/S2V): tokenize it with --vqgan-seg")
        if list(sketch["grid"]) != list(grid) or sketch["codebook_size"] != model_config.sketch_codebook_size:
            raise ValueError(f"{folder}: sketch codes on grid {sketch['grid']} from a {sketch['codebook_size']}-code "
                             f"VQ-GAN-Seg; the model needs grid {list(grid)} and model.sketch_codebook_size "
                             f"{model_config.sketch_codebook_size}")
    return shards


def open_shards(config: DataConfig, model_config, tokenizer_fingerprint: str, tasks: set[str]) -> dict[str, ShardDataset]:
    """Open the shard folders the active tasks need and check them against the model config."""
    needed = {TASK_MODALITY[t] for t in tasks}
    folders = {"image": config.image_shards, "video": config.video_shards}
    opened = {}
    for modality in sorted(needed):
        if not folders[modality]:
            raise ValueError(f"data.{modality}_shards is empty but tasks {sorted(t for t in tasks if TASK_MODALITY[t] == modality)} "
                             f"have weight > 0")
        sketches = any(TASK_MODALITY[t] == modality for t in tasks & set(SKETCH_TASKS))
        opened[modality] = open_checked(folders[modality], modality, model_config, tokenizer_fingerprint, sketches)
    if len(opened) == 2 and opened["image"].manifest["vqgan_fingerprint"] != opened["video"].manifest["vqgan_fingerprint"]:
        raise ValueError(f"{config.image_shards} and {config.video_shards} were coded by different VQ-GANs "
                         f"({opened['image'].manifest['vqgan_fingerprint']} vs {opened['video'].manifest['vqgan_fingerprint']})")
    return opened


def active_tasks(config: DataConfig, steps: int) -> set[str]:
    """Tasks that have weight > 0 in any stage that starts before the run ends."""
    return {t for s in config.schedule if s.start_step < max(steps, 1) for t, w in s.weights.items() if w > 0}


def task_grid(config: PretrainConfig, task: str) -> tuple[int, int, int]:
    """The code grid a sample of `task` trains on (a video task with `data.frames` set: its first frames)."""
    frames, height, width = config.model.image_grid if TASK_MODALITY[task] == "image" else config.model.video_grid
    return config.data.frames.get(task, frames), height, width


def tokens_per_sample(config: PretrainConfig, task: str) -> int:
    return math.prod(task_grid(config, task))


def open_datasets(config: PretrainConfig) -> tuple[dict[str, ShardDataset], dict[str, TaskDataset]]:
    """(shards by modality, datasets by task) of the active tasks, the shards checked against the model
    config and the tokenizer."""
    tasks = active_tasks(config.data, config.trainer.steps)
    if not tasks:
        raise ValueError("data.schedule gives no task a weight > 0")
    if not config.data.tokenizer:
        raise ValueError("data.tokenizer is empty: give the sentencepiece model the shards were made with")
    tokenizer = CaptionTokenizer(config.data.tokenizer)
    shards = open_shards(config.data, config.model, tokenizer.fingerprint(), tasks)
    none_text, _ = tokenizer.encode_none()
    datasets = {t: TaskDataset(shards[TASK_MODALITY[t]], t, none_text, config.data.frames.get(t)) for t in sorted(tasks)}
    return shards, datasets
