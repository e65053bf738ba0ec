"""The multi-task DeepSpeed trainer: build the parts, run the loop, checkpoint, stop cleanly.

`Trainer(config, resume).train()` is what `pretrain/main.py` runs. The engine's `backward` and
`step` are called in exactly one place, `Trainer.micro_step`.
"""
from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from model.nuwa import Nuwa
from model.sampling import SamplingConfig, generate
from model.tasks import keep_first_frames
from model.vqgan import VQGAN
from preprocess.readers import model_to_uint8
from pretrain import checkpoint
from pretrain.config import PretrainConfig
from pretrain.data import MultiTaskData, StreamState, TaskDataset, open_datasets, task_at, tokens_per_sample
from pretrain.distributed import init_distributed
from pretrain.metrics import MetricLogger
from pretrain.optim import build_optimizer, lr_multiplier

ENGINE_KEYS = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
               "scheduler", "gradient_clipping", "bf16", "fp16"}


def engine_config(config: PretrainConfig, world_size: int, tasks: set[str], load_universal: bool = False) -> dict:
    """The DeepSpeed JSON (engine knobs) plus what the trainer owns: batch sizes, clipping, precision.

    `load_universal` (resuming from a universal checkpoint) sets DeepSpeed's `checkpoint.load_universal`;
    the weights then come back through the ZeRO optimizer, so it needs ZeRO stage ≥ 1.
    """
    path = Path(config.trainer.ds_config)
    if not path.is_file():
        raise FileNotFoundError(f"trainer.ds_config: {path} does not exist")
    ds = json.loads(path.read_text())
    owned = sorted(ENGINE_KEYS & ds.keys())
    if owned:
        raise ValueError(f"{path} sets {owned}: batch sizes, optimizer, clipping and precision come from the "
                         f"trainer config (data.micro_batch, trainer.grad_accum, optim.*, trainer.precision)")
    micro = max(config.data.micro_batch[t] for t in tasks)  # nominal: each task has its own micro-batch
    ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=config.trainer.grad_accum,
              train_batch_size=micro * config.trainer.grad_accum * world_size,
              gradient_clipping=config.optim.grad_clip, steps_per_print=2**31 - 1,
              bf16={"enabled": config.trainer.precision == "bf16"},
              fp16={"enabled": config.trainer.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16})
    if load_universal:
        if ds.get("zero_optimization", {}).get("stage", 0) < 1:
            raise ValueError(f"{path}: a universal checkpoint is loaded through the ZeRO optimizer; resume it with "
                             f"zero_optimization.stage 1, 2 or 3")
        ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    return ds


class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop finishes the step, saves and exits 0."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


class SampleLogger:
    """Generates T2I/T2V/V2V samples of fixed training captions/videos and decodes them with the VQ-GAN.

    Every rank runs the generation in lockstep (ZeRO-3 gathers parameters collectively); rank 0 logs.
    """

    def __init__(self, vqgan_path: str, datasets: dict[str, TaskDataset], shards: dict, model_config, device):
        self.vqgan = VQGAN.from_pretrained(vqgan_path).to(device).eval()
        for modality, shard in shards.items():
            if shard.manifest["vqgan_fingerprint"] != self.vqgan.fingerprint():
                raise ValueError(f"trainer.vqgan {vqgan_path} is not the VQ-GAN that coded {shard.folder}")
        self.requests = []  # (name, text [1, L], grid, reference codes or None, keep mask or None)
        for task, dataset in sorted(datasets.items()):
            sample = dataset[0]
            grid = model_config.image_grid if task == "t2i" else model_config.video_grid
            keep = keep_first_frames(grid, 1) if task == "v2v" else None
            reference = sample["codes"][None] if task == "v2v" else None
            self.requests.append((task, sample["text"][None].to(device), grid, reference, keep))

    @torch.no_grad()
    def generate(self, model: Nuwa) -> dict[str, torch.Tensor]:
        """name → uint8 images [N, 3, H, W] (a video's frames as N)."""
        model.eval()
        images = {}
        for task, text, grid, reference, keep in self.requests:
            codes = generate(model, text, grid, reference=reference, keep=keep, sampling=SamplingConfig(top_k=32),
                             generator=torch.Generator(device=text.device).manual_seed(0))
            pixels = self.vqgan.decode_video(codes)[0]  # (T, 3, H, W) in [-1, 1]
            images[f"samples/{task}"] = model_to_uint8(pixels).cpu()
        model.train()
        return images


