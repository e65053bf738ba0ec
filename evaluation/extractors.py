"""The standard feature extractors, loaded from their public TorchScript files by path.

    Inception  `inception-2015-12-05.pt` (StyleGAN2-ADA / clean-fid): uint8 [N, 3, 299, 299] →
               `return_features=True` pool features [N, 2048]; `no_output_bias=True` class probabilities.
    I3D        `i3d_torchscript.pt` (StyleGAN-V FVD): float [N, 3, T, 224, 224] in [-1, 1] →
               `rescale=False, resize=False, return_features=True` logits-layer features [N, 400].
    CLIP       `ViT-B-32.pt` (OpenAI): `encode_image` of normalised [N, 3, 224, 224], `encode_text` of
               [N, 77] ids from evaluation/clip_text.py.

Resizing is ours and fixed, so that numbers compare across runs: PIL bicubic to 299 for Inception (the
"clean" resize of clean-fid), to 224 short side + centre crop for CLIP and I3D. Every result records
each file's SHA-256.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluation.clip_text import ClipTokenizer
from preprocess.readers import resize_center_crop

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def file_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_script(path: str | Path, device: torch.device) -> torch.jit.ScriptModule:
    """A TorchScript extractor on `device`, in float32 on CPU. Archives traced on a GPU in half precision
    (OpenAI's CLIP) carry "cuda" device constants and casts to float16 in their graphs: the devices are
    rewritten to `device`, and on CPU the casts to float32 (what the `clip` package does on loading)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"feature extractor {path}: no such file")
    module = torch.jit.load(str(path), map_location=device).eval()
    for graph in _graphs(module):
        for node in graph.findAllNodes("prim::Constant"):
            if "value" in node.attributeNames() and node.kindOf("value") == "s" and node.s("value").startswith("cuda"):
                node.s_("value", str(device))
        if device.type == "cpu":
            for cast in graph.findAllNodes("aten::to"):
                for value in list(cast.inputs())[1:3]:
                    node = value.node()
                    if node.kind() == "prim::Constant" and "value" in node.attributeNames() \
                            and node.kindOf("value") == "i" and node.i("value") == 5:  # 5 = torch.half
                        node.i_("value", 6)  # 6 = torch.float
    return module.float() if device.type == "cpu" else module


def _graphs(module: torch.jit.ScriptModule) -> list:
    graphs = []
    for owner in [module, *module.modules()]:
        for name in ("forward", "encode_image", "encode_text"):
            try:
                graphs.append(getattr(owner, name).graph)
            except (AttributeError, RuntimeError):
                continue
    return graphs


class Inception:
    def __init__(self, path: str | Path, device: torch.device):
        self.path, self.device, self.model = Path(path), device, load_script(path, device)

    def _input(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] → uint8 [N, 3, 299, 299]."""
        resized = [np.asarray(Image.fromarray(x).resize((299, 299), Image.BICUBIC)) for x in images]
        return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(self.device)

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        return self.model(self._input(images), return_features=True).double().cpu().numpy()

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.model(self._input(images), no_output_bias=True).double().cpu().numpy()


class I3D:
    def __init__(self, path: str | Path, device: torch.device):
        self.path, self.device, self.model = Path(path), device, load_script(path, device)

    @torch.no_grad()
    def features(self, videos: np.ndarray) -> np.ndarray:
        """uint8 [N, T, H, W, 3] → [N, D]."""
        frames = [[np.asarray(resize_center_crop(Image.fromarray(f), 224)) for f in video] for video in videos]
        x = torch.from_numpy(np.array(frames)).to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        return self.model(x, rescale=False, resize=False, return_features=True).double().cpu().numpy()


class Clip:
    def __init__(self, path: str | Path, vocab: str | Path, device: torch.device):
        self.path, self.device, self.model = Path(path), device, load_script(path, device)
        self.vocab, self.tokenizer = Path(vocab), ClipTokenizer(vocab)
        self.mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def image_features(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] → unit vectors [N, D]."""
        x = np.stack([np.asarray(resize_center_crop(Image.fromarray(i), 224)) for i in images])
        x = (torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std
        features = self.model.encode_image(x).float()
        return features / features.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        features = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
        return features / features.norm(dim=-1, keepdim=True)
