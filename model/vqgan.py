"""VQ-GAN: the 2D visual tokenizer that turns every image and video frame into a grid of codes.

Paper Sec. 3.1 (Eq. 1-5): an encoder E maps an image to a grid of vectors, each vector is
replaced by its nearest codebook entry, and a decoder G maps the quantized grid back to pixels.
NÜWA-336 codes 336×336 images as 21×21 codes (downsampling 16, codebook 12,288); NÜWA-256
codes 256×256 images as 32×32 codes (downsampling 8).

The network mirrors taming-transformers' `VQModel` module for module and name for name
(`encoder.down.N.block.M`, `quantize.embedding.weight`, `quant_conv`, `post_quant_conv`,
`decoder.up.N...`), so the public taming checkpoints (e.g. the f16 ImageNet models) load with
`VQGAN.from_taming`. The file reads top to bottom: config → building blocks → encoder →
decoder → quantizer → VQGAN → checkpoint loading.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model import typed_config
from model.storage import atomic_path, atomic_write, load_checked, load_torch


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
NORMS = ("group", "pixel")


@dataclass
class VQGANConfig:
    """Architecture of one VQ-GAN; the defaults are the paper's f16 model (336 px → 21×21, 12,288 codes)."""
    resolution: int = 336
    """Image side in pixels that the model codes; the code grid is resolution // downsample."""
    in_channels: int = 3
    """Channels of the input images (RGB)."""
    out_channels: int = 3
    """Channels of the decoded images (RGB)."""
    ch: int = 128
    """Base channel width; level i has ch * ch_mult[i] channels."""
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    """Channel multiplier per resolution level; len(ch_mult) - 1 stride-2 steps give downsample 2**(len - 1)."""
    num_res_blocks: int = 2
    """ResnetBlocks per level in the encoder (the decoder has one more per level, as in taming)."""
    attn_levels: tuple[int, ...] = (4,)
    """Levels (0 = full resolution) with self-attention after each ResnetBlock. taming names them by
    resolution instead (`attn_resolutions: [16]` at 256 px is level 4 of a five-level model)."""
    mid_attention: bool = True
    """Self-attention in the encoder's and decoder's middle block (taming always has it). Without it
    and without attn_levels, only GroupNorm's map-wide statistics reach past the convolutions'
    receptive field (see encoder_norm): what a region looks like is then held by that region's own
    codes, which a generator attending to nearby codes can see."""
    encoder_middle: bool = True
    """The encoder's middle block (ResnetBlock, attention, ResnetBlock at the lowest resolution; taming
    checkpoints always have it). Without it and with num_res_blocks 0, a code sees its own cell and
    about one cell around it instead of ±10 codes of pixels (tiny preset): codes of a plain background
    far from any shape are then one code."""
    z_channels: int = 256
    """Channels of the encoder output and the decoder input."""
    embed_dim: int = 256
    """Dimension of one codebook vector."""
    codebook_size: int = 12288
    """Number of codes; at most 65,536 so that codes fit uint16 in the shards."""
    beta: float = 0.25
    """Commitment weight: pulls encoder outputs toward their codes (VQ-VAE's beta)."""
    norm_groups: int = 32
    """GroupNorm groups (taming uses 32; the tiny preset uses fewer so that narrow layers still normalise)."""
    encoder_norm: str = "group"
    """The encoder's normalisation. "group": GroupNorm as taming, statistics over the whole feature map,
    so every code depends on the image's global statistics (a plain background takes many codes).
    "pixel": each position normalised over its own channels (LayerNorm per pixel, GroupNorm's parameter
    names): with no attention either, a code depends only on the pixels its convolutions reach (about
    ±10 codes for the tiny preset's levels, the whole frame of a 64-px image). The decoder keeps
    GroupNorm, whose statistics over the map amplify the small codes of taming's initialisation early in
    training; with per-pixel norm there too the codebook can collapse onto one point (docs/decisions.md)."""
    dropout: float = 0.0
    """Dropout inside ResnetBlocks."""
    num_classes: int = 0
    """0: an image VQ-GAN. N > 0: a VQ-GAN-Seg (the paper's sketch tokenizer) for label maps of N classes:
    its input is the one-hot map and its output class logits, so in_channels and out_channels are N."""
    padding_mode: str = "zeros"
    """How 3×3 convs (and the downsampling pad) see past the border: "zeros" (taming), "reflect",
    "replicate" or "circular". With "circular" the encoder is exactly equivariant to shifts by whole
    codes, so a flat frame is one code and content moving by a code keeps its codes: for images whose
    content wraps around (tiling textures, periodic simulations; both axes wrap). See docs/vqgan.md."""

    def __post_init__(self):
        self.ch_mult, self.attn_levels = tuple(self.ch_mult), tuple(self.attn_levels)
        if not 1 < self.codebook_size <= 65536:
            raise ValueError(f"codebook_size must be in 2..65536 so codes fit uint16, got {self.codebook_size}")
        if self.resolution % self.downsample:
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling factor {self.downsample}")
        widths = [self.ch * m for m in self.ch_mult]
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"channel widths {widths} must be divisible by norm_groups={self.norm_groups}")
        if self.encoder_norm not in NORMS:
            raise ValueError(f"encoder_norm must be one of {NORMS}, got {self.encoder_norm!r}")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}")
        if self.num_res_blocks < 1 and len(set(self.ch_mult)) > 1:
            raise ValueError(f"num_res_blocks 0 leaves no block to change the width: ch_mult {self.ch_mult} "
                             f"must then be one value")
        if any(not 0 <= level < len(self.ch_mult) for level in self.attn_levels):
            raise ValueError(f"attn_levels {self.attn_levels} must lie in 0..{len(self.ch_mult) - 1}")
        if self.num_classes < 0 or self.num_classes == 1:
            raise ValueError(f"num_classes must be 0 (images) or at least 2 (label maps), got {self.num_classes}")
        if self.num_classes and (self.in_channels, self.out_channels) != (self.num_classes, self.num_classes):
            raise ValueError(f"a VQ-GAN-Seg of {self.num_classes} classes reads and writes one channel per class: "
                             f"set in_channels and out_channels to {self.num_classes} (got {self.in_channels}, "
                             f"{self.out_channels})")

    @property
    def downsample(self) -> int:
        """Pixels per code along each axis (16 for f16, 8 for f8)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> tuple[int, int]:
        """Code grid (h, w) of one image at `resolution`."""
        side = self.resolution // self.downsample
        return side, side

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VQGANConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown VQ-GAN preset {name!r}; known: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, VQGANConfig] = {
    # CPU tests and the demo: 64 px → 8×8 codes, 1.1M parameters.
    "tiny": VQGANConfig(resolution=64, ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_levels=(3,),
                        z_channels=32, embed_dim=32, codebook_size=512, norm_groups=8),
    # NÜWA-336 (the paper's default): taming's f16 ImageNet architecture with 12,288 codes, 336 px → 21×21.
    "f16-12288": VQGANConfig(),
    # NÜWA-256: downsampling 8, 256 px → 32×32 codes. The paper does not give this codebook's size;
    # we keep the 12,288 codes of the default model.
    "f8": VQGANConfig(resolution=256, ch_mult=(1, 2, 2, 4), attn_levels=(3,)),
}


# ----------------------------------------------------------------------------- building blocks

def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class PixelNorm(nn.Module):
    """LayerNorm over the channels of each position of a (B, C, H, W) map; `weight`/`bias` named as GroupNorm's."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)  # (B, 1, H, W)
        return (x - mean) * torch.rsqrt(var + 1e-6) * self.weight[:, None, None] + self.bias[:, None, None]


