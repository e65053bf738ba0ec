"""Generate with a converted NÜWA model: T2I, T2V, V2V, and the zero-shot I2I, TI2I, TV2V.

One condition at a time:

    python tools/sample.py --model MODEL_DIR --vqgan VQGAN_DIR --task t2i --text "a red circle" --output out/
    python tools/sample.py ... --task v2v --input clip.mp4 --given-frames 2
    python tools/sample.py ... --task i2i --input photo.jpg --rows 32
    python tools/sample.py ... --task ti2i --input photo.jpg --region 16,16,48,48 --text "a blue square"
    python tools/sample.py ... --task tv2v --input clip.mp4 --from-frame 3 --text "a red circle moving up"
    python tools/sample.py ... --task s2i --sketch map.seg.png --vqgan-seg VQGAN_SEG_DIR
    python tools/sample.py ... --task s2v --sketch clip.seg.npz --vqgan-seg VQGAN_SEG_DIR

MODEL_DIR comes from `tools/convert_checkpoint.py to-safetensors`; its config.json names the
tokenizer (override with --tokenizer) and the VQ-GAN fingerprint, which --vqgan must match.
Images are written as a PNG grid of the candidates, videos as one GIF per candidate plus a
PNG strip of all frames.

Evaluation sets, many conditions at once (docs/evaluation.md):

    torchrun --nproc_per_node 8 tools/sample.py ... --task t2i --prompts captions.jsonl --num-samples 1 --output gen/
    python tools/sample.py ... --task v2v --shards shards/videos-heldout --given-frames 1 --output gen/

Each line of --prompts is {"text": …}, {"input": path} and/or {"sketch": path} (relative to the file);
--shards takes the captions, codes and sketch codes of held-out shards. Rows (condition × sample) run in
batches of --batch-size, batch b on rank b mod world; every row draws its own noise seeded by (seed,
condition, sample), so any number of ranks writes the same files. Finished files are skipped on a rerun.
Output: `{index:06d}-{sample}.png` or `.mp4`, `sampling.json` (the settings; a rerun with others is
refused) and `index.jsonl` (written last: one {"path", "caption", "index", "sample", "task", "input",
"sketch"} per file, an index file that preprocessing and tools/evaluate.py read).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from model.pretrained import load_pretrained, read_info
from model.storage import atomic_write, changed_settings
from model.sampling import SamplingConfig, generate
from model.tasks import (INPUT_TASKS, SKETCH_TASKS, TASKS, TEXT_TASKS, VIDEO_TASKS, keep_first_frames,
                         keep_outside_region, keep_top_rows)
from model.vqgan import VQGAN
from preprocess.readers import (ClipSampling, SkipInput, label_clips, label_map, load_image, model_to_uint8,
                                uint8_to_model, video_clips)
from preprocess.shards import ShardDataset
from preprocess.text import TEXT_LENGTH, CaptionTokenizer
from pretrain.data import open_checked
from pretrain.distributed import agree, init_distributed
from tools.media import save_image_grid, save_video, write_mp4, write_png


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] → uint8 [..., H, W, 3]."""
    return model_to_uint8(images).movedim(-3, -1).cpu().numpy()


def none_text(tokenizer: CaptionTokenizer) -> torch.Tensor:
    """[1, 77] ids of the "None" condition: V2V and I2I, and the unconditional half of guidance."""
    return torch.from_numpy(tokenizer.encode_none()[0].astype(np.int64))[None]


def encode_text(tokenizer: CaptionTokenizer, text: str | None, task: str) -> torch.Tensor:
    """[1, 77] ids: the caption (a warning when it is cut), or the "None" condition for V2V and I2I."""
    if task not in TEXT_TASKS:
        return none_text(tokenizer)
    if not text:
        raise ValueError(f"--task {task} needs --text")
    ids, _ = tokenizer.encode(text)
    if tokenizer.piece_count(text) > TEXT_LENGTH - 2:
        print(f"sample: warning: the prompt has {tokenizer.piece_count(text)} pieces; only the first "
              f"{TEXT_LENGTH - 2} fit the {TEXT_LENGTH}-position text grid", file=sys.stderr)
    return torch.from_numpy(ids.astype(np.int64))[None]