class Trainer:
    def __init__(self, config: PretrainConfig, resume: str | None = None):
        self.config = config
        cfg, trainer = config, config.trainer
        resume_dir = checkpoint.resolve(resume, trainer.output_dir)
        if resume_dir is not None:  # refuse a foreign checkpoint before building anything
            checkpoint.check_same_model(checkpoint.read_marker(resume_dir)["config"]["model"], cfg.model.to_dict(),
                                        resume_dir)
        shards, self.datasets = open_datasets(cfg)
        self.tasks = set(self.datasets)
        self.tokens_per_sample = {t: tokens_per_sample(cfg, t) for t in self.tasks}

        self.rank, self.world_size, self.device = init_distributed(timeout_s=trainer.timeout_s)
        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())

        torch.manual_seed(trainer.seed)
        model = Nuwa(cfg.model)
        ds = engine_config(cfg, self.world_size, self.tasks,
                           load_universal=resume_dir is not None and checkpoint.is_universal(resume_dir))
        offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") != "none"
        optimizer = build_optimizer(model, cfg.optim, self.device, offload=offload)
        schedule = lr_multiplier(cfg.optim, trainer.steps)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))

        self.state = checkpoint.TrainState()
        if resume_dir is not None:
            self.state = checkpoint.load(self.engine, resume_dir, cfg.model.to_dict())
        elif resume == "auto" and self.rank == 0:
            print(f"--resume auto: no checkpoint in {checkpoint.checkpoint_dir(trainer.output_dir)}, starting fresh")
        self.data = MultiTaskData(self.datasets, cfg.data, trainer.seed, StreamState(self.state.consumed),
                                  self.rank, self.world_size)
        if self.rank == 0:
            Path(trainer.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(trainer.output_dir) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        self.stop = StopRequested()
        self.samples = None
        if trainer.sample_every > 0:
            self.samples = SampleLogger(trainer.vqgan, self.datasets, shards, cfg.model, self.device)

    def all_reduce(self, values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def micro_step(self, task: str) -> float | None:
        """Forward, backward and (at the accumulation boundary) the optimizer step of one micro-batch.

        Returns the loss averaged over ranks, or None when it was NaN/inf on any rank and the
        batch was skipped (`trainer.nan_policy: skip`).
        """
        # Dropout randomness is a function of (seed, micro-step, rank): resume needs no RNG state.
        torch.manual_seed(int(np.random.SeedSequence([self.config.trainer.seed, self.state.micro_step,
                                                      self.rank]).generate_state(1)[0]))
        batch = self.data.next_batch(task)
        self.state.micro_step += 1
        text, codes = batch["text"].to(self.device), batch["codes"].to(self.device)
        _, loss = self.engine(text, codes)
        (loss_sum,) = self.all_reduce([loss.item()])
        if not math.isfinite(loss_sum):
            where = f"step {self.state.step + 1}, micro-step {self.state.micro_step - 1}, task {task}"
            if self.config.trainer.nan_policy == "stop":
                raise FloatingPointError(f"non-finite loss at {where}; stopping (trainer.nan_policy: stop)")
            self.state.skipped_batches += 1
            return None
        self.engine.backward(loss)
        self.engine.step()
        self.state.tokens_seen += codes.numel() * self.world_size
        return loss_sum / self.world_size

    def train_step(self) -> dict:
        """One optimizer step: grad_accum good micro-steps, each of the task the sequence draws."""
        losses: dict[str, list[float]] = {}
        samples = tokens = skipped_in_a_row = 0
        while sum(len(v) for v in losses.values()) < self.config.trainer.grad_accum:
            task = task_at(self.config.data, self.config.trainer.seed, self.state.step, self.state.micro_step)
            micro_batch = self.config.data.micro_batch[task]
            loss = self.micro_step(task)
            if loss is None:
                skipped_in_a_row += 1
                if skipped_in_a_row >= self.config.trainer.max_consecutive_skips:
                    raise FloatingPointError(f"{skipped_in_a_row} non-finite losses in a row at step "
                                             f"{self.state.step + 1}; stopping")
                continue
            skipped_in_a_row = 0
            losses.setdefault(task, []).append(loss)
            samples += micro_batch * self.world_size
            tokens += micro_batch * self.world_size * self.tokens_per_sample[task]
        self.state.step += 1
        return {"losses": losses, "samples": samples, "tokens": tokens}

    def save(self) -> Path:
        return checkpoint.save(self.engine, self.config.trainer.output_dir, self.state, self.config.to_dict(),
                               self.config.trainer.keep_last)

    def train(self) -> str:
        trainer = self.config.trainer
        logger = MetricLogger(trainer.output_dir, self.state.step, trainer.steps, trainer.log_every, self.rank == 0,
                              desc="pretrain")
        self.engine.train()
        while self.state.step < trainer.steps:
            out = self.train_step()
            grad_norm = self.engine.get_global_grad_norm()
            losses = out["losses"]
            every = [x for v in losses.values() for x in v]
            logger.log_step(self.state.step, {"loss": sum(every) / len(every), "lr": self.scheduler.get_last_lr()[0],
                                              "grad_norm": None if grad_norm is None else float(grad_norm),
                                              **{f"loss/{task}": sum(v) / len(v) for task, v in losses.items()}},
                            {"samples": out["samples"], "tokens": out["tokens"]})
            (stop,) = self.all_reduce([float(self.stop.requested)], op=dist.ReduceOp.MAX)
            if stop or self.state.step % trainer.checkpoint_every == 0 or self.state.step == trainer.steps:
                path = self.save()
                logger.log_event(f"saved {path}")
            if stop:
                logger.log_event(f"stop requested: saved at step {self.state.step}, exiting")
                break
            if self.samples is not None and self.state.step % trainer.sample_every == 0:
                logger.log_images(self.state.step, self.samples.generate(self.engine.module))
        return logger.close()
