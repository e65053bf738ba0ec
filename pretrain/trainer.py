"""The multi-task DeepSpeed trainer: build the parts, run the loop, checkpoint, stop cleanly.

`Trainer(config, resume).train()` is what `pretrain/main.py` runs. The engine's `backward` and
`step` are called in exactly one place, `Trainer.micro_step`.
"""
from __future__ import annotations

import json
import math
import resource
import signal
import time
from pathlib import Path

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from model.flops import peak_tflops, training_flops
from model.nuwa import Nuwa
from model.pretrained import read_info
from model.storage import atomic_write
from model.sampling import SamplingConfig, generate
from model.tasks import keep_first_frames
from model.vqgan import VQGAN
from preprocess.readers import model_to_uint8
from preprocess.text import CaptionTokenizer
from pretrain import checkpoint
from pretrain.config import SKETCH_TASKS, TASK_MODALITY, PretrainConfig
from pretrain.data import MultiTaskData, StreamState, TaskDataset, open_datasets, task_at, task_grid, tokens_per_sample
from pretrain.distributed import agree, init_distributed, release_shared_memory
from pretrain.ema import EMA
from pretrain.finetune import freeze, load_initial_weights, model_differences
from pretrain.errors import MISTAKES
from pretrain.metrics import MetricLogger
from pretrain.optim import build_optimizer, lr_multiplier
from pretrain.validation import describe, evaluate, validation_sets

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
        self.requests = []  # (name, text [1, L], grid, reference codes or None, keep mask or None, sketch or None)
        for task, dataset in sorted(datasets.items()):
            sample = dataset[0]
            grid = model_config.image_grid if TASK_MODALITY[task] == "image" else model_config.video_grid
            keep = keep_first_frames(grid, 1) if task == "v2v" else None
            reference = sample["codes"][None] if task == "v2v" else None
            sketch = sample["sketch"][None].to(device) if "sketch" in sample else None
            self.requests.append((task, sample["text"][None].to(device), grid, reference, keep, sketch))

    @torch.no_grad()
    def generate(self, model: Nuwa) -> dict[str, torch.Tensor]:
        """name → uint8 images [N, 3, H, W] (a video's frames as N)."""
        model.eval()
        images = {}
        for task, text, grid, reference, keep, sketch in self.requests:
            codes = generate(model, text, grid, reference=reference, keep=keep, sampling=SamplingConfig(top_k=32),
                             generator=torch.Generator(device=text.device).manual_seed(0), sketch=sketch)
            pixels = self.vqgan.decode_video(codes)[0]  # (T, 3, H, W) in [-1, 1]
            images[f"samples/{task}"] = model_to_uint8(pixels).cpu()
        model.train()
        return images