def read_input_codes(path: Path, task: str, vqgan: VQGAN, frames: int) -> torch.Tensor:
    """The --input image or video as VQ codes [1, S, h, w] (videos: `frames` frames at 2.5 fps)."""
    if not path.is_file():
        raise FileNotFoundError(f"input {path}: no such file")
    data, resolution = path.read_bytes(), vqgan.config.resolution
    with torch.no_grad():
        if task in VIDEO_TASKS:
            clip = video_clips(data, ClipSampling(num_frames=frames), resolution)[0]  # [T, 3, H, W] uint8
            return vqgan.encode_video(uint8_to_model(torch.from_numpy(clip))[None])
        return vqgan.encode(load_image(data, resolution)[None])[:, None]


def read_sketch_codes(path: Path, task: str, vqgan_seg: VQGAN | None, frames: int) -> torch.Tensor:
    """A label map (S2I: PNG of class ids) or label stack (S2V: npz of `labels` and `fps`) as sketch codes
    [1, S, h, w], coded by the VQ-GAN-Seg (a video's maps at the clip's 2.5-fps frame times)."""
    if vqgan_seg is None:
        raise ValueError(f"--task {task} needs --vqgan-seg, the VQ-GAN-Seg that codes the sketch")
    if not path.is_file():
        raise FileNotFoundError(f"sketch {path}: no such file")
    config = vqgan_seg.config
    try:
        if task == "s2v":
            labels = label_clips(path.read_bytes(), [0.0], ClipSampling(num_frames=frames), config.resolution,
                                 config.num_classes)[0]
        else:
            labels = label_map(path.read_bytes(), config.resolution, config.num_classes)[None]
    except SkipInput as error:
        raise ValueError(f"sketch {path}: {error}") from None
    return vqgan_seg.encode(torch.from_numpy(labels.astype(np.int64)))[None]  # [1, S, h, w]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="converted model folder")
    parser.add_argument("--vqgan", required=True, type=Path, help="VQ-GAN folder (save_pretrained)")
    parser.add_argument("--tokenizer", help="sentencepiece model (default: the one config.json names)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--text", help="the caption (T2I, T2V, TI2I, TV2V)")
    parser.add_argument("--input", type=Path, help="image (I2I, TI2I) or video (V2V, TV2V)")
    parser.add_argument("--sketch", type=Path, help="S2I: label map (PNG of class ids); S2V: label stack (.npz)")
    parser.add_argument("--vqgan-seg", type=Path, help="the VQ-GAN-Seg folder that codes sketches (S2I, S2V)")
    parser.add_argument("--prompts", type=Path, help="evaluation set: JSONL, one condition per line ({\"text\", \"input\"})")
    parser.add_argument("--shards", type=Path, help="evaluation set: held-out code shards (their captions and codes)")
    parser.add_argument("--limit", type=int, help="evaluation set: its first N conditions only")
    parser.add_argument("--num-samples", type=int, default=1, help="evaluation set: samples per condition")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation set: rows per batch")
    parser.add_argument("--given-frames", type=int, default=1, help="V2V: frames of the input that are kept")
    parser.add_argument("--from-frame", type=int, default=1, help="TV2V: first frame that is regenerated")
    parser.add_argument("--rows", type=int, help="I2I: pixel rows kept from the top")
    parser.add_argument("--region", help="TI2I: top,left,bottom,right pixels regenerated")
    parser.add_argument("--num-candidates", type=int, default=4, help="one condition: candidates drawn")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--guidance", type=float, default=1.0,
                        help="classifier-free guidance scale for text tasks (1 = off; the model needs data.caption_dropout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        paths = sample_set(args) if args.prompts or args.shards else sample(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"sample: error: {e}", file=sys.stderr)
        sys.exit(1)
    print("\n".join(str(p) for p in paths))


@dataclasses.dataclass
class Parts:
    """What every sampling call needs, loaded and checked against each other."""
    model: torch.nn.Module
    vqgan: VQGAN
    tokenizer: CaptionTokenizer
    info: dict
    vqgan_seg: VQGAN | None = None


