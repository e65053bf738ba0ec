"""The pre-training config: one typed section per component, composed into `PretrainConfig`.

Files (YAML/JSON) and `--section.key value` overrides go through `model.typed_config`, so
unknown keys and wrong types are errors. The model section takes a `preset` key
(`model: {preset: tiny, decoder_layers: 4}`); the rest of it overrides that preset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from model import typed_config
from model.config import PRESETS, NuwaConfig
from model.tasks import SKETCH_TASKS  # conditioned on the shards' sketch codes (sketch.npy) instead of text
from pretrain.optim import OptimConfig

TASKS = ("t2i", "v2v", "t2v", "s2i", "s2v")
TASK_MODALITY = {"t2i": "image", "v2v": "video", "t2v": "video", "s2i": "image", "s2v": "video"}
CAPTIONED_TASKS = ("t2i", "t2v")
"""Tasks conditioned on each sample's own caption; the others read the constant "None" text."""


@dataclass
class Stage:
    """Task weights in force from `start_step` on (a curriculum is a list of stages)."""
    start_step: int = 0
    weights: dict[str, float] = field(default_factory=lambda: {"t2i": 1.0, "v2v": 1.0, "t2v": 1.0})


@dataclass
class DataConfig:
    image_shards: str = ""
    """Folder of image code shards (T2I; S2I: shards with sketch codes); empty when no task uses images."""
    video_shards: str = ""
    """Folder of video code shards (V2V, T2V; S2V: shards with sketch codes)."""
    val_image_shards: str = ""
    """Held-out image shards (T2I, S2I validation); empty: none."""
    val_video_shards: str = ""
    """Held-out video shards (T2V, V2V, S2V validation); empty: none."""
    tokenizer: str = ""
    """The sentencepiece model the shards were made with (its fingerprint is checked; V2V encodes "None")."""
    micro_batch: dict[str, int] = field(default_factory=lambda: {"t2i": 8, "v2v": 2, "t2v": 2, "s2i": 8, "s2v": 2})
    """Samples per rank per micro-step, for each task (each task with a weight needs one)."""
    schedule: list[Stage] = field(default_factory=lambda: [Stage()])
    """Task mixing weights by step; the paper trains T2I + V2V first and adds T2V later."""
    num_workers: int = 2
    """DataLoader worker processes per task and rank."""
    caption_dropout: float = 0.0
    """Fraction of T2I/T2V samples trained under the "None" text instead of their caption, so that
    sampling can use classifier-free guidance (V2V already trains videos under "None")."""
    roll_videos: bool = False
    """Roll every V2V/T2V clip by a random whole number of codes along rows and columns, wrapping round.
    Only for data whose frames are tori (what leaves on one side comes back on the other, as in tiling
    textures or the demo's synthetic shapes): with a circular-padded VQ-GAN the rolled codes are exactly the codes of the rolled clip, so each clip
    stands for H×W clips and the model must learn the motion instead of memorising where each clip's shape
    is. Real footage does not wrap (a roll would cut it at a seam): leave it off there."""
    frames: dict[str, int] = field(default_factory=dict)
    """Train a video task on the first N frames of every clip, e.g. {"t2v": 3} (absent: all of them):
    a short clip costs a fraction of a whole one, so a step holds more clips of the same budget."""


@dataclass
class TrainerConfig:
    steps: int = 1000
    """Optimizer steps."""
    grad_accum: int = 1
    """Micro-steps per optimizer step (each draws its own task)."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """fp16 uses DeepSpeed's dynamic loss scaling (for GPUs without bf16)."""
    ds_config: str = "ds_configs/zero2.json"
    """DeepSpeed engine knobs (ZeRO stage, offload, buckets); batch sizes are injected."""
    output_dir: str = "runs/nuwa"
    """Checkpoints, TensorBoard logs, metrics.jsonl and the resolved config go here."""
    checkpoint_every: int = 500
    """Steps between checkpoints (the last step, and a stop request, always save)."""
    keep_last: int = 3
    """Checkpoints to keep (older ones are deleted after a new one is complete)."""
    log_every: int = 10
    """Steps between TensorBoard scalars and progress-bar updates (metrics.jsonl gets every step)."""
    sample_every: int = 0
    """Steps between generated samples (T2I, T2V, V2V of fixed training captions/videos) decoded into
    TensorBoard images; 0 = never. Needs `vqgan`."""
    vqgan: str = ""
    """VQ-GAN folder (VQGAN.save_pretrained) that decodes samples; its fingerprint must match the shards'."""
    init_from: str = ""
    """Fine-tuning: a model folder from tools/convert_checkpoint.py to-safetensors whose weights start the
    run (a fresh optimizer, schedule and data position); parameters it lacks keep their initialisation.
    Ignored when the run resumes from its own checkpoint."""
    seed: int = 0
    """Seeds the model init, the task sequence, the data order and dropout."""
    nan_policy: Literal["skip", "stop"] = "stop"
    """On a NaN/inf loss: skip that micro-batch and draw the next in its place (counted, logged) or stop with
    the step named."""
    max_consecutive_skips: int = 10
    """`skip` still stops after this many bad micro-batches in a row."""
    timeout_s: float = 1800.0
    """Seconds a collective may wait for the other ranks before it fails (so a dead rank ends the job)."""
    eval_every: int = 0
    """Steps between held-out validations (with data.val_*_shards); 0: only the final one, at the end."""
    eval_batches: int = 8
    """Micro-batches per task in a validation: the first eval_batches × micro_batch held-out samples."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights with this decay per step (e.g. 0.9999; 0: none),
    saved with every checkpoint and exported by `tools/convert_checkpoint.py to-safetensors --ema`."""
    peak_tflops: float = 0.0
    """The hardware's peak TFLOP/s per rank for MFU; 0: from the table of known GPUs (model/flops.py), for
    bf16/fp16 on CUDA (no MFU on CPU unless set)."""