class Trainer:
    def __init__(self, config: PretrainConfig, resume: str | None = None):
        self.config = config
        cfg, trainer = config, config.trainer
        self.rank, self.world_size, self.device = init_distributed(timeout_s=trainer.timeout_s)
        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
        release_shared_memory(self.rank)
        # Every decision that could differ by rank is agreed (pretrain/distributed.py's `agree`).
        shards, self.datasets = agree(lambda: open_datasets(cfg), MISTAKES)
        self.tasks = set(self.datasets)
        self.tokens_per_sample = {t: tokens_per_sample(cfg, t) for t in self.tasks}
        self.flops_per_sample = {t: training_flops(cfg.model, task_grid(cfg, t), t in SKETCH_TASKS) for t in self.tasks}
        resume_dir = checkpoint.choose(resume, trainer.output_dir, self.say)
        if resume_dir is not None:  # refuse a foreign checkpoint before building anything
            agree(lambda: checkpoint.check_same_model(checkpoint.read_marker(resume_dir)["config"]["model"],
                                                      cfg.model.to_dict(), resume_dir), MISTAKES)

        torch.manual_seed(trainer.seed)
        model = Nuwa(cfg.model)
        if trainer.init_from and resume_dir is None:
            fresh = agree(lambda: load_initial_weights(model, trainer.init_from, shards), MISTAKES)
            loaded = len(model.state_dict()) - len(fresh)
            self.say(f"init_from {trainer.init_from}: {loaded} tensors loaded"
                     + (f", {len(fresh)} initialised fresh: {', '.join(fresh)}" if fresh else ""))
            changed = model_differences(read_info(trainer.init_from), cfg.model.to_dict())
            if changed:
                self.say(f"init_from: the run's model config differs from the export's in {'; '.join(changed)}")
        elif trainer.init_from:
            self.say(f"trainer.init_from ignored: resuming from {resume_dir}")
        if cfg.optim.freeze:
            frozen = agree(lambda: freeze(model, cfg.optim.freeze), MISTAKES)
            self.say(f"optim.freeze: {len(frozen)} parameters frozen")
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
            self.state = agree(lambda: checkpoint.load(self.engine, resume_dir, cfg.model.to_dict()), MISTAKES)
            self.say(f"resumed from {resume_dir} at step {self.state.step}")
        elif resume == "auto":
            self.say(f"--resume auto: no checkpoint in {checkpoint.checkpoint_dir(trainer.output_dir)}, starting fresh")
        self.ema = EMA(self.engine.module, trainer.ema_decay) if trainer.ema_decay > 0 else None
        self.finite = None  # nan_policy skip: whether the micro-batch in backward may pass its gradients
        if trainer.nan_policy == "skip":
            self.finite = torch.ones((), dtype=torch.bool, device=self.device)
            for parameter in self.engine.module.parameters():
                if parameter.requires_grad:
                    parameter.register_hook(self._keep_if_finite)
        if self.ema is not None and resume_dir is not None:
            if not agree(lambda: self.ema.load(resume_dir, self.rank, self.world_size), MISTAKES):
                self.say(f"{resume_dir} has no weight average: trainer.ema_decay starts it from these weights")
        self.data = MultiTaskData(self.datasets, cfg.data, trainer.seed, StreamState(self.state.consumed),
                                  self.rank, self.world_size)
        if self.rank == 0:
            Path(trainer.output_dir).mkdir(parents=True, exist_ok=True)
            atomic_write(Path(trainer.output_dir) / "config.json", json.dumps(cfg.to_dict(), indent=1))
        self.stop = StopRequested()
        self.data_wait = 0.0  # seconds this step spent waiting for batches
        self.validation = agree(lambda: validation_sets(cfg, self.tasks, CaptionTokenizer(cfg.data.tokenizer)),
                                MISTAKES)
        self.samples = None
        if trainer.sample_every > 0:
            self.samples = SampleLogger(trainer.vqgan, self.datasets, shards, cfg.model, self.device)

    def say(self, message: str) -> None:
        if self.rank == 0:
            print(message, flush=True)

    def all_reduce(self, values: list | torch.Tensor, op=dist.ReduceOp.SUM) -> list[float]:
        """Sum (or `op`) over ranks, brought to the host: the one place the loop waits for the device."""
        tensor = (values if torch.is_tensor(values) else torch.tensor(values)).to(self.device, torch.float64)
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def forward(self, task: str) -> torch.Tensor:
        """The loss of the next micro-batch of `task` (on the device; nothing waits for it)."""
        # Dropout randomness is a function of (seed, micro-step, rank): resume needs no RNG state.
        torch.manual_seed(int(np.random.SeedSequence([self.config.trainer.seed, self.state.micro_step,
                                                      self.rank]).generate_state(1)[0]))
        started = time.perf_counter()
        batch = self.data.next_batch(task)
        self.data_wait += time.perf_counter() - started
        self.state.micro_step += 1
        text, codes = self.to_device(batch["text"]), self.to_device(batch["codes"])
        sketch = self.to_device(batch["sketch"]) if "sketch" in batch else None  # S2I, S2V
        self.state.tokens_seen += codes.numel() * self.world_size
        return self.engine(text, codes, sketch)[1]

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch tensor on the device; on CUDA through pinned memory, so the copy does not make the host wait."""
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def backward(self, loss: torch.Tensor, boundary: bool, finite: bool = False) -> None:
        """Backpropagate one micro-batch; `boundary` closes the step's accumulation (DeepSpeed reduces and
        the next engine.step() updates). Under `skip` a micro-batch not yet judged by the host passes its
        gradients only if its loss is finite on every rank: the flag is reduced on the device, nothing waits."""
        if self.finite is not None:
            if finite or boundary:
                self.finite.fill_(True)
            else:
                ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
                dist.all_reduce(ok, op=dist.ReduceOp.MIN)
                self.finite.copy_(ok[0] > 0)
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss)
        if not boundary:
            self.engine.step()  # not the accumulation boundary: DeepSpeed's bookkeeping only

    def _keep_if_finite(self, grad: torch.Tensor) -> torch.Tensor:
        """A parameter's gradient from this backward, or zeros when the micro-batch's loss was not finite (NaN
        times zero is NaN, so the loss cannot simply be scaled away)."""
        return torch.where(self.finite, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))

    def train_step(self) -> dict:
        """One optimizer step: grad_accum micro-steps, each of the task the sequence draws, then the update.

        The host waits for the device once per step, before the last micro-batch's backward: one
        all-reduce of the losses not yet judged tells every rank the same losses and which were NaN/inf.
        Under `trainer.nan_policy: skip` the earlier micro-batches are backpropagated before that point,
        their gradients passed on only if every rank's loss was finite (a flag all-reduced and applied on
        the device, `_keep_if_finite`), and each bad one is replaced by the next micro-batch (another
        wait, in steps that had one): the step averages grad_accum finite micro-batches, exactly as if
        the bad ones had never been drawn.
        """
        trainer = self.config.trainer
        done: list[tuple[str, int, float]] = []  # (task, micro-step, loss summed over ranks) whose gradients count
        unjudged: list[tuple[str, int, torch.Tensor]] = []  # backpropagated, not yet seen by the host
        skipped_in_a_row = 0
        while True:
            task = task_at(self.config.data, trainer.seed, self.state.step, self.state.micro_step)
            loss = self.forward(task)
            entry = (task, self.state.micro_step - 1, loss.detach())
            if len(done) + len(unjudged) + 1 < trainer.grad_accum:
                self.backward(loss, boundary=False)
                unjudged.append(entry)
                continue
            judged, unjudged = [*unjudged, entry], []
            values = self.all_reduce(torch.stack([value for _, _, value in judged]))
            bad = [f"micro-step {m} ({task})" for (task, m, _), value in zip(judged, values)
                   if not math.isfinite(value)]
            if bad and trainer.nan_policy == "stop":
                raise FloatingPointError(f"non-finite loss at step {self.state.step + 1}, {', '.join(bad)}; stopping "
                                         f"before the update (trainer.nan_policy: stop)")
            for (task, m, _), value in zip(judged, values):
                if math.isfinite(value):
                    done.append((task, m, value))
                    skipped_in_a_row = 0
                    continue
                self.state.skipped_batches += 1
                skipped_in_a_row += 1
                if skipped_in_a_row >= trainer.max_consecutive_skips:
                    raise FloatingPointError(f"{skipped_in_a_row} non-finite losses in a row at step "
                                             f"{self.state.step + 1}; stopping")
            if len(done) == trainer.grad_accum:  # the last micro-batch is among them: it closes the step
                self.backward(loss, boundary=True)
                break
            if math.isfinite(values[-1]):
                self.backward(loss, boundary=False, finite=True)
        self.engine.step()
        if self.ema is not None:
            self.ema.update()
        self.state.step += 1
        by_task: dict[str, list[float]] = {}
        for task, _, value in done:
            by_task.setdefault(task, []).append(value / self.world_size)
        samples = {t: len(v) * self.config.data.micro_batch[t] * self.world_size for t, v in by_task.items()}
        return {"losses": by_task, "samples": samples}

    def save(self) -> Path:
        return checkpoint.save(self.engine, self.config.trainer.output_dir, self.state, self.config.to_dict(),
                               self.config.trainer.keep_last, self.ema)

    def validate(self) -> dict[str, float]:
        """Held-out NLL per task (pretrain/validation.py), the same on every rank."""
        return evaluate(self.engine.module, self.validation, self.config.data.micro_batch,
                        self.config.trainer.eval_batches, self.device, self.rank, self.world_size)

    def peak_flops(self) -> float | None:
        """The hardware's peak FLOP/s per rank for MFU: trainer.peak_tflops, else the table's by GPU name."""
        if self.config.trainer.peak_tflops > 0:
            return self.config.trainer.peak_tflops * 1e12
        if self.device.type == "cuda" and self.config.trainer.precision != "fp32":
            peak = peak_tflops(torch.cuda.get_device_name(self.device))
            return None if peak is None else peak * 1e12
        return None

    def telemetry(self, samples: dict[str, int], seconds: float, data_wait: float) -> dict:
        """Step time, the fraction of it spent waiting for data, MFU and peak memory."""
        peak = self.peak_flops()
        flops = sum(n * self.flops_per_sample[t] for t, n in samples.items())
        gpu = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        return {"step_time_s": seconds, "data_wait": data_wait / seconds,
                "mfu": None if peak is None else flops / seconds / (peak * self.world_size),
                "memory/gpu_peak_gib": gpu,
                "memory/cpu_rss_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}

    def train(self) -> str:
        """Run to `trainer.steps` or a stop request; returns the summary line."""
        trainer = self.config.trainer
        logger = MetricLogger(trainer.output_dir, self.state.step, trainer.steps, trainer.log_every, self.rank == 0,
                              desc="pretrain", show=("loss", "lr", "mfu"), summary=("samples", "tokens"))
        self.engine.train()
        try:
            while self.state.step < trainer.steps and not self.step_and_log(logger):
                pass
        except BaseException:
            logger.abort()
            raise
        return logger.close()

    def step_and_log(self, logger: MetricLogger) -> bool:
        """One optimizer step, its metrics, checkpoint and samples; True when a stop request ended the run."""
        trainer = self.config.trainer
        started, self.data_wait = time.perf_counter(), 0.0
        out = self.train_step()
        grad_norm = self.engine.get_global_grad_norm()
        losses, samples = out["losses"], out["samples"]
        every = [x for v in losses.values() for x in v]
        tokens = {f"tokens_{t}": n * self.tokens_per_sample[t] for t, n in samples.items()}
        step_time = time.perf_counter() - started
        due = trainer.eval_every and self.state.step % trainer.eval_every == 0
        held_out = self.validate() if self.validation and (due or self.state.step == trainer.steps) else {}
        if held_out:
            logger.log_event(f"step {self.state.step} held-out nats per code: {describe(held_out)}")
        logger.log_step(self.state.step,
                        {"loss": sum(every) / len(every), "lr": self.scheduler.get_last_lr()[0],
                         "grad_norm": None if grad_norm is None else float(grad_norm),
                         **{f"loss/{task}": sum(v) / len(v) for task, v in losses.items()},
                         **self.telemetry(samples, step_time, self.data_wait), **held_out},
                        {"samples": sum(samples.values()), **tokens, "tokens": sum(tokens.values())})
        (stop,) = self.all_reduce([float(self.stop.requested)], op=dist.ReduceOp.MAX)
        if stop or self.state.step % trainer.checkpoint_every == 0 or self.state.step == trainer.steps:
            logger.log_event(f"saved {self.save()}")
        if stop:
            logger.log_event(f"stop requested: saved at step {self.state.step}, exiting")
            return True
        if self.samples is not None and self.state.step % trainer.sample_every == 0:
            logger.log_images(self.state.step, self.samples.generate(self.engine.module))
        return False