def load_parts(args, device: str | torch.device) -> Parts:
    info = read_info(args.model)
    model = load_pretrained(args.model, device=device)
    vqgan = VQGAN.from_pretrained(args.vqgan).to(device).eval()
    if info.get("vqgan_fingerprint") and info["vqgan_fingerprint"] != vqgan.fingerprint():
        raise ValueError(f"--vqgan {args.vqgan} (fingerprint {vqgan.fingerprint()}) is not the VQ-GAN the model was "
                         f"trained on ({info['vqgan_fingerprint']})")
    tokenizer_path = args.tokenizer or info.get("tokenizer")
    if not tokenizer_path:
        raise ValueError("no tokenizer: config.json names none; pass --tokenizer")
    tokenizer = CaptionTokenizer(tokenizer_path)
    if info.get("tokenizer_fingerprint") and info["tokenizer_fingerprint"] != tokenizer.fingerprint():
        raise ValueError(f"tokenizer {tokenizer_path} is not the one the model was trained with")
    if args.guidance != 1.0 and args.task not in TEXT_TASKS:
        raise ValueError(f"--guidance steers towards --text; --task {args.task} has none")
    if args.task in SKETCH_TASKS and not model.config.sketch_codebook_size:
        raise ValueError(f"--task {args.task}: {args.model} has no sketch encoder (model.sketch_codebook_size 0)")
    vqgan_seg = VQGAN.from_pretrained(args.vqgan_seg).to(device).eval() if args.vqgan_seg else None
    if vqgan_seg is not None and vqgan_seg.config.codebook_size != model.config.sketch_codebook_size:
        raise ValueError(f"--vqgan-seg {args.vqgan_seg} has {vqgan_seg.config.codebook_size} codes; the model reads "
                         f"sketches of {model.config.sketch_codebook_size}")
    if vqgan_seg is not None and info.get("vqgan_seg_fingerprint") not in (None, vqgan_seg.fingerprint()):
        raise ValueError(f"--vqgan-seg {args.vqgan_seg} (fingerprint {vqgan_seg.fingerprint()}) is not the VQ-GAN-Seg "
                         f"that coded the model's sketches ({info['vqgan_seg_fingerprint']})")
    return Parts(model, vqgan, tokenizer, info, vqgan_seg)


def task_keep(args, grid: tuple[int, int, int], downsample: int) -> torch.Tensor | None:
    """[S, H, W] positions copied from the input: what the task's flags ask for (None: generate all)."""
    return {"v2v": lambda: keep_first_frames(grid, args.given_frames),
            "tv2v": lambda: keep_first_frames(grid, args.from_frame),
            "i2i": lambda: keep_top_rows(grid, args.rows or 0, downsample),
            "ti2i": lambda: keep_outside_region(grid, _region(args.region), downsample)}.get(args.task, lambda: None)()


def sampling_config(args) -> SamplingConfig:
    return SamplingConfig(args.temperature, args.top_k, args.top_p, args.guidance)


def sample(args) -> list[Path]:
    """Run one task from parsed arguments; returns the files written."""
    start = time.perf_counter()
    parts = load_parts(args, args.device)
    if args.task in INPUT_TASKS and args.input is None:
        raise ValueError(f"--task {args.task} needs --input")
    model, vqgan, task = parts.model, parts.vqgan, args.task
    grid = model.config.video_grid if task in VIDEO_TASKS else model.config.image_grid
    keep = task_keep(args, grid, vqgan.config.downsample)
    reference = sketch = None
    if task in INPUT_TASKS:
        reference = read_input_codes(args.input, task, vqgan, model.config.frames).to(args.device)
    if task in SKETCH_TASKS:
        if args.sketch is None:
            raise ValueError(f"--task {task} needs --sketch")
        sketch = read_sketch_codes(args.sketch, task, parts.vqgan_seg, grid[0]).to(args.device)
        sketch = sketch.expand(args.num_candidates, -1, -1, -1)
    text = encode_text(parts.tokenizer, args.text, task).to(args.device).expand(args.num_candidates, -1)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    codes = generate(model, text, grid, reference=reference, keep=keep, generator=generator, sketch=sketch,
                     unconditional=none_text(parts.tokenizer).to(args.device), sampling=sampling_config(args))
    with torch.no_grad():
        pixels = to_uint8(vqgan.decode_video(codes))  # [N, T, H, W, 3]
    args.output.mkdir(parents=True, exist_ok=True)
    written = []
    if task in VIDEO_TASKS:
        for i, frames in enumerate(pixels):
            written.append(args.output / f"{task}-{i}.gif")
            save_video(frames, written[-1], fps=2.5)
        written.append(args.output / f"{task}-frames.png")
        Image.fromarray(np.concatenate([np.concatenate(list(v), axis=1) for v in pixels], axis=0)).save(written[-1])
    else:
        written.append(args.output / f"{task}.png")
        save_image_grid(pixels[:, 0], written[-1])
    print(f"sampled {task}: {args.num_candidates} candidates of {grid} codes in {time.perf_counter() - start:.1f}s",
          file=sys.stderr)
    return written


@dataclasses.dataclass(frozen=True)
class Condition:
    """One item of an evaluation set: its caption, input and/or sketch (files, or a held-out shard sample)."""
    text: str | None
    input: str | None
    shard_index: int | None = None
    sketch: str | None = None


