"""The whole pipeline on an embedded synthetic dataset, in one command, on a laptop CPU.

    python tools/demo.py                 # → demo_out/report.md (about 11 minutes on 2 cores)
    python tools/demo.py --size ci       # the same stages at test size (a few minutes)
    python tools/demo.py --fresh         # start over instead of reusing finished stages

Stages, each the command a user would run, each reused on a second run once complete:
make data → train tokenizer → train VQ-GAN → tokenize images and videos → `deepspeed` pre-training
on 2 CPU ranks with ZeRO-2 → convert the checkpoint → sample T2I, T2V, V2V from held-out captions
and videos → report with a learning check (colour and motion read from the pixels vs chance).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from evaluation import metrics
from evaluation.media import MediaSet
from model import typed_config
from model.lpips import load_lpips
from model.pretrained import load_pretrained
from model.sampling import SamplingConfig, generate
from model.tasks import keep_first_frames
from model.vqgan import VQGAN
from preprocess.shards import ShardDataset
from preprocess.text import CaptionTokenizer
from pretrain.distributed import free_port
from tools.learning_check import (PALETTE_NAMES, caption_words, chance_p_value, mask_iou, match_rate,
                                  motion_direction, object_colour, object_mask, palette_through, reads_as_caption,
                                  shape_class)
from tools.make_demo_data import COLOURS, DIRECTIONS, SKETCH_CLASSES
from tools.media import save_image_grid, save_video
from tools.sample import none_text, to_uint8

ROOT = Path(__file__).resolve().parents[1]
GUIDANCE = 3.0
"""Classifier-free guidance scale for T2I and T2V samples (the run trains with 10% caption dropout)."""


@dataclasses.dataclass(frozen=True)
class DemoSize:
    images: int
    videos: int
    vqgan_steps: int
    pretrain_steps: int
    samples: int
    """Held-out captions/videos sampled per task, at most all of them (the default: 100 images, 80 clips)."""
    seg_steps: int
    """VQ-GAN-Seg training steps (--sketch)."""
    sketch_steps: int
    """S2I fine-tuning steps (--sketch)."""


SIZES = {
    "default": DemoSize(images=1000, videos=400, vqgan_steps=1000, pretrain_steps=2400, samples=100, seg_steps=1000,
                        sketch_steps=1500),
    "ci": DemoSize(images=120, videos=30, vqgan_steps=60, pretrain_steps=12, samples=4, seg_steps=20,
                   sketch_steps=4),
}


class Demo:
    def __init__(self, out: Path, size: DemoSize):
        self.out, self.size = out, size
        self.data, self.tokenizer = out / "data", out / "tokenizer" / "captions.model"
        self.vqgan, self.codes = out / "vqgan" / "final", out / "codes"
        self.run, self.model = out / "pretrain", out / "model"

    def command(self, name: str, args: list, done: Path):
        """Run one stage's command unless its output already exists."""
        if done.exists():
            print(f"[demo] {name}: done before ({done.relative_to(self.out)}), reused", flush=True)
            return
        args = [str(a) for a in args]
        print(f"[demo] {name}: {' '.join(args)}", flush=True)
        start = time.perf_counter()
        subprocess.run(args, cwd=ROOT, check=True)
        print(f"[demo] {name}: finished in {time.perf_counter() - start:.0f}s", flush=True)

    def make_data(self):
        self.command("data", [sys.executable, "tools/make_demo_data.py", "--output", self.data,
                              "--num-images", self.size.images, "--num-videos", self.size.videos],
                     self.data / "dataset.json")

    def train_tokenizer(self):
        self.command("tokenizer", [sys.executable, "preprocess/train_tokenizer.py", "--input",
                                   *sorted(self.data.glob("*/train/*.tar")), "--output", self.tokenizer.with_suffix(""),
                                   "--vocab-size", 128], self.tokenizer)

    def train_vqgan(self):
        """configs/vqgan-demo.yaml (its comments say why each setting) on the demo's training images."""
        steps = self.size.vqgan_steps
        config = typed_config.merge(typed_config.read_file(ROOT / "configs" / "vqgan-demo.yaml"), {
            "data": {"paths": [str(self.data / "images" / "train")]}, "loss": {"disc_start": steps},
            "trainer": {"steps": steps, "checkpoint_every": steps, "output_dir": str(self.vqgan.parent)}})
        path = self.write_yaml("vqgan.yaml", config)
        self.command("vqgan", [sys.executable, "pretrain/train_vqgan.py", "--config", path], self.vqgan / "config.json")

    def tokenize(self):
        for modality, kind in (("image", "images"), ("video", "videos")):
            for split in ("train", "heldout"):
                out = self.codes / f"{kind}-{split}"
                extra = ["--clips-per-video", 2] if modality == "video" else []
                self.command(f"tokenize {kind}/{split}", [
                    sys.executable, "preprocess/tokenize.py", "--modality", modality,
                    "--input", *sorted((self.data / kind / split).glob("*.tar")), "--output", out,
                    "--vqgan", self.vqgan, "--tokenizer", self.tokenizer, "--workers", 1, "--shard-size", 256, *extra],
                    out / "manifest.json")

    def pretrain(self):
        vqgan = VQGAN.from_pretrained(self.vqgan)
        steps = self.size.pretrain_steps
        # Why each setting (docs/demo.md has the measurements). Rotary encoding (model.rotary) on top of the
        # paper's position tables: a shape's motion is one offset in the window, which a query then learns
        # as one direction. 8 heads, not the preset's 4, at the same width: following a motion takes one
        # head per window offset. The frames are tori (shapes leave on one side and come back on the
        # other), and three settings follow from that. Wrapped windows (model.spatial_wrap): with windows
        # cut at the border, the part of a shape coming back in is outside every window and must be
        # guessed. Rolled clips (data.roll_videos): a clip rolled by whole codes is another clip of the
        # data, so the model cannot memorise where each clip's shape is. 5×5 windows instead of the
        # paper's 3×3: with 2 decoder layers a 3×3 window lets a code see two code rows back, less than a
        # large shape.
        config = {
            "model": {"preset": "tiny", "text_vocab_size": CaptionTokenizer(self.tokenizer).vocab_size,
                      "codebook_size": vqgan.config.codebook_size, "frames": 10, "rotary": True, "heads": 8,
                      "grid_height": vqgan.config.grid[0], "grid_width": vqgan.config.grid[1],
                      "spatial_wrap": True, "image_extent": [1, 5, 5], "video_extent": [3, 5, 5]},
            "data": {"image_shards": str(self.codes / "images-train"), "video_shards": str(self.codes / "videos-train"),
                     "val_image_shards": str(self.codes / "images-heldout"),
                     "val_video_shards": str(self.codes / "videos-heldout"),
                     "tokenizer": str(self.tokenizer), "micro_batch": {"t2i": 16, "v2v": 4, "t2v": 4},
                     "num_workers": 1, "caption_dropout": 0.1,  # for classifier-free guidance when sampling
                     "roll_videos": True,
                     # T2V drawn on 75% of the micro-steps: the direction word only matters where a clip's
                     # second frame shows the first step of the motion, so T2V needs the most steps.
                     "schedule": [{"start_step": 0, "weights": {"t2i": 1.0, "v2v": 0.5, "t2v": 4.5}}]},
            "optim": {"lr": 2e-3},
            "trainer": {"steps": steps, "grad_accum": 1, "precision": "fp32", "ds_config": "ds_configs/cpu.json",
                        "output_dir": str(self.run), "checkpoint_every": max(1, steps // 2), "keep_last": 1,
                        "log_every": 10, "eval_every": max(1, steps // 4)},
        }
        path = self.write_yaml("pretrain.yaml", config)
        done = self.run / "checkpoints" / f"step-{steps:08d}" / "trainer_state.json"
        # A free rendezvous port: DeepSpeed's default (29500) fails if another run on this machine holds it.
        self.command("pretrain", ["deepspeed", "--num_gpus", 2, "--master_port", free_port(), "pretrain/main.py",
                                  "--config", path, "--resume", "auto"], done)
        self.command("convert", [sys.executable, "tools/convert_checkpoint.py", "to-safetensors", done.parent,
                                 self.model], self.model / "config.json")

    def sketch(self) -> Path:
        """S2I on the demo's label maps: train the VQ-GAN-Seg (configs/vqgan-seg-demo.yaml), code the images'
        sketches beside their codes, fine-tune the pre-trained model on S2I (`trainer.init_from`), and check
        that the generated object lies where the sketch puts it and has its shape (sketch-report.md)."""
        seg = self.out / "vqgan-seg" / "final"
        steps = self.size.seg_steps
        config = typed_config.merge(typed_config.read_file(ROOT / "configs" / "vqgan-seg-demo.yaml"), {
            "data": {"paths": [str(self.data / "images" / "train")]},
            "trainer": {"steps": steps, "checkpoint_every": steps, "output_dir": str(seg.parent)}})
        self.command("vqgan-seg", [sys.executable, "pretrain/train_vqgan.py", "--config",
                                   self.write_yaml("vqgan-seg.yaml", config)], seg / "config.json")
        for split in ("train", "heldout"):
            out = self.codes / f"images-sketch-{split}"
            self.command(f"tokenize sketches/{split}", [
                sys.executable, "preprocess/tokenize.py", "--modality", "image",
                "--input", *sorted((self.data / "images" / split).glob("*.tar")), "--output", out, "--vqgan", self.vqgan,
                "--tokenizer", self.tokenizer, "--vqgan-seg", seg, "--workers", 1, "--shard-size", 256],
                out / "manifest.json")
        pretrain = yaml.safe_load((self.out / "configs" / "pretrain.yaml").read_text())
        steps = self.size.sketch_steps
        pretrain["model"]["sketch_codebook_size"] = VQGAN.from_pretrained(seg).config.codebook_size
        pretrain["data"].update(image_shards=str(self.codes / "images-sketch-train"), video_shards="",
                                val_image_shards=str(self.codes / "images-sketch-heldout"), val_video_shards="",
                                micro_batch={"s2i": 16}, caption_dropout=0.0,
                                schedule=[{"start_step": 0, "weights": {"s2i": 1.0}}])
        pretrain["optim"] = {"lr": 1e-3}
        pretrain["trainer"].update(steps=steps, init_from=str(self.model), output_dir=str(self.out / "sketch"),
                                   checkpoint_every=steps, eval_every=steps)
        path = self.write_yaml("sketch.yaml", pretrain)
        done = self.out / "sketch" / "checkpoints" / f"step-{steps:08d}" / "trainer_state.json"
        self.command("fine-tune s2i", ["deepspeed", "--num_gpus", 2, "--master_port", free_port(), "pretrain/main.py",
                                       "--config", path, "--resume", "auto"], done)
        self.command("convert s2i", [sys.executable, "tools/convert_checkpoint.py", "to-safetensors", done.parent,
                                     self.out / "model-s2i"], self.out / "model-s2i" / "config.json")
        return self.sketch_report(seg)

    def sketch_report(self, seg: Path) -> Path:
        """S2I from every held-out sketch: IoU of the generated object with the sketch's shape against the same
        sketch moved at random, and the shape class against chance (1/3), beside the VQ-GAN ceiling."""
        start = time.perf_counter()
        model, vqgan = load_pretrained(self.out / "model-s2i"), VQGAN.from_pretrained(self.vqgan).eval()
        shards = ShardDataset(self.codes / "images-sketch-heldout")
        seg_model = VQGAN.from_pretrained(seg).eval()
        maps = MediaSet(str(self.data / "images" / "heldout" / "*.tar"), "seg", seg_model.config.resolution,
                        num_classes=seg_model.config.num_classes)
        labels = {item.key: item.frames[0] for item in maps}
        picks = np.linspace(0, len(shards) - 1, min(self.size.samples, len(shards))).round().astype(int)
        records = [shards[int(i)] for i in picks]
        masks = [labels[shards.key(int(i))] > 0 for i in picks]
        sketch = torch.from_numpy(np.stack([r["sketch"] for r in records]).astype(np.int64))
        truth = torch.from_numpy(np.stack([r["codes"] for r in records]).astype(np.int64))
        text = none_text(CaptionTokenizer(self.tokenizer)).expand(len(records), -1)
        codes = generate(model, text, model.config.image_grid, sketch=sketch, sampling=SamplingConfig(top_k=32),
                         generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            pixels, truth_pixels = to_uint8(vqgan.decode_video(codes))[:, 0], to_uint8(vqgan.decode_video(truth))[:, 0]
        palette = palette_through(vqgan)
        rng = np.random.default_rng(0)
        moved = [np.roll(m, tuple(rng.integers(0, m.shape[0], 2)), axis=(0, 1)) for m in masks]
        classes = [SKETCH_CLASSES[int(np.bincount(labels[shards.key(int(i))].ravel(), minlength=len(SKETCH_CLASSES))[1:]
                                          .argmax()) + 1] for i in picks]
        rows = {}
        for name, images in (("generated", pixels), ("ceiling", truth_pixels)):
            found = [object_mask(p, palette) for p in images]
            rows[name] = {"iou": [mask_iou(f, m) for f, m in zip(found, masks)],
                          "moved": [mask_iou(f, m) for f, m in zip(found, moved)],
                          "shape": match_rate([shape_class(f) for f in found], classes)}
        accuracy = metrics.segmentation_reconstruction(maps, seg_model)
        samples = self.out / "sketch-samples"
        samples.mkdir(exist_ok=True)
        for i, p in enumerate(pixels[:16]):
            save_image_grid(np.stack([np.repeat(masks[i][..., None] * 255, 3, -1).astype(np.uint8), p]),
                            samples / f"s2i-{i:02d}.png")
        report = self.out / "sketch-report.md"
        report.write_text(self.render_sketch(rows, accuracy, len(records), time.perf_counter() - start))
        return report

    def render_sketch(self, rows: dict, accuracy: dict, n: int, seconds: float) -> str:
        generated, ceiling = rows["generated"], rows["ceiling"]
        wins = sum(a > b for a, b in zip(generated["iou"], generated["moved"]))
        lines = [
            "# NÜWA demo: S2I", "",
            f"A VQ-GAN-Seg ({self.size.seg_steps} steps, configs/vqgan-seg-demo.yaml) codes the demo's label maps; "
            f"the pre-trained model is fine-tuned on S2I for {self.size.sketch_steps} steps (`trainer.init_from`) and "
            f"samples one image from each of {n} held-out sketches. The object is read from the pixels as in the "
            "learning check.", "",
            "| check | generated | VQ-GAN ceiling | chance |", "|---|---|---|---|",
            f"| mean IoU of the object with the sketch's shape | {np.mean(generated['iou']):.2f} | "
            f"{np.mean(ceiling['iou']):.2f} | {np.mean(generated['moved']):.2f} (the same sketch moved at random) |",
            f"| IoU above the moved sketch's | {wins}/{n} (p = {chance_p_value(wins, n, 0.5):.1g}) | – | half |",
            f"| shape class matches | {with_p_value(generated['shape'], n, 1 / 3)} | {ceiling['shape']:.0%} | 33% |",
            "", f"VQ-GAN-Seg on the held-out label maps: pixel accuracy {accuracy['pixel_accuracy']:.2%}, FWIoU "
            f"{accuracy['fwiou']:.3f}, mean IoU {accuracy['miou']:.3f}.", "",
            f"Sampling and analysis took {seconds:.0f}s. Samples (sketch, generated): `sketch-samples/`.", ""]
        return "\n".join(lines)

    def write_yaml(self, name: str, config: dict) -> Path:
        """Write a stage's config; refuse one that differs from what an earlier run wrote, since that
        run's finished stages would be reused although this version of the demo configures them differently."""
        path = self.out / "configs" / name
        text = yaml.safe_dump(config, sort_keys=False)
        if path.exists() and path.read_text() != text:
            raise SystemExit(f"[demo] {path} was written by a run with a different {name} (an older version of the "
                             f"demo?); its outputs would be reused as they are: start over with --fresh")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def report(self) -> Path:
        """Sample from held-out captions and videos, measure colour/motion against chance, write report.md."""
        start = time.perf_counter()
        model, vqgan = load_pretrained(self.model), VQGAN.from_pretrained(self.vqgan).eval()
        tokenizer = CaptionTokenizer(self.tokenizer)
        samples = self.out / "samples"
        if samples.exists():
            shutil.rmtree(samples)
        samples.mkdir(parents=True)
        sampling = SamplingConfig(temperature=1.0, top_k=32, guidance=GUIDANCE)
        none = none_text(tokenizer)  # [1, 77]
        palette = palette_through(vqgan)
        colour_of = functools.partial(object_colour, palette=palette)
        direction_of = functools.partial(motion_direction, palette=palette)
        rows, checks, fidelity = [], {}, {}
        for task, kind in (("t2i", "images"), ("t2v", "videos"), ("v2v", "videos")):
            shards = ShardDataset(self.codes / f"{kind}-heldout")
            picks = np.linspace(0, len(shards) - 1, min(self.size.samples, len(shards))).round().astype(int)
            records = [shards[int(i)] for i in picks]
            captions = [tokenizer.decode(r["text"], r["text_len"]) for r in records]
            grid = model.config.image_grid if task == "t2i" else model.config.video_grid
            truth = torch.from_numpy(np.stack([r["codes"] for r in records]).astype(np.int64))
            keep, reference = None, None
            if task == "v2v":  # video prediction from the first 2 frames, under the "None" text: no guidance
                text, keep, reference = none.expand(len(records), -1), keep_first_frames(grid, 2), truth
            else:
                text = torch.from_numpy(np.stack([r["text"] for r in records]).astype(np.int64))
            codes = generate(model, text, grid, reference=reference, keep=keep, unconditional=none,
                             sampling=sampling if task != "v2v" else dataclasses.replace(sampling, guidance=1.0),
                             generator=torch.Generator().manual_seed(0))
            with torch.no_grad():  # [N, T, H, W, 3]; the held-out inputs' own codes give the VQ-GAN's ceiling
                pixels, truth_pixels = to_uint8(vqgan.decode_video(codes)), to_uint8(vqgan.decode_video(truth))
            words = [caption_words(c) for c in captions]
            if task != "t2i":  # per frame: the share of clips whose frame still reads as the caption's object
                fidelity[task] = {name: [float(np.mean([reads_as_caption(p[t], w["colour"], w["background"], palette)
                                                        for p, w in zip(clips, words)])) for t in range(grid[0])]
                                  for name, clips in (("generated", pixels), ("ceiling", truth_pixels))}
            colours = [colour_of(p[-1]) for p in pixels]
            expected = [w["colour"] for w in words]
            checks[task] = {"n": len(records), "colour": match_rate(colours, expected),
                            "colour_truth": match_rate([colour_of(p[-1]) for p in truth_pixels], expected)}
            if task != "t2i":
                clip = slice(1, None) if task == "v2v" else slice(None)  # V2V: from the last given frame on
                expected = [w["direction"] for w in words]
                checks[task]["direction"] = match_rate([direction_of(p[clip]) for p in pixels], expected)
                checks[task]["direction_truth"] = match_rate([direction_of(p[clip]) for p in truth_pixels], expected)
            for i, (caption, p) in enumerate(zip(captions, pixels)):
                name = f"{task}-{i:02d}." + ("png" if task == "t2i" else "gif")
                if task == "t2i":
                    save_image_grid(p, samples / name)
                else:
                    save_video(p, samples / name, fps=2.5)
                rows.append(f"| {task} | {caption if task != 'v2v' else '(first 2 frames given)'} | "
                            f"![{name}](samples/{name}) | {colours[i]} |")
        reconstruction = self.reconstruction(vqgan)
        report = self.out / "report.md"
        report.write_text(self.render(checks, fidelity, reconstruction, rows, palette, vqgan.config.codebook_size,
                                      time.perf_counter() - start))
        return report

    def reconstruction(self, vqgan: VQGAN) -> dict[str, dict]:
        """The VQ-GAN on held-out media (tools/evaluate.py vqgan): images, and the frames of the first clips."""
        lpips = load_lpips("auto")
        return {kind: metrics.reconstruction(MediaSet(str(self.data / kind / "heldout" / "*.tar"), modality,
                                                      vqgan.config.resolution, 10, limit=limit), vqgan, lpips)
                for kind, modality, limit in (("images", "image", self.size.samples),
                                              ("videos", "video", max(1, self.size.samples // 4)))}

    def render(self, checks: dict, fidelity: dict, reconstruction: dict, rows: list[str], palette: np.ndarray,
               codebook: int, seconds: float) -> str:
        colour_chance, direction_chance = 1 / len(COLOURS), 1 / len(DIRECTIONS)
        logged = (self.run / "metrics.jsonl").read_text().splitlines()
        first, state = json.loads(logged[0]), json.loads(logged[-1])
        lines = [
            "# NÜWA demo report", "",
            f"Pre-training: {self.size.pretrain_steps} steps on 2 CPU ranks (ZeRO-2), loss {first['loss']:.3f} at step 1 "
            f"→ {state['loss']:.3f} at step {state['step']}. TensorBoard: `tensorboard --logdir {self.run / 'tb'}`.", "",
            "## Learning check", "",
            "Generated samples decoded through the VQ-GAN; the object's colour (last frame) and motion direction "
            "(frame-to-frame centroid shifts over the generated frames, summed the short way round the wrapped "
            "frame) read from the pixels and compared with the caption. "
            "\"VQ-GAN ceiling\" applies the same analysis to the held-out inputs' own codes decoded by the VQ-GAN: "
            "what a perfect generator could score through this tokenizer. p is the one-sided binomial probability "
            "of at least that many matches at the chance rate. Pixels are read against the palette "
            "as the VQ-GAN draws it: " + ", ".join(f"{name} {tuple(int(round(c)) for c in rgb)}"
                                                    for name, rgb in zip(PALETTE_NAMES, palette)) + ".", "",
            "| task | samples | colour matches | VQ-GAN ceiling | chance | direction matches | VQ-GAN ceiling | chance |",
            "|---|---|---|---|---|---|---|---|"]
        for task, c in checks.items():
            direction = (f"{with_p_value(c['direction'], c['n'], direction_chance)} | {c['direction_truth']:.0%} | "
                         f"{direction_chance:.0%}" if "direction" in c else "– | – | –")
            colour = with_p_value(c["colour"], c["n"], colour_chance)
            lines.append(f"| {task} | {c['n']} | {colour} | {c['colour_truth']:.0%} | {colour_chance:.0%} | {direction} |")
        frames = len(next(iter(fidelity.values()))["generated"])
        lines += ["", "## Video fidelity, frame by frame", "",
                  "The share of clips whose frame still reads as the caption says: the caption's background is the "
                  "commonest colour, and one connected region of the caption's colour holds the frame's other pixels "
                  "(at most 10% of its size lie more than 2 px from it: the VQ-GAN's blended edges lie within). "
                  "T2V generates every frame; V2V is given frames 1-2. A shape that splits, smears or dissolves into "
                  "texture fails, even where the colour and direction checks above still count it as a match.", "",
                  "| task | " + " | ".join(f"frame {t + 1}" for t in range(frames)) + " |",
                  "|---|" + "---|" * frames]
        for task, shares in fidelity.items():
            for name, values in shares.items():
                label = task if name == "generated" else f"{task} VQ-GAN ceiling"
                lines.append(f"| {label} | " + " | ".join(f"{v:.0%}" for v in values) + " |")
        validations = [json.loads(line) for line in logged if '"val/' in line]
        lines += ["", "## Held-out loss", "",
                  "Mean negative log-likelihood per code (nats) of the held-out shards, teacher-forced, during "
                  f"pre-training (`trainer.eval_every`); chance is ln {codebook} = "
                  f"{np.log(codebook):.2f}.", "",
                  "| step | " + " | ".join(k.removeprefix("val/") for k in validations[-1] if k.startswith("val/")) + " |",
                  "|---|" + "---|" * sum(k.startswith("val/") for k in validations[-1])]
        for v in validations:
            lines.append(f"| {v['step']} | " + " | ".join(f"{x:.3f}" for k, x in v.items() if k.startswith("val/")) + " |")
        lines += ["", "## VQ-GAN reconstruction (held-out)", "",
                  "`tools/evaluate.py vqgan` on held-out media: PSNR and SSIM per image or frame, LPIPS (shift-tolerant "
                  "VGG).", "", "| media | count | PSNR (dB) | SSIM | LPIPS |", "|---|---|---|---|---|"]
        for kind, r in reconstruction.items():
            lpips = f"{r['lpips']:.3f}" if "lpips" in r else "–"
            lines.append(f"| held-out {kind} ({'frames' if kind == 'videos' else 'images'}) | {r['count']} | "
                         f"{r['psnr']:.2f} | {r['ssim']:.3f} | {lpips} |")
        lines += ["", f"Sampling and analysis took {seconds:.0f}s.", "", "## Samples", "",
                  "| task | caption | sample | colour read |", "|---|---|---|---|", *rows, ""]
        return "\n".join(lines)


def with_p_value(rate: float, n: int, chance: float) -> str:
    """'43% (p = 3e-05)': a match rate of n samples and its binomial p against the chance rate."""
    return f"{rate:.0%} (p = {chance_p_value(round(rate * n), n, chance):.1g})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "demo_out")
    parser.add_argument("--size", choices=list(SIZES), default="default")
    parser.add_argument("--fresh", action="store_true", help="delete --output first")
    parser.add_argument("--sketch", action="store_true",
                        help="then the S2I stage: VQ-GAN-Seg, sketch codes, fine-tuning, sketch-report.md (~7 more min)")
    args = parser.parse_args(argv)
    if args.fresh and args.output.exists():
        shutil.rmtree(args.output)
    args.output.mkdir(parents=True, exist_ok=True)
    demo, start = Demo(args.output.resolve(), SIZES[args.size]), time.perf_counter()
    demo.make_data()
    demo.train_tokenizer()
    demo.train_vqgan()
    demo.tokenize()
    demo.pretrain()
    report = demo.report()
    if args.sketch:
        report = demo.sketch()
    print(f"[demo] finished in {time.perf_counter() - start:.0f}s; report: {report}", flush=True)


if __name__ == "__main__":
    main()