@dataclass
class PretrainConfig:
    model: NuwaConfig = field(default_factory=NuwaConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    preset: str = "nuwa-336"
    """The NÜWA preset the `model` section starts from (tiny, nuwa-256, nuwa-336), set as `model.preset`
    in a file or `--model.preset` (recorded for conversion and sampling)."""

    def __post_init__(self):
        trainer = self.trainer
        typed_config.check_at_least(trainer, "trainer", 1, "steps", "grad_accum", "checkpoint_every", "log_every",
                                    "max_consecutive_skips")
        typed_config.check_at_least(trainer, "trainer", 0, "keep_last", "sample_every", "peak_tflops", "eval_every")
        typed_config.check_at_least(trainer, "trainer", 1, "eval_batches")
        typed_config.check_at_least(trainer, "trainer", 1e-3, "timeout_s")
        typed_config.check_at_least(self.data, "data", 0, "num_workers")
        if not 0 <= trainer.ema_decay < 1:
            raise ValueError(f"trainer.ema_decay must be in [0, 1), got {trainer.ema_decay}")
        for stage in self.data.schedule:
            negative = {t: w for t, w in stage.weights.items() if w < 0}
            if negative:
                raise ValueError(f"data.schedule: stage at step {stage.start_step} has negative weights {negative}")
        starts = [stage.start_step for stage in self.data.schedule]
        if starts != sorted(set(starts)):
            raise ValueError(f"data.schedule: start_step values must increase, got {starts}")
        used = {t for stage in self.data.schedule for t, w in stage.weights.items() if w > 0}
        small = {t: n for t, n in self.data.micro_batch.items() if t in used and n < 1}
        if small:
            raise ValueError(f"data.micro_batch: {small} for task(s) with a positive weight; each needs at least 1")
        if not 0 <= self.data.caption_dropout < 1:
            raise ValueError(f"data.caption_dropout must be in [0, 1), got {self.data.caption_dropout}")
        for stage in self.data.schedule:
            unknown = set(stage.weights) - set(TASKS)
            if unknown:
                raise ValueError(f"data.schedule: unknown task(s) {sorted(unknown)}; tasks are {TASKS}")
        missing = used - set(self.data.micro_batch)
        if missing:
            raise ValueError(f"data.micro_batch has no size for {sorted(missing)}")
        sketched = sorted(used & set(SKETCH_TASKS))
        if sketched and not self.model.sketch_codebook_size:
            raise ValueError(f"tasks {sketched} read sketch codes: set model.sketch_codebook_size to the VQ-GAN-Seg's "
                             f"codebook size (the shard manifest's sketch.codebook_size)")
        for task, frames in self.data.frames.items():
            if TASK_MODALITY.get(task) != "video" or not 1 <= frames <= self.model.frames:
                videos = [t for t in TASKS if TASK_MODALITY[t] == "video"]
                raise ValueError(f"data.frames: {task}={frames}; video tasks {videos} take 1..{self.model.frames} frames")
        if not self.data.schedule or self.data.schedule[0].start_step != 0:
            raise ValueError("data.schedule must start with a stage at start_step 0")
        if self.trainer.sample_every > 0 and not self.trainer.vqgan:
            raise ValueError("trainer.sample_every > 0 needs trainer.vqgan, the VQ-GAN that decodes samples")

    def to_dict(self) -> dict:
        return typed_config.to_dict(self)


DATA_FIXED = ("text_vocab_size", "codebook_size", "frames", "grid_height", "grid_width")
"""Model fields that the data fixes: read from the shard manifests unless the config sets them."""


def from_manifests(data: dict) -> dict:
    """The DATA_FIXED model fields that the manifests of `data`'s shard folders give (folders that hold
    no manifest give nothing; the trainer reports them when it opens the shards)."""
    from preprocess.shards import MANIFEST, ShardDataset

    fields = {}
    for key in ("image_shards", "video_shards"):
        folder = data.get(key)
        if not isinstance(folder, str) or not (Path(folder) / MANIFEST).is_file():
            continue
        manifest = ShardDataset(folder).manifest
        frames, height, width = manifest["grid"]
        fields.update(text_vocab_size=manifest["tokenizer_vocab_size"], codebook_size=manifest["codebook_size"],
                      grid_height=height, grid_width=width, **({"frames": frames} if key == "video_shards" else {}))
    return fields


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> PretrainConfig:
    """Preset ← shard manifests (the DATA_FIXED fields) ← file ← overrides; `model.preset` picks the preset.

    A DATA_FIXED field that the file or an override sets is kept as set, and the trainer refuses
    shards that disagree with it.
    """
    raw = dict(data or {})
    if path is not None:
        raw = typed_config.merge(raw, typed_config.read_file(path))
    if overrides:
        raw = typed_config.merge(raw, typed_config.parse_overrides(overrides))
    model = dict(raw.get("model") or {})
    preset = model.pop("preset", raw.pop("preset", "nuwa-336"))
    if preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    raw["model"] = {**PRESETS[preset], **from_manifests(raw.get("data") or {}), **model}
    return typed_config.from_dict(PretrainConfig, {**raw, "preset": preset})