def read_prompts(path: Path, task: str) -> list[Condition]:
    """--prompts JSONL → conditions; input paths are relative to the file; lines that miss what the task needs
    are refused by line number."""
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file")
    conditions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"--prompts {path} line {number}: not JSON ({e})") from None
        if not isinstance(item, dict) or set(item) - {"text", "input", "sketch"}:
            raise ValueError(f"--prompts {path} line {number}: expected an object with \"text\", \"input\" "
                             f"and/or \"sketch\"")
        if task in TEXT_TASKS and not item.get("text"):
            raise ValueError(f"--prompts {path} line {number}: --task {task} needs \"text\"")
        if task in INPUT_TASKS and not item.get("input"):
            raise ValueError(f"--prompts {path} line {number}: --task {task} needs \"input\"")
        if task in SKETCH_TASKS and not item.get("sketch"):
            raise ValueError(f"--prompts {path} line {number}: --task {task} needs \"sketch\"")
        files = {}
        for field in ("input", "sketch"):
            file = item.get(field)
            if file and not Path(file).is_absolute():
                file = str(path.parent / file)
            if file and not Path(file).is_file():
                raise FileNotFoundError(f"--prompts {path} line {number}: {field} {file}: no such file")
            files[field] = file
        conditions.append(Condition(item.get("text") if task in TEXT_TASKS else None, files["input"],
                                    sketch=files["sketch"] if task in SKETCH_TASKS else None))
    return conditions


def read_shard_conditions(shards: ShardDataset, task: str, tokenizer: CaptionTokenizer) -> list[Condition]:
    """Every sample of held-out shards (text tasks: every captioned one), its caption decoded for the index."""
    lengths = shards.text_lengths()
    conditions = []
    for i in range(len(shards)):
        if task in TEXT_TASKS and lengths[i] == 0:
            continue
        text = tokenizer.decode(shards[i]["text"], int(lengths[i])) if task in TEXT_TASKS else None
        conditions.append(Condition(text, f"shards:{shards.key(i)}" if task in INPUT_TASKS else None, i,
                                    f"shards:{shards.key(i)}" if task in SKETCH_TASKS else None))
    return conditions


def row_noise(seed: int, index: int, sample: int, tokens: int) -> torch.Tensor:
    """[tokens] uniform draws of one row, from a CPU generator seeded by (seed, condition, sample) alone."""
    digest = hashlib.blake2b(f"{seed}:{index}:{sample}".encode(), digest_size=8).digest()
    return torch.rand(tokens, generator=torch.Generator().manual_seed(int.from_bytes(digest, "little")))


def check_settings(output: Path, settings: dict) -> None:
    """Refuse an output folder whose finished files were made with other settings."""
    path = output / "sampling.json"
    changed = changed_settings(path, settings)
    if changed:
        raise ValueError(f"{output} holds samples made with other settings ({', '.join(changed)} differ; see "
                         f"{path}); choose another --output")