Norm = Callable[[int], nn.Module]
"""Builds the normalisation layer for a number of channels."""


def norm_layer(kind: str, groups: int) -> Norm:
    if kind == "pixel":
        return PixelNorm
    return lambda channels: nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


def conv3x3(in_channels: int, out_channels: int, padding_mode: str) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode=padding_mode)


class ResnetBlock(nn.Module):
    """norm → swish → conv, twice, plus a (1×1-projected where widths differ) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm, dropout: float, padding_mode: str):
        super().__init__()
        self.norm1 = norm(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, padding_mode)
        self.norm2 = norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_channels, out_channels, padding_mode)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map, with a residual."""

    def __init__(self, channels: int, norm: Norm):
        super().__init__()
        self.norm = norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(B, 1, C, H * W).transpose(2, 3) for conv in (self.q, self.k, self.v))  # (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), scale C**-0.5 as in taming
        h = h.transpose(2, 3).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 3×3 conv with taming's asymmetric padding (right and bottom only)."""

    def __init__(self, channels: int, padding_mode: str):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)
        self.pad_mode = "constant" if padding_mode == "zeros" else padding_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode=self.pad_mode))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, channels: int, padding_mode: str):
        super().__init__()
        self.conv = conv3x3(channels, channels, padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ResnetBlocks, attention after each where enabled, then resampling
    (taming's names: `downsample` in the encoder, `upsample` in the decoder, none at the last level)."""

    def __init__(self, blocks: list[ResnetBlock], attns: list[AttnBlock], downsample: Downsample | None = None,
                 upsample: Upsample | None = None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if downsample is not None:
            self.downsample = downsample
        if upsample is not None:
            self.upsample = upsample

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if hasattr(self, "downsample"):
            h = self.downsample(h)  # (B, C, H/2, W/2)
        if hasattr(self, "upsample"):
            h = self.upsample(h)  # (B, C, 2H, 2W)
        return h


class Middle(nn.Module):
    """ResnetBlock → attention (optional) → ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, norm: Norm, dropout: float, padding_mode: str, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, norm, dropout, padding_mode)
        self.attn_1 = AttnBlock(channels, norm) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, norm, dropout, padding_mode)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


# ----------------------------------------------------------------------------- encoder and decoder

class Encoder(nn.Module):
    """(B, 3, H, W) pixels → (B, z_channels, H/f, W/f) features, f = 2**(levels - 1)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        norm, p, pad = norm_layer(cfg.encoder_norm, cfg.norm_groups), cfg.dropout, cfg.padding_mode
        self.conv_in = conv3x3(cfg.in_channels, cfg.ch, pad)
        self.down = nn.ModuleList()
        width = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            out = cfg.ch * mult
            blocks = [ResnetBlock(width if i == 0 else out, out, norm, p, pad) for i in range(cfg.num_res_blocks)]
            attns = [AttnBlock(out, norm) for _ in blocks] if level in cfg.attn_levels else []
            last = level == len(cfg.ch_mult) - 1
            self.down.append(Level(blocks, attns, downsample=None if last else Downsample(out, pad)))
            width = out
        self.mid = Middle(width, norm, p, pad, cfg.mid_attention) if cfg.encoder_middle else nn.Identity()
        self.norm_out = norm(width)
        self.conv_out = conv3x3(width, cfg.z_channels, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) features → (B, 3, h·f, w·f) pixels (unbounded; ≈[-1, 1] once trained)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        norm, p, pad = norm_layer("group", cfg.norm_groups), cfg.dropout, cfg.padding_mode
        width = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = conv3x3(cfg.z_channels, width, pad)
        self.mid = Middle(width, norm, p, pad, cfg.mid_attention)
        up = []
        for level in reversed(range(len(cfg.ch_mult))):
            out = cfg.ch * cfg.ch_mult[level]
            blocks = [ResnetBlock(width if i == 0 else out, out, norm, p, pad) for i in range(cfg.num_res_blocks + 1)]
            attns = [AttnBlock(out, norm) for _ in blocks] if level in cfg.attn_levels else []
            up.insert(0, Level(blocks, attns, upsample=None if level == 0 else Upsample(out, pad)))
            width = out
        self.up = nn.ModuleList(up)  # indexed by level as in taming: up[0] is full resolution
        self.norm_out = norm(width)
        self.conv_out = conv3x3(width, cfg.out_channels, pad)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


# ----------------------------------------------------------------------------- vector quantizer

class VectorQuantizer(nn.Module):
    """Nearest-code lookup with a straight-through gradient, the VQ-VAE losses, and dead-code restart.

    Codebook collapse (most codes never chosen, so they never move) is the classic failure of
    VQ training. The quantizer counts how often each code is chosen while training (`usage`, a
    non-persistent buffer, so checkpoints keep taming's layout); the trainer periodically calls
    `restart_dead_codes`, which moves codes chosen fewer than `min_count` times since the last
    call onto encoder outputs, where they will be chosen again. Outputs are picked as k-means++
    seeds are (probability ∝ squared distance to the nearest live code), so revived codes go where
    the codebook is worst (rare colours, edges), not mostly onto the commonest content (backgrounds).
    """

    def __init__(self, codebook_size: int, dim: int, beta: float):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(codebook_size, dim)
        self.embedding.weight.data.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)  # taming's init
        self.register_buffer("usage", torch.zeros(codebook_size, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def nearest(self, z_flat: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Index of the nearest code (squared L2) for each row of z_flat (N, D) → (N,), in float32
        and in chunks so that N × codebook_size distances never sit in memory at once."""
        e = self.embedding.weight.float()  # (K, D)
        e_sq = (e * e).sum(1)  # (K,)
        # |z - e|² = |z|² - 2 z·e + |e|²; |z|² is the same for every code of a row, so argmin drops it
        return torch.cat([(e_sq - 2 * z.float() @ e.t()).argmin(1) for z in z_flat.split(chunk)])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, D, h, w) → (z_q with straight-through gradient (B, D, h, w), VQ loss, codes (B, h, w))."""
        B, D, h, w = z.shape
        codes = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, D))  # (B*h*w,)
        z_q = self.embedding(codes).view(B, h, w, D).permute(0, 3, 1, 2)  # (B, D, h, w)
        # codebook term moves codes to the encoder outputs; commitment term (beta) the reverse
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        if self.training:
            self.usage += torch.bincount(codes, minlength=self.usage.numel())
        z_q = z + (z_q - z).detach()  # forward value z_q, gradient straight through to z
        return z_q, loss, codes.view(B, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) → code vectors (B, D, h, w)."""
        return self.embedding(codes).permute(0, 3, 1, 2)

    @torch.no_grad()
    def restart_dead_codes(self, latents: torch.Tensor, min_count: int = 1) -> int:
        """Re-seed codes chosen < min_count times since the last call from latents (N, D); reset the counts.

        Returns how many codes moved. Under DDP, all-reduce `usage` before and broadcast the
        codebook from one rank after, so that every rank ends with the same codes.
        """
        live = self.usage >= min_count
        dead = (~live).nonzero().squeeze(1)  # (n_dead,)
        if len(dead):
            latents = latents.float()
            if live.any():
                error = torch.cdist(latents, self.embedding.weight[live].float()).min(1).values.square()  # (N,)
            else:
                error = torch.ones(len(latents), device=latents.device)
            if error.sum() <= 0:  # every latent sits exactly on a live code: pick uniformly
                error = torch.ones_like(error)
            pick = torch.multinomial(error, len(dead), replacement=bool((error > 0).sum() < len(dead)))
            new = latents[pick]
            new = new + 0.01 * new.std() * torch.randn_like(new)  # distinct even when a latent is picked twice
            self.embedding.weight[dead] = new.to(self.embedding.weight)
        self.usage.zero_()
        return len(dead)


# ----------------------------------------------------------------------------- the VQ-GAN

class VQGAN(nn.Module):
    """Encoder → quant_conv → VectorQuantizer → post_quant_conv → Decoder, as taming's VQModel.

    Images are float (B, 3, H, W) in [-1, 1]; codes are int64 (B, H/f, W/f) below codebook_size.
    A VQ-GAN-Seg (config.num_classes > 0) takes integer label maps (B, H, W) instead, read as one-hot
    (B, N, H, W), and decodes to class logits (B, N, H, W); `decode_labels` gives the label maps.
    """

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantize = VectorQuantizer(config.codebook_size, config.embed_dim, config.beta)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = Decoder(config)

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """VQ-GAN-Seg input: integer label maps (B, H, W) → float one-hot (B, N, H, W)."""
        if labels.dim() != 3 or labels.is_floating_point():
            raise ValueError(f"a VQ-GAN-Seg expects integer label maps (B, H, W), got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < self.config.num_classes):
            raise ValueError(f"labels must lie in [0, {self.config.num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        weight = self.quant_conv.weight
        return F.one_hot(labels.to(weight.device, torch.long), self.config.num_classes).permute(0, 3, 1, 2).to(weight.dtype)

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), or label maps (B, H, W) → continuous latents before quantization (B, embed_dim, h, w)."""
        if self.config.num_classes:
            images = self.one_hot(images)
        return self.quant_conv(self.encoder(images))

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """quantized latents (B, embed_dim, h, w) → images (B, 3, H, W), unclamped."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction (B, 3, H, W) unclamped, VQ loss, codes (B, h, w))."""
        z_q, vq_loss, codes = self.quantize(self.encode_latents(images))
        return self.decode_latents(z_q), vq_loss, codes

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images float (B, 3, H, W) in [-1, 1] (VQ-GAN-Seg: label maps (B, H, W)), H and W multiples of the
        downsampling → codes (B, h, w)."""
        weight = self.quant_conv.weight
        if self.config.num_classes:
            self._check_size(images.shape[-2:])
            z = self.encode_latents(images)
        else:
            self._check_images(images)
            z = self.encode_latents(images.to(weight.device, weight.dtype))  # (B, D, h, w)
        B, D, h, w = z.shape
        return self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, D)).view(B, h, w)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w), any integer dtype (uint16 shards included) → images (B, 3, h·f, w·f) in [-1, 1]
        (VQ-GAN-Seg: class logits (B, N, h·f, w·f))."""
        if codes.dim() != 3:
            raise ValueError(f"decode expects codes of shape (B, h, w), got {tuple(codes.shape)}")
        codes = codes.to(self.quant_conv.weight.device, torch.long)
        if codes.numel() and not (0 <= int(codes.min()) and int(codes.max()) < self.config.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.config.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        decoded = self.decode_latents(self.quantize.lookup(codes))
        return decoded if self.config.num_classes else decoded.clamp(-1, 1)

    @torch.no_grad()
    def decode_labels(self, codes: torch.Tensor) -> torch.Tensor:
        """VQ-GAN-Seg: codes (B, h, w) → label maps (B, H, W), the most likely class per pixel."""
        if not self.config.num_classes:
            raise ValueError("decode_labels needs a VQ-GAN-Seg (config.num_classes > 0)")
        return self.decode(codes).argmax(1)

    def encode_video(self, videos: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """videos (B, T, 3, H, W) → codes (B, T, h, w); every frame coded alone, batch_size frames at a time."""
        B, T = videos.shape[:2]
        frames = videos.reshape(B * T, *videos.shape[2:])  # (B*T, 3, H, W)
        codes = torch.cat([self.encode(chunk) for chunk in frames.split(batch_size)])
        return codes.view(B, T, *codes.shape[1:])

    def decode_video(self, codes: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """codes (B, T, h, w) → videos (B, T, 3, H, W) in [-1, 1], batch_size frames at a time."""
        if codes.dim() != 4:
            raise ValueError(f"decode_video expects codes of shape (B, T, h, w), got {tuple(codes.shape)}")
        B, T = codes.shape[:2]
        frames = torch.cat([self.decode(chunk) for chunk in codes.reshape(B * T, *codes.shape[2:]).split(batch_size)])
        return frames.view(B, T, *frames.shape[1:])

    def _check_size(self, size) -> None:
        f = self.config.downsample
        if size[0] % f or size[1] % f:
            raise ValueError(f"image size {tuple(size)} is not a multiple of the downsampling {f}")

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"expected images (B, {self.config.in_channels}, H, W), got {tuple(images.shape)}")
        self._check_size(images.shape[2:])
        if not images.is_floating_point():
            raise ValueError(f"expected float images in [-1, 1], got dtype {images.dtype}")
        if images.numel() and images.abs().max() > 1.01:
            raise ValueError(f"images must be scaled to [-1, 1]; got values up to {float(images.abs().max()):.3g}")

    # ------------------------------------------------------------------------- identity and storage

    def fingerprint(self) -> str:
        """Short sha256 of config and weights: preprocessing writes it into shard manifests, and the
        trainer compares it, so codes are never decoded by a different tokenizer than made them."""
        config = typed_config.to_dict(self.config)
        if not config["num_classes"]:  # a field newer than the first shards: image VQ-GANs keep their identity
            del config["num_classes"]
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            if tensor.is_floating_point():
                tensor = tensor.float()  # weights stored in bf16 and their exact fp32 upcast share one identity
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `model.safetensors` and `config.json` into directory, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(state, tmp, metadata={"format": "pt"})
        atomic_write(directory / "config.json", json.dumps(typed_config.to_dict(self.config), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "VQGAN":
        """Load a directory written by `save_pretrained` (safetensors only; no pickle)."""
        directory = Path(directory)
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist; expected a directory written by VQGAN.save_pretrained")
        try:
            config = typed_config.from_dict(VQGANConfig, json.loads(config_path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path} is not valid JSON (truncated?): {e}") from None
        try:
            state = load_file(weights_path)
        except SafetensorError as e:
            raise ValueError(f"{weights_path} is truncated or not a safetensors file ({e})") from None
        model = cls(config)
        load_checked(model, state, str(weights_path))
        return model

    @classmethod
    def from_taming(cls, path: str | Path, config: VQGANConfig | None = None, **overrides) -> "VQGAN":
        """Load a taming-transformers `VQModel` checkpoint (a Lightning .ckpt holding `state_dict`,
        or a bare state dict). Without `config` the architecture is read from the tensor shapes;
        `overrides` adjust what shapes cannot tell (`resolution`, `norm_groups`, `beta`)."""
        state = taming_to_vqgan(load_torch(path))
        config = config or infer_taming_config(state, str(path), **overrides)
        model = cls(config)
        load_checked(model, state, str(path))
        return model


# ----------------------------------------------------------------------------- checkpoint loading

_TAMING_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.embedding.")


def taming_to_vqgan(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The one key mapping from a taming `VQModel` checkpoint to our state dict.

    Our module names equal taming's, so the mapping unwraps Lightning's `state_dict` and drops
    the training loss (`loss.*`: taming's LPIPS and discriminator), which the tokenizer does not
    need. Every other key is kept, so that an unrelated checkpoint fails loudly in `load_checked`.
    """
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise ValueError(f"expected a state dict, got {type(state).__name__}")
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def infer_taming_config(state: dict[str, torch.Tensor], source: str, **overrides) -> VQGANConfig:
    """Read the architecture off a taming state dict's shapes.

    Shapes cannot tell the training resolution nor GroupNorm's groups: the resolution defaults to
    NÜWA's grid for the downsampling (f16: 21×21 codes at 336 px; otherwise 32×32 codes, so f8 at
    256 px) and the groups to taming's 32.
    """
    missing = [k for k in ("encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_out.weight",
                           "quantize.embedding.weight") if k not in state]
    if missing:
        raise ValueError(f"{source} is not a taming VQModel checkpoint: missing {', '.join(missing)} "
                         f"(it has {len(state)} keys, e.g. {', '.join(list(state)[:5])})")
    levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    ch = state["encoder.conv_in.weight"].shape[0]
    num_res_blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    inferred = dict(
        in_channels=state["encoder.conv_in.weight"].shape[1],
        out_channels=state["decoder.conv_out.weight"].shape[0],
        ch=ch,
        ch_mult=tuple(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels)),
        num_res_blocks=num_res_blocks,
        attn_levels=tuple(i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state),
        mid_attention="encoder.mid.attn_1.q.weight" in state,
        z_channels=state["encoder.conv_out.weight"].shape[0],
        embed_dim=state["quantize.embedding.weight"].shape[1],
        codebook_size=state["quantize.embedding.weight"].shape[0],
        resolution=2 ** (levels - 1) * (21 if levels == 5 else 32),
    )
    return VQGANConfig(**{**inferred, **overrides})
