"""VQ-GAN training: reconstruction L1 + LPIPS + hinge PatchGAN with the adaptive weight (paper Eq. 4-5).

`python pretrain/train_vqgan.py --config X.yaml [--section.key value ...] [--resume auto|PATH]` wires
the pieces below: typed config → data stream → models and optimizers → `train_step` in a loop →
logging, checkpoints, dead-code restarts → `save_pretrained`. One process, or DDP via torchrun
(gloo on CPU, NCCL on GPU); `trainer.batch_size` is per process.

Pixels come through preprocess/readers.py, exactly as tokenization reads them (decode, short side
to `model.resolution`, centre crop): images from webdataset tars or CSV/JSONL index files, and
the frames of video clips sampled at `data.clip_fps`. Inputs that cannot be decoded are logged
with the reason and skipped.

The perceptual loss (LPIPS, a VGG16) costs several times a small VQ-GAN's step on a CPU
(docs/vqgan.md); CPU runs may prefer `loss.perceptual_weight: 0`.

Run folder and checkpoints follow the pre-training trainer's conventions (pretrain/checkpoint.py):
`{output_dir}/checkpoints/step-XXXXXXXX/` holds `vqgan/` (a `save_pretrained` folder, usable as
it is), `discriminator.safetensors`, `train_state.pt` (optimizers, code usage, every rank's RNG;
loaded with weights_only=True) and, written last, `trainer_state.json` (step and the resolved
config). `--resume auto|PATH`; the newest `trainer.keep_last` complete tags are kept; TensorBoard
in `tb/`, every step in `metrics.jsonl`. Resuming restores weights, optimizers, step and RNG; the
data stream restarts as a fresh seeded permutation for that step (a tokenizer does not need the
exact sample sequence back). The result is `{output_dir}/final` (VQGAN.from_pretrained).
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from model import typed_config
from model.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss
from model.lpips import LPIPS, load_lpips
from model.storage import atomic_write, load_checked, load_torch, remove
from model.vqgan import VQGAN, VQGANConfig
from preprocess.readers import (INDEX_SUFFIXES, TAR_SUFFIXES, ClipSampling, InputUnit, Skip, SkipInput, image_pixels,
                                iter_unit, label_map, list_units, uint8_to_model, video_clips)
from pretrain import checkpoint
from pretrain.distributed import agree, init_distributed
from pretrain.errors import MISTAKES
from pretrain.metrics import MetricLogger
from pretrain.finetune import freeze
from pretrain.optim import OptimConfig, build_optimizer, lr_multiplier

log = logging.getLogger("train_vqgan")


# ----------------------------------------------------------------------------- config

@dataclass
class DataConfig:
    """Where the training pixels come from (read with preprocess/readers.py, as preprocessing does)."""
    paths: list[str] = field(default_factory=list)
    """Image inputs: webdataset tars, CSV/JSONL index files (path,caption), or folders holding them."""
    video_paths: list[str] = field(default_factory=list)
    """Video inputs, same forms; every frame of each sampled clip becomes a training image."""
    clip_frames: int = 10
    """Frames per video clip (the paper's 10, as tokenization samples them)."""
    clip_fps: float = 2.5
    """Frame rate of the clip sampling (the paper's 2.5 fps)."""
    rows_per_unit: int = 256
    """Index-file rows per input unit (a tar is always one unit); units are what ranks and workers split."""
    flip: bool = True
    """Random horizontal flips (augmentation)."""
    shuffle_buffer: int = 256
    """Images held per loader worker for shuffling across units."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 = decode in the training process)."""


@dataclass
class LossConfig:
    """Weights of the VQ-GAN objective (taming's defaults where it has them)."""
    pixel_weight: float = 1.0
    """Pixel reconstruction weight."""
    pixel_loss: Literal["l1", "l2"] = "l1"
    """"l1" (taming's) or "l2": squared error pushes hardest on the largest errors, which at small
    scale (few steps, small objects on flat backgrounds) is what teaches the objects' colours."""
    perceptual_weight: float = 1.0
    """LPIPS weight (0 = off)."""
    lpips_weights: str = "auto"
    """"auto" (stlpips-pytorch's file if installed), "none", or comma-separated LPIPS weight files."""
    codebook_weight: float = 1.0
    """Weight of the VQ loss (codebook + beta·commitment)."""
    disc_weight: float = 0.8
    """Scale of the adaptive weight λ of the generator's adversarial loss."""
    disc_start: int = 10000
    """Step at which the discriminator and the adversarial loss switch on (autoencoder warm-up before)."""
    disc_channels: int = 64
    """Width of the first discriminator layer."""
    disc_layers: int = 3
    """Stride-2 layers of the PatchGAN (3 = 70×70 patches; use 2 for 32-64 px images)."""


@dataclass
class VQGANOptimConfig(OptimConfig):
    """Adam for the autoencoder and the discriminator (taming's settings by default)."""
    lr: float = 1e-4
    """Learning rate of the autoencoder."""
    disc_lr: float = 1e-4
    """Learning rate of the discriminator."""
    betas: tuple[float, float] = (0.5, 0.9)
    """Adam's moment decay rates (taming's)."""
    weight_decay: float = 0.0
    """AdamW decay on weight matrices (taming uses none)."""
    warmup_fraction: float = 0.0
    """Linear warm-up over this fraction of the steps (0: none)."""
    decay: Literal["cosine", "linear", "constant"] = "constant"
    """"constant" (taming's), or "cosine"/"linear" down to lr × min_lr_ratio at the last step, which
    settles the codebook of a short run."""


@dataclass
class VQGANTrainerConfig:
    """Steps, batch, precision, logging and checkpointing (the same names as pre-training's `trainer`)."""
    steps: int = 100000
    """Optimizer steps in total."""
    batch_size: int = 8
    """Images per process per step."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 runs the networks under autocast; the codebook search always runs in fp32."""
    restart_every: int = 200
    """Steps between dead-code restarts (0 = off)."""
    restart_min_count: int = 1
    """A code chosen fewer times than this since the last restart is moved onto an encoder output."""
    seed: int = 0
    """Seed of initialisation, data order and restarts."""
    log_every: int = 50
    """Steps between TensorBoard scalars and progress-bar updates (metrics.jsonl gets every step)."""
    sample_every: int = 500
    """Steps between TensorBoard grids of reconstructions (0 = never)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (the last step always saves)."""
    keep_last: int = 2
    """Newest complete checkpoints kept; older ones are deleted."""
    output_dir: str = "runs/vqgan"
    """Run folder: config.json, metrics.jsonl, tb/, checkpoints/, final/."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """"auto" (CUDA if available), "cpu" or "cuda"."""
    init: str = ""
    """Optional starting weights: a save_pretrained folder or a taming-transformers .ckpt."""
    timeout_s: float = 1800.0
    """Seconds a collective may wait for the other ranks before it fails (so a dead rank ends the job)."""

    def __post_init__(self):
        typed_config.check_at_least(self, "trainer", 1, "steps", "batch_size", "checkpoint_every", "log_every",
                                    "restart_min_count")
        typed_config.check_at_least(self, "trainer", 0, "keep_last", "sample_every", "restart_every")
        typed_config.check_at_least(self, "trainer", 1e-3, "timeout_s")


@dataclass
class VQGANTrainingConfig:
    """Everything `train_vqgan.py` reads; `model` holds overrides on top of the named preset."""
    preset: str = "tiny"
    """VQ-GAN preset (see VQGANConfig.from_preset) that the model section starts from."""
    model: VQGANConfig = field(default_factory=VQGANConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: VQGANOptimConfig = field(default_factory=VQGANOptimConfig)
    trainer: VQGANTrainerConfig = field(default_factory=VQGANTrainerConfig)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> VQGANTrainingConfig:
    """preset ← config file ← `--section.key value` overrides, validated strictly."""
    raw = typed_config.merge(typed_config.read_file(path) if path else {},
                             typed_config.parse_overrides(overrides or []))
    preset = VQGANConfig.from_preset(raw.get("preset", VQGANTrainingConfig.preset))
    return typed_config.load(VQGANTrainingConfig, path, overrides, base={"model": typed_config.to_dict(preset)})


# ----------------------------------------------------------------------------- data

def list_inputs(paths: list[str], modality: str, rows_per_unit: int) -> list[tuple[InputUnit, str]]:
    """(unit, modality) for every tar and index file in `paths`; a folder stands for the tars and
    index files inside it (recursively)."""
    files = []
    for path in paths:
        if Path(path).is_dir():
            found = sorted(str(p) for p in Path(path).rglob("*") if str(p).endswith(TAR_SUFFIXES + INDEX_SUFFIXES))
            if not found:
                raise ValueError(f"{path} holds no tars or CSV/JSONL index files (loose images need an index "
                                 "file of path,caption rows)")
            files += found
        else:
            files.append(path)
    return [(unit, modality) for unit in list_units(files, rows_per_unit)]


def training_units(data: DataConfig, segmentation: bool = False) -> list[tuple[InputUnit, str]]:
    """(unit, modality) of every image and video input the config names; a VQ-GAN-Seg reads the label maps
    of data.paths ({key}.seg.png in tars, or PNG label maps named by index files)."""
    if segmentation and data.video_paths:
        raise ValueError("a VQ-GAN-Seg trains on label maps (data.paths); video label maps are coded frame by "
                         "frame by the same model: leave data.video_paths empty")
    units = (list_inputs(data.paths, "seg" if segmentation else "image", data.rows_per_unit)
             + list_inputs(data.video_paths, "video", data.rows_per_unit))
    if not units:
        raise ValueError("no training data: set data.paths (images) and/or data.video_paths (videos)")
    return units


def read_frames(unit: InputUnit, modality: str, resolution: int, sampling: ClipSampling, num_classes: int = 0
                ) -> Iterator[np.ndarray | Skip]:
    """uint8 (3, resolution, resolution) frames of one unit (label maps: uint16 (resolution, resolution)), or a
    Skip for each input that gave none."""
    for item in iter_unit(unit, modality):
        if isinstance(item, Skip):
            yield item
            continue
        try:
            if modality == "seg":
                yield label_map(item.media, resolution, num_classes)
            elif modality == "image":
                yield image_pixels(item.media, resolution)
            else:
                for clip in video_clips(item.media, sampling, resolution):  # (T, 3, H, W)
                    yield from clip
        except SkipInput as e:
            yield Skip(item.key, e.reason, e.detail)


class FrameStream(IterableDataset):
    """Endless stream of float (3, size, size) images in [-1, 1] (label maps: int64 (size, size)), split over
    ranks and loader workers.

    With at least as many units as readers, each reader takes whole units; otherwise every reader
    walks all units and keeps every n-th frame. Inputs that cannot be decoded are logged with their
    reason and skipped. Epoch e shuffles the units with seed (seed, e).
    """

    def __init__(self, units: list[tuple[InputUnit, str]], size: int, sampling: ClipSampling, rank: int,
                 world: int, seed: int, flip: bool, shuffle_buffer: int, num_classes: int = 0):
        self.units, self.size, self.sampling, self.rank, self.world = units, size, sampling, rank, world
        self.seed, self.flip, self.shuffle_buffer, self.num_classes = seed, flip, shuffle_buffer, num_classes

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        readers, reader = self.world * workers, self.rank * workers + worker
        rng = random.Random(f"{self.seed}/{reader}")
        buffer, skipped, epoch = [], 0, 0
        while True:
            order = list(self.units)
            random.Random(f"{self.seed}/epoch{epoch}").shuffle(order)
            by_unit = len(order) >= readers
            mine = order[reader::readers] if by_unit else order
            index, decoded = 0, 0
            for unit, modality in mine:
                for frame in read_frames(unit, modality, self.size, self.sampling, self.num_classes):
                    index += 1
                    if not by_unit and index % readers != reader:
                        continue
                    if isinstance(frame, Skip):
                        skipped += 1
                        log.warning("skipping %s in %s (%s: %s); %d skipped so far", frame.key, unit.source,
                                    frame.reason, frame.detail, skipped)
                        continue
                    decoded += 1
                    buffer.append(frame)
                    if len(buffer) >= self.shuffle_buffer:  # emit a random held frame: shuffles across units
                        yield self._to_tensor(buffer.pop(rng.randrange(len(buffer))), rng)
            if decoded == 0:
                raise RuntimeError(f"data reader {reader} of {readers} decoded no image from {len(mine)} input units")
            epoch += 1

    def _to_tensor(self, frame: np.ndarray, rng: random.Random) -> torch.Tensor:
        if frame.ndim == 2:  # a label map (H, W) of class ids
            x = torch.from_numpy(frame.astype(np.int64))
        else:
            x = uint8_to_model(torch.from_numpy(frame))  # (3, H, W) in [-1, 1]
        return x.flip(-1) if self.flip and rng.random() < 0.5 else x


# ----------------------------------------------------------------------------- one step

def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(reconstructions.detach().clamp(-1, 1).float(), images.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def code_perplexity(codes: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of the batch's code histogram: how many codes it uses, weighted by use."""
    probs = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    probs = probs / probs.sum()
    return torch.exp(-(probs * probs.clamp_min(1e-12).log()).sum()).item()


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def train_step(vqgan: torch.nn.Module, disc: torch.nn.Module, lpips: LPIPS | None, opt_g: torch.optim.Optimizer,
               opt_d: torch.optim.Optimizer, images: torch.Tensor, step: int, loss_cfg: LossConfig,
               grad_clip: float = 0.0, bf16: bool = False) -> dict[str, float]:
    """One autoencoder update, then (from loss_cfg.disc_start on) one discriminator update.

    The generator's adversarial loss goes through the unwrapped discriminator (its weights
    frozen for that pass), so DDP synchronises the discriminator only in its own update.
    """
    raw, raw_disc = unwrap(vqgan), unwrap(disc)
    if raw.config.num_classes:
        return segmentation_step(vqgan, opt_g, images, loss_cfg, grad_clip, bf16)
    gan_on = step >= loss_cfg.disc_start
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16)
    with autocast:
        rec, vq_loss, codes = vqgan(images)  # (B, 3, H, W), scalar, (B, h, w)
        error = images - rec
        rec_loss = loss_cfg.pixel_weight * (error.abs() if loss_cfg.pixel_loss == "l1" else error.square()).mean()
        perceptual = lpips(rec, images).mean() if lpips is not None and loss_cfg.perceptual_weight > 0 else None
        if perceptual is not None:
            rec_loss = rec_loss + loss_cfg.perceptual_weight * perceptual
        loss = rec_loss + loss_cfg.codebook_weight * vq_loss
        metrics = {}
        if gan_on:
            raw_disc.requires_grad_(False)
            g_loss = -raw_disc(rec).mean()
            raw_disc.requires_grad_(True)
            d_weight = loss_cfg.disc_weight * adaptive_weight(rec_loss, g_loss, raw.decoder.conv_out.weight)
            loss = loss + d_weight * g_loss
            metrics.update(g_loss=g_loss.item(), d_weight=d_weight.item())
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(raw.parameters(), grad_clip).item()
    opt_g.step()

    if gan_on:
        with autocast:
            d_loss = hinge_d_loss(disc(images), disc(rec.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(raw_disc.parameters(), grad_clip)
        opt_d.step()
        metrics["d_loss"] = d_loss.item()

    metrics.update(loss=loss.item(), l1=(images - rec).abs().mean().item(), vq_loss=vq_loss.item(),
                   psnr=psnr(images, rec), perplexity=code_perplexity(codes, raw.config.codebook_size))
    if perceptual is not None:
        metrics["lpips"] = perceptual.item()
    return metrics


def segmentation_step(vqgan: torch.nn.Module, opt_g: torch.optim.Optimizer, labels: torch.Tensor,
                      loss_cfg: LossConfig, grad_clip: float = 0.0, bf16: bool = False) -> dict[str, float]:
    """One VQ-GAN-Seg update: cross-entropy of the decoded class logits (times loss.pixel_weight) + the VQ loss.
    Label maps have no perceptual or adversarial loss (the paper's VQ-GAN-Seg is judged by pixel accuracy)."""
    raw = unwrap(vqgan)
    with torch.autocast(labels.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, vq_loss, codes = vqgan(labels)  # (B, N, H, W), scalar, (B, h, w)
        cross_entropy = F.cross_entropy(logits.float(), labels)
        loss = loss_cfg.pixel_weight * cross_entropy + loss_cfg.codebook_weight * vq_loss
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    metrics = {}
    if grad_clip > 0:
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(raw.parameters(), grad_clip).item()
    opt_g.step()
    metrics.update(loss=loss.item(), cross_entropy=cross_entropy.item(), vq_loss=vq_loss.item(),
                   pixel_accuracy=(logits.argmax(1) == labels).float().mean().item(),
                   perplexity=code_perplexity(codes, raw.config.codebook_size))
    return metrics


def label_colours(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label maps (B, H, W) → images (B, 3, H, W) in [-1, 1], one fixed colour per class, for TensorBoard."""
    palette = torch.rand(num_classes, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return palette.to(labels.device)[labels].permute(0, 3, 1, 2)


def summed_usage(vqgan: VQGAN) -> torch.Tensor:
    """Times each code was chosen since the last restart, summed over ranks: (codebook_size,)."""
    usage = vqgan.quantize.usage.clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(usage)
    return usage


def restart_dead_codes(vqgan: VQGAN, images: torch.Tensor, min_count: int) -> tuple[float, int]:
    """Codebook usage since the last restart (fraction of codes chosen), then revive the dead codes.

    Under DDP the counts are summed over ranks first and rank 0's new codebook is broadcast.
    """
    quantize = vqgan.quantize
    quantize.usage.copy_(summed_usage(vqgan))
    usage = (quantize.usage > 0).float().mean().item()
    with torch.no_grad():
        latents = vqgan.encode_latents(images)  # (B, D, h, w)
    revived = quantize.restart_dead_codes(latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]), min_count)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(quantize.embedding.weight.data, src=0)
    return usage, revived


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(run: "Run", step: int) -> Path:
    """Collective: every rank sends its RNG state; rank 0 writes the tag, its completion marker last."""
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    usage = summed_usage(run.vqgan_raw).cpu()
    states = [None] * run.world
    dist.all_gather_object(states, rng)
    folder = checkpoint.checkpoint_dir(run.cfg.trainer.output_dir) / checkpoint.tag_for(step)
    if run.rank == 0:
        remove(folder)  # an incomplete tag of an interrupted run
        folder.mkdir(parents=True)
        run.vqgan_raw.save_pretrained(folder / "vqgan")
        save_file({k: v.detach().cpu().contiguous() for k, v in unwrap(run.disc).state_dict().items()},
                  folder / "discriminator.safetensors")
        torch.save({"opt_g": run.opt_g.state_dict(), "opt_d": run.opt_d.state_dict(), "usage": usage, "rng": states},
                   folder / "train_state.pt")
        checkpoint.mark_complete(folder, {"step": step}, typed_config.to_dict(run.cfg), run.cfg.trainer.keep_last)
    dist.barrier()
    return folder


def load_checkpoint(run: "Run", folder: Path) -> int:
    """Restore weights, optimizers, code usage and RNG; refuse a checkpoint of another model. Returns the step."""
    marker = checkpoint.read_marker(folder)
    saved, current = marker["config"]["model"], typed_config.to_dict(run.cfg.model)
    differing = [f"{k}: checkpoint {saved.get(k)!r} vs config {v!r}" for k, v in current.items() if saved.get(k) != v]
    if differing:
        raise ValueError(f"refusing to resume from {folder}: the model config differs ({'; '.join(differing)})")
    vqgan = VQGAN.from_pretrained(folder / "vqgan")
    run.vqgan_raw.load_state_dict(vqgan.state_dict())
    load_checked(unwrap(run.disc), load_file(folder / "discriminator.safetensors"), str(folder / "discriminator.safetensors"))
    state = load_torch(folder / "train_state.pt")  # weights_only; says so when truncated
    run.opt_g.load_state_dict(state["opt_g"])
    run.opt_d.load_state_dict(state["opt_d"])
    if run.rank == 0:  # the counts were summed over ranks when saved; rank 0 carries them
        run.vqgan_raw.quantize.usage.copy_(state["usage"])
    rng = state["rng"][run.rank] if len(state["rng"]) == run.world else state["rng"][0]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return marker["state"]["step"]


# ----------------------------------------------------------------------------- the loop

@dataclass
class Run:
    """What the loop holds: config, process placement, models and optimizers."""
    cfg: VQGANTrainingConfig
    rank: int
    world: int
    device: torch.device
    vqgan: torch.nn.Module
    vqgan_raw: VQGAN
    disc: torch.nn.Module
    lpips: LPIPS | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def build_run(cfg: VQGANTrainingConfig) -> Run:
    rank, world, device = init_distributed(cfg.trainer.device, cfg.trainer.timeout_s)
    torch.manual_seed(cfg.trainer.seed)  # same initial weights on every rank
    if cfg.trainer.init:
        init = Path(cfg.trainer.init)
        vqgan = VQGAN.from_pretrained(init) if init.is_dir() else VQGAN.from_taming(init, config=cfg.model)
        if vqgan.config != cfg.model:
            raise ValueError(f"trainer.init {init} holds a {vqgan.config}, but the config asks for {cfg.model}")
    else:
        vqgan = VQGAN(cfg.model)
    disc = PatchDiscriminator(cfg.model.out_channels, cfg.loss.disc_channels, cfg.loss.disc_layers)
    vqgan, disc = vqgan.to(device), disc.to(device)
    perceptual = cfg.loss.perceptual_weight > 0 and not cfg.model.num_classes  # label maps: cross-entropy only
    lpips = load_lpips(cfg.loss.lpips_weights) if perceptual else None
    if lpips is not None:
        lpips = lpips.to(device)
    freeze(vqgan, cfg.optim.freeze)  # optim.freeze names VQ-GAN parameters (e.g. "encoder.*")
    opt_g = build_optimizer(vqgan, cfg.optim, device)
    opt_d = build_optimizer(disc, cfg.optim, device, lr=cfg.optim.disc_lr)
    torch.manual_seed(cfg.trainer.seed + rank)  # per-rank randomness from here on
    wrapped_vqgan, wrapped_disc = vqgan, disc
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        # the code-usage buffer is per rank until restart_dead_codes sums it: never broadcast it
        wrapped_vqgan = DistributedDataParallel(vqgan, device_ids=ids, forward_sync_buffers=False)
        wrapped_disc = DistributedDataParallel(disc, device_ids=ids)
    return Run(cfg, rank, world, device, wrapped_vqgan, vqgan, wrapped_disc, lpips, opt_g, opt_d)


def reconstruction_grid(images: torch.Tensor, rec: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Originals above reconstructions, (3, 2H, n·W) in [0, 1], for TensorBoard."""
    top = torch.cat(list(images[:n]), dim=2)  # (3, H, n*W)
    bottom = torch.cat(list(rec[:n].clamp(-1, 1)), dim=2)
    return (torch.cat([top, bottom], dim=1).float().cpu() + 1) / 2


def train(cfg: VQGANTrainingConfig, resume: str | None = None) -> dict[str, float]:
    """Train, checkpoint and save; returns the summary (also printed as one line)."""
    trainer, optim = cfg.trainer, cfg.optim
    owns_group = not dist.is_initialized()  # an in-process caller's group stays up
    run = build_run(cfg)
    resume_dir = agree(lambda: checkpoint.resolve(resume, trainer.output_dir), MISTAKES)
    out = Path(trainer.output_dir)
    start = 0
    if resume_dir is not None:
        start = agree(lambda: load_checkpoint(run, resume_dir), MISTAKES)
        if run.rank == 0:
            log.info("resumed from %s at step %d", resume_dir, start)
    elif resume == "auto" and run.rank == 0:
        log.info("--resume auto: no checkpoint in %s, starting fresh", checkpoint.checkpoint_dir(out))
    if run.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.json", json.dumps(typed_config.to_dict(cfg), indent=1))
    classes = cfg.model.num_classes
    units = training_units(cfg.data, segmentation=classes > 0)
    sampling = ClipSampling(num_frames=cfg.data.clip_frames, fps=cfg.data.clip_fps)
    stream = FrameStream(units, cfg.model.resolution, sampling, run.rank, run.world,
                         trainer.seed * 1_000_003 + start, cfg.data.flip, cfg.data.shuffle_buffer, classes)
    batches = iter(DataLoader(stream, batch_size=trainer.batch_size, num_workers=cfg.data.num_workers,
                              persistent_workers=cfg.data.num_workers > 0))
    quality = "pixel_accuracy" if classes else "psnr"
    logger = MetricLogger(out, start, trainer.steps, trainer.log_every, run.rank == 0, desc="vqgan",
                          show=("loss", quality, "codebook_usage"), rate="images")
    schedule = lr_multiplier(optim, trainer.steps)
    metrics, usage = {}, float("nan")
    for step in range(start, trainer.steps):
        images = next(batches).to(run.device, non_blocking=True)
        for optimizer, lr in ((run.opt_g, optim.lr), (run.opt_d, optim.disc_lr)):
            for group in optimizer.param_groups:
                group["lr"] = lr * schedule(step)
        run.vqgan.train()
        run.disc.train()
        metrics = train_step(run.vqgan, run.disc, run.lpips, run.opt_g, run.opt_d, images, step, cfg.loss,
                             optim.grad_clip, bf16=trainer.precision == "bf16")
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss became {metrics['loss']} at step {step} (last checkpoint: "
                                     f"{checkpoint.checkpoint_dir(out)}); lower optim.lr or check the data")
        done = step + 1
        if trainer.restart_every and done % trainer.restart_every == 0:
            usage, revived = restart_dead_codes(run.vqgan_raw, images, trainer.restart_min_count)
            metrics.update(codebook_usage=usage, codes_restarted=revived)
        logger.log_step(done, {**metrics, "lr": optim.lr * schedule(step)},
                        {"images": trainer.batch_size * run.world})
        if run.rank == 0 and trainer.sample_every and done % trainer.sample_every == 0:
            run.vqgan_raw.eval()
            with torch.no_grad():
                rec = run.vqgan_raw(images[:8])[0]
            if classes:
                images, rec = label_colours(images[:8], classes), label_colours(rec.argmax(1), classes)
            logger.log_images(done, {"reconstructions": reconstruction_grid(images, rec)[None]})
        if done % trainer.checkpoint_every == 0 or done == trainer.steps:
            logger.log_event(f"saved {save_checkpoint(run, done)}")
    summary_line = logger.close()
    if not (trainer.restart_every and trainer.steps % trainer.restart_every == 0):
        usage = (summed_usage(run.vqgan_raw) > 0).float().mean().item()  # since the last restart
    summary = {"steps": trainer.steps, "seconds": time.perf_counter() - logger.start_time,
               quality: metrics.get(quality, float("nan")), "codebook_usage": usage, "summary": summary_line}
    if run.rank == 0:
        run.vqgan_raw.save_pretrained(out / "final")
        summary["fingerprint"] = run.vqgan_raw.fingerprint()
        shown = f"pixel accuracy {summary[quality]:.1%}" if classes else f"PSNR {summary[quality]:.2f} dB"
        print(f"train_vqgan: last-batch {shown}, codebook usage {usage:.1%} → {out / 'final'} "
              f"(fingerprint {summary['fingerprint']})")
    if owns_group:
        dist.destroy_process_group()
    return summary