def sample_set(args) -> list[Path]:
    """Sample an evaluation set (see the module docstring); returns [index.jsonl]."""
    if args.text or args.input or args.sketch:
        raise ValueError("--text/--input/--sketch give one condition; an evaluation set takes its conditions from "
                         "--prompts or --shards")
    if args.prompts and args.shards:
        raise ValueError("pass --prompts or --shards, not both")
    if args.num_samples < 1 or args.batch_size < 1:
        raise ValueError("--num-samples and --batch-size must be at least 1")
    start = time.perf_counter()
    owns_group = not dist.is_initialized()  # a caller's group (in-process use) stays up
    rank, world, device = init_distributed("cuda" if str(args.device).startswith("cuda") else "cpu")
    parts = load_parts(args, device)
    model, vqgan, tokenizer, task = parts.model, parts.vqgan, parts.tokenizer, args.task
    grid = model.config.video_grid if task in VIDEO_TASKS else model.config.image_grid
    keep = task_keep(args, grid, vqgan.config.downsample)
    shards = None
    if args.shards:
        modality = "video" if task in VIDEO_TASKS else "image"
        shards = open_checked(str(args.shards), modality, model.config, tokenizer.fingerprint(), task in SKETCH_TASKS)
        conditions = read_shard_conditions(shards, task, tokenizer)
    else:
        conditions = read_prompts(args.prompts, task)
    conditions = conditions[:args.limit]
    if not conditions:
        raise ValueError(f"no conditions for --task {task} in {args.prompts or args.shards}")
    settings = {"task": task, "model": str(args.model.resolve()), "step": parts.info.get("step"),
                "vqgan": vqgan.fingerprint(), "conditions": hashlib.sha256(
                    json.dumps([dataclasses.astuple(c) for c in conditions]).encode()).hexdigest(),
                "num_samples": args.num_samples, "seed": args.seed, **dataclasses.asdict(sampling_config(args)),
                **{k: getattr(args, k) for k in ("given_frames", "from_frame", "rows", "region")}}
    check_settings(args.output, settings)
    dist.barrier()
    if rank == 0:
        args.output.mkdir(parents=True, exist_ok=True)
        atomic_write(args.output / "sampling.json", json.dumps(settings, indent=1, sort_keys=True))
    extension = "mp4" if task in VIDEO_TASKS else "png"
    rows = [(i, j) for i in range(len(conditions)) for j in range(args.num_samples)]
    name = {row: f"{row[0]:06d}-{row[1]}.{extension}" for row in rows}
    batches = [rows[b: b + args.batch_size] for b in range(0, len(rows), args.batch_size)][rank::world]
    todo = [batch for batch in batches if not all((args.output / name[row]).exists() for row in batch)]
    done = sum(map(len, todo))

    def run_batches():
        for batch in tqdm(todo, desc=f"sample {task}", unit="batch", disable=rank != 0):
            write_batch(args, parts, [(conditions[i], i, j) for i, j in batch], grid, keep, shards, device,
                        [args.output / name[row] for row in batch])

    agree(run_batches, (ValueError, FileNotFoundError))
    if rank == 0:
        index = [json.dumps({"path": name[(i, j)], "caption": conditions[i].text, "index": i, "sample": j, "task": task,
                             "input": conditions[i].input, "sketch": conditions[i].sketch}, ensure_ascii=False)
                 for i, j in rows]
        atomic_write(args.output / "index.jsonl", "\n".join(index) + "\n")
    seconds = time.perf_counter() - start
    if rank == 0:
        print(f"sampled {task}: {len(rows)} files of {len(conditions)} conditions ({done} rows on rank 0 of {world}, "
              f"the rest skipped as done or on other ranks) in {seconds:.1f}s", file=sys.stderr)
    if owns_group:
        dist.destroy_process_group()
    return [args.output / "index.jsonl"]


def write_batch(args, parts: Parts, rows: list[tuple[Condition, int, int]], grid, keep, shards, device, paths):
    """Generate and write one batch of rows (condition, index, sample)."""
    model, vqgan, tokenizer, task = parts.model, parts.vqgan, parts.tokenizer, args.task
    texts, references, sketches = [], [], []
    for condition, _, _ in rows:
        if shards is not None:
            sample = shards[condition.shard_index]
            texts.append(torch.from_numpy(sample["text"].astype(np.int64))[None] if task in TEXT_TASKS
                         else none_text(tokenizer))
            references.append(torch.from_numpy(sample["codes"][:grid[0]].astype(np.int64))[None])
            if task in SKETCH_TASKS:
                sketches.append(torch.from_numpy(sample["sketch"][:grid[0]].astype(np.int64))[None])
        else:
            texts.append(encode_text(tokenizer, condition.text, task))
            if task in INPUT_TASKS:
                references.append(read_input_codes(Path(condition.input), task, vqgan, grid[0]))
            if task in SKETCH_TASKS:
                sketches.append(read_sketch_codes(Path(condition.sketch), task, parts.vqgan_seg, grid[0]))
    n = grid[0] * grid[1] * grid[2]
    noise = torch.stack([row_noise(args.seed, index, sample, n) for _, index, sample in rows])
    codes = generate(model, torch.cat(texts).to(device), grid,
                     reference=torch.cat(references).to(device) if task in INPUT_TASKS else None, keep=keep,
                     noise=noise.to(device), unconditional=none_text(tokenizer).to(device),
                     sampling=sampling_config(args), sketch=torch.cat(sketches).to(device) if sketches else None)
    with torch.no_grad():
        pixels = to_uint8(vqgan.decode_video(codes))  # [B, T, H, W, 3]
    for frames, path in zip(pixels, paths):
        if task in VIDEO_TASKS:
            write_mp4(frames, path, fps=2.5)
        else:
            write_png(frames[0], path)


def _region(text: str | None) -> tuple[int, int, int, int]:
    try:
        top, left, bottom, right = (int(v) for v in (text or "").split(","))
    except ValueError:
        raise ValueError(f"--region must be top,left,bottom,right in pixels, got {text!r}") from None
    return top, left, bottom, right


if __name__ == "__main__":
    main()
