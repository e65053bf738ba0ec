"""LPIPS perceptual distance (Zhang et al. 2018) on a VGG16 trunk, with weights read from files.

VQ-GAN training adds LPIPS to the pixel loss (paper Eq. 4) so that reconstructions are judged by
features, not only pixels. Nothing is downloaded; weights come from one of:

- the PyPI package `stlpips-pytorch` (`pip install stlpips-pytorch`, it declares no dependencies):
  `weights/vST0.0/vgg_shift_tolerant.pth`, the shift-tolerant LPIPS-VGG of Ghildyal & Liu (2022),
  trunk and heads in one file (~59 MB). Its trunk pools with max-pool stride 1 followed by a
  BlurPool (reflect pad, [1,2,1]² blur, stride 2), which `BlurPool` below mirrors. We only read
  the file: the package's own code imports torchvision, which does not work beside the CPU torch;
- standard LPIPS-VGG: one full state dict (`net.slice*`, `lin*`), such as the
  `loss.perceptual_loss.*` part of a taming-transformers checkpoint, or torchvision's VGG16
  (`features.N.*`) together with the lpips package's linear heads (`vgg.pth`).

The module names mirror lpips' (`net.slice2.5.filt`, `lin0.model.1.weight`), so those files
load as they are.
"""
from __future__ import annotations

import importlib.util
import logging
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.storage import load_checked, load_torch

log = logging.getLogger(__name__)

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
"""Conv widths of VGG16's five stages; LPIPS taps the last ReLU of each (relu1_2 … relu5_3)."""


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect-pad 2, depthwise [1,2,1]⊗[1,2,1]/16 blur, stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (a[:, None] * a[None, :] / 16).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class VGG16Trunk(nn.Module):
    """VGG16's conv layers as five slices, each ending at the ReLU that LPIPS reads.

    Layer indices follow torchvision's `vgg16().features` (standard) or stlpips' variant, whose
    pooling is MaxPool(2, stride 1) + BlurPool and so takes two indices.
    """

    def __init__(self, shift_tolerant: bool):
        super().__init__()
        index, width = 0, 3
        for stage, widths in enumerate(VGG16_STAGES):
            layers = OrderedDict()
            if stage > 0:
                if shift_tolerant:
                    layers[str(index)], layers[str(index + 1)] = nn.MaxPool2d(2, stride=1), BlurPool(width)
                    index += 2
                else:
                    layers[str(index)] = nn.MaxPool2d(2, stride=2)
                    index += 1
            for out in widths:
                layers[str(index)], layers[str(index + 1)] = nn.Conv2d(width, out, 3, padding=1), nn.ReLU()
                index, width = index + 2, out
            self.add_module(f"slice{stage + 1}", nn.Sequential(layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in range(len(VGG16_STAGES)):
            x = getattr(self, f"slice{stage + 1}")(x)
            features.append(x)  # (B, C_stage, H_stage, W_stage)
        return features


class LinearHead(nn.Module):
    """LPIPS' learned per-channel weights (a 1×1 conv to one channel); dropout only as in the
    original layout (index 0), inactive because the metric always runs in eval mode."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """Frozen perceptual distance between images in [-1, 1]: (B, 3, H, W) × 2 → (B,).

    Per stage: unit-normalise features over channels, square the difference, weight channels
    with the linear head, average over space; sum the five stages. Gradients flow to the inputs.
    """

    def __init__(self, shift_tolerant: bool = True):
        super().__init__()
        # lpips v0.1 input scaling: ImageNet statistics expressed for inputs in [-1, 1]
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Trunk(shift_tolerant)
        for i, widths in enumerate(VGG16_STAGES):
            self.add_module(f"lin{i}", LinearHead(widths[-1]))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # a frozen metric: never dropout, whatever the caller's mode

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = (torch.cat([a, b]) - self.shift) / self.scale  # one trunk pass for both, (2B, 3, H, W)
        total = 0
        for i, features in enumerate(self.net(x)):
            features = features / (features.norm(dim=1, keepdim=True) + 1e-10)
            fa, fb = features.chunk(2)
            total = total + getattr(self, f"lin{i}")((fa - fb) ** 2).mean(dim=(2, 3))  # (B, 1)
        return total.view(-1)

    @classmethod
    def from_files(cls, *paths: str | Path) -> "LPIPS":
        """Build from weight files (see the module docstring); the variant is read off the keys."""
        state = {}
        for path in paths:
            state.update(lpips_keys(load_torch(path)))
        model = cls(shift_tolerant=any(k.endswith(".filt") for k in state))
        load_checked(model, state, " + ".join(str(p) for p in paths))
        return model


def lpips_keys(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The one key mapping from the supported LPIPS weight files to `LPIPS`'s state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    if any(k.startswith("loss.perceptual_loss.") for k in state):  # a taming-transformers checkpoint
        state = {k[len("loss.perceptual_loss."):]: v for k, v in state.items() if k.startswith("loss.perceptual_loss.")}
    out = {}
    for key, value in state.items():
        if key.startswith(("scaling_layer.", "classifier.")):
            continue  # input scaling is a constant here; VGG's classifier is unused
        if key.startswith("features."):  # torchvision vgg16: features.N → the slice holding layer N
            n = int(key.split(".")[1])
            stage = 1 + sum(n >= start for start in (4, 9, 16, 23))
            key = f"net.slice{stage}.{key[len('features.'):]}"
        out[key] = value
    return out


def default_weights() -> list[Path]:
    """The shift-tolerant LPIPS-VGG file of the installed `stlpips-pytorch` package, or [] if absent.
    Found through the import system without importing the package."""
    spec = importlib.util.find_spec("stlpips_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(spec.submodule_search_locations[0]) / "weights" / "vST0.0" / "vgg_shift_tolerant.pth"
    return [path] if path.is_file() else []


def load_lpips(weights: str) -> LPIPS | None:
    """`weights`: "auto" (the stlpips package's file if installed), "none", or comma-separated paths.
    Returns None, with one log line, when the perceptual loss is off."""
    if weights == "none":
        log.info("perceptual loss off (lpips weights: none)")
        return None
    paths = default_weights() if weights == "auto" else [Path(p) for p in weights.split(",")]
    if not paths:
        log.warning("perceptual loss off: no LPIPS weights found (pip install stlpips-pytorch, "
                    "or set loss.lpips_weights to LPIPS-VGG weight files)")
        return None
    return LPIPS.from_files(*paths)
