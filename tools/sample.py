"""Generate with a converted NÜWA model: T2I, T2V, V2V, and the zero-shot I2I, TI2I, TV2V.

    python tools/sample.py --model MODEL_DIR --vqgan VQGAN_DIR --task t2i --text "a red circle" --output out/
    python tools/sample.py ... --task v2v --input clip.mp4 --given-frames 2
    python tools/sample.py ... --task i2i --input photo.jpg --rows 32
    python tools/sample.py ... --task ti2i --input photo.jpg --region 16,16,48,48 --text "a blue square"
    python tools/sample.py ... --task tv2v --input clip.mp4 --from-frame 3 --text "a red circle moving up"

MODEL_DIR comes from `tools/convert_checkpoint.py to-safetensors`; its config.json names the
tokenizer (override with --tokenizer) and the VQ-GAN fingerprint, which --vqgan must match.
Images are written as a PNG grid of the candidates, videos as one GIF per candidate plus a
PNG strip of all frames.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.pretrained import load_pretrained, read_info
from model.sampling import SamplingConfig, generate
from model.tasks import INPUT_TASKS, TASKS, TEXT_TASKS, VIDEO_TASKS, keep_first_frames, keep_outside_region, keep_top_rows
from model.vqgan import VQGAN
from preprocess.readers import ClipSampling, load_image, model_to_uint8, uint8_to_model, video_clips
from preprocess.text import TEXT_LENGTH, CaptionTokenizer


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] → uint8 [..., H, W, 3]."""
    return model_to_uint8(images).movedim(-3, -1).cpu().numpy()


def save_image_grid(images: np.ndarray, path: Path) -> None:
    """uint8 [N, H, W, 3] → one PNG row."""
    Image.fromarray(np.concatenate(list(images), axis=1)).save(path)


def save_video(frames: np.ndarray, path: Path, fps: float) -> None:
    """uint8 [T, H, W, 3] → looping GIF at `fps`."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


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
        raise FileNotFoundError(f"--input {path}: no such file")
    data, resolution = path.read_bytes(), vqgan.config.resolution
    with torch.no_grad():
        if task in VIDEO_TASKS:
            clip = video_clips(data, ClipSampling(num_frames=frames), resolution)[0]  # [T, 3, H, W] uint8
            return vqgan.encode_video(uint8_to_model(torch.from_numpy(clip))[None])
        return vqgan.encode(load_image(data, resolution)[None])[:, None]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="converted model folder")
    parser.add_argument("--vqgan", required=True, type=Path, help="VQ-GAN folder (save_pretrained)")
    parser.add_argument("--tokenizer", help="sentencepiece model (default: the one config.json names)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--text", help="the caption (T2I, T2V, TI2I, TV2V)")
    parser.add_argument("--input", type=Path, help="image (I2I, TI2I) or video (V2V, TV2V)")
    parser.add_argument("--given-frames", type=int, default=1, help="V2V: frames of the input that are kept")
    parser.add_argument("--from-frame", type=int, default=1, help="TV2V: first frame that is regenerated")
    parser.add_argument("--rows", type=int, help="I2I: pixel rows kept from the top")
    parser.add_argument("--region", help="TI2I: top,left,bottom,right pixels regenerated")
    parser.add_argument("--num-candidates", type=int, default=4)
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
        paths = sample(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"sample: error: {e}", file=sys.stderr)
        sys.exit(1)
    print("\n".join(str(p) for p in paths))


def sample(args) -> list[Path]:
    """Run one task from parsed arguments; returns the files written."""
    start = time.perf_counter()
    info = read_info(args.model)
    model = load_pretrained(args.model, device=args.device)
    vqgan = VQGAN.from_pretrained(args.vqgan).to(args.device).eval()
    if info.get("vqgan_fingerprint") and info["vqgan_fingerprint"] != vqgan.fingerprint():
        raise ValueError(f"--vqgan {args.vqgan} (fingerprint {vqgan.fingerprint()}) is not the VQ-GAN the model was "
                         f"trained on ({info['vqgan_fingerprint']})")
    tokenizer_path = args.tokenizer or info.get("tokenizer")
    if not tokenizer_path:
        raise ValueError("no tokenizer: config.json names none; pass --tokenizer")
    tokenizer = CaptionTokenizer(tokenizer_path)
    if info.get("tokenizer_fingerprint") and info["tokenizer_fingerprint"] != tokenizer.fingerprint():
        raise ValueError(f"tokenizer {tokenizer_path} is not the one the model was trained with")
    if args.task in INPUT_TASKS and args.input is None:
        raise ValueError(f"--task {args.task} needs --input")

    config, task = model.config, args.task
    grid = config.video_grid if task in VIDEO_TASKS else config.image_grid
    reference = keep = None
    if task in INPUT_TASKS:
        reference = read_input_codes(args.input, task, vqgan, config.frames).to(args.device)
        downsample = vqgan.config.downsample
        keep = {"v2v": lambda: keep_first_frames(grid, args.given_frames),
                "tv2v": lambda: keep_first_frames(grid, args.from_frame),
                "i2i": lambda: keep_top_rows(grid, args.rows or 0, downsample),
                "ti2i": lambda: keep_outside_region(grid, _region(args.region), downsample)}[task]()
    text = encode_text(tokenizer, args.text, task).to(args.device).expand(args.num_candidates, -1)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    if args.guidance != 1.0 and task not in TEXT_TASKS:
        raise ValueError(f"--guidance steers towards --text; --task {task} has none")
    codes = generate(model, text, grid, reference=reference, keep=keep, generator=generator,
                     unconditional=none_text(tokenizer).to(args.device),
                     sampling=SamplingConfig(args.temperature, args.top_k, args.top_p, args.guidance))
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


def _region(text: str | None) -> tuple[int, int, int, int]:
    try:
        top, left, bottom, right = (int(v) for v in (text or "").split(","))
    except ValueError:
        raise ValueError(f"--region must be top,left,bottom,right in pixels, got {text!r}") from None
    return top, left, bottom, right


if __name__ == "__main__":
    main()
