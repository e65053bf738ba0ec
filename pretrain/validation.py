"""Held-out validation: the mean negative log-likelihood per code of each task, in nats.

The evaluation set of a task is the first `eval_batches × micro_batch` samples of its held-out shards
(the same on any number of ranks); micro-batch b goes to rank b mod world, every rank runs the same
number of forward passes (a rank with no batch left repeats its last one and drops it: ZeRO-3's
forward is collective), and the sums are all-reduced in float64. Video tasks also report frame 1 and
frames 2+ apart: the first frame is generated from the condition alone, the others mostly continue it.
The model runs in eval mode without gradients; training's randomness is seeded per micro-step, so
evaluating changes no training number.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from preprocess.text import CaptionTokenizer
from pretrain.config import SKETCH_TASKS, TASK_MODALITY, TASKS, PretrainConfig
from pretrain.data import TaskDataset, open_checked


def model_tasks(config: PretrainConfig) -> set[str]:
    """Every task the model can be evaluated on: the text tasks, and S2I/S2V when it has a sketch encoder."""
    return {t for t in TASKS if t not in SKETCH_TASKS or config.model.sketch_codebook_size}


def validation_sets(config: PretrainConfig, tasks: set[str], tokenizer: CaptionTokenizer) -> dict[str, TaskDataset]:
    """The held-out TaskDatasets of the tasks whose modality has `data.val_*_shards`, checked as training's are
    (an empty folder included)."""
    folders = {"image": config.data.val_image_shards, "video": config.data.val_video_shards}
    none_text, _ = tokenizer.encode_none()
    sets = {}
    for task in sorted(tasks):
        folder = folders[TASK_MODALITY[task]]
        if not folder:
            continue
        shards = open_checked(folder, TASK_MODALITY[task], config.model, tokenizer.fingerprint(), task in SKETCH_TASKS)
        sets[task] = TaskDataset(shards, task, none_text, config.data.frames.get(task))
    return sets


def _batch(dataset: TaskDataset, indices: range) -> dict[str, torch.Tensor]:
    samples = [dataset[i] for i in indices]
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


@torch.no_grad()
def evaluate(model: torch.nn.Module, sets: dict[str, TaskDataset], micro_batch: dict[str, int], batches: int,
             device: torch.device, rank: int = 0, world: int = 1) -> dict[str, float]:
    """{"val/{task}": nats per code, and for videos "val/{task}/frame1" and "val/{task}/frames2+"}."""
    was_training = model.training
    model.eval()
    results = {}
    for task, dataset in sorted(sets.items()):
        size = micro_batch[task]
        total = min(len(dataset), batches * size)
        starts = list(range(0, total, size))
        mine = starts[rank::world]
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # frame 1: nll, codes; frames 2+: nll, codes
        for turn in range(math.ceil(len(starts) / world)):
            start = mine[min(turn, len(mine) - 1)] if mine else starts[0]
            batch = _batch(dataset, range(start, min(start + size, total)))
            codes = batch["codes"].to(device)  # [B, S, H, W]
            sketch = batch["sketch"].to(device) if "sketch" in batch else None
            logits, _ = model(batch["text"].to(device), codes, sketch)
            nll = F.cross_entropy(logits.float().flatten(0, 1), codes.reshape(-1), reduction="none")
            nll = nll.view(codes.shape[0], codes.shape[1], -1).double()  # [B, S, H·W]
            if turn < len(mine):  # a repeated batch only keeps the collective forward passes in step
                sums += torch.stack([nll[:, 0].sum(), torch.tensor(nll[:, 0].numel(), device=device),
                                     nll[:, 1:].sum(), torch.tensor(nll[:, 1:].numel(), device=device)])
        if world > 1:
            dist.all_reduce(sums)
        first, first_n, rest, rest_n = sums.tolist()
        results[f"val/{task}"] = (first + rest) / max(first_n + rest_n, 1)
        if TASK_MODALITY[task] == "video" and rest_n:
            results[f"val/{task}/frame1"] = first / first_n
            results[f"val/{task}/frames2+"] = rest / rest_n
    model.train(was_training)
    return results


def describe(results: dict[str, float]) -> str:
    return ", ".join(f"{key.removeprefix('val/')} {value:.4f}" for key, value in results.items() if np.isfinite(value))
