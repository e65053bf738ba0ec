"""The NÜWA encoder-decoder over 3D token grids (paper Sec. 3.3, DESIGN.md "Model").

Reads top to bottom: attention → MLP → encoder block → decoder block → the model.
Every sequence is a grid (S, H, W) flattened in raster order; attention between grids is 3D
nearby attention (kernels/), with per-modality window extents taken from the config.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kernels import nearby_attention
from kernels.mask import NO_WRAP
from model.config import NuwaConfig

try:  # apex's fused kernel when installed (it falls back to F.layer_norm on CPU tensors itself)
    from apex.normalization import FusedLayerNorm as LayerNorm
except ImportError:
    LayerNorm = nn.LayerNorm

ROTARY_BASE = 100.0
"""Wavelength scale of rotary encoding: an axis is at most a few dozen positions long, where the
10,000 of text models would leave most frequencies barely turning."""


def rotary_angles(grid: tuple[int, int, int], head_dim: int, device=None, wrap=NO_WRAP) -> torch.Tensor:
    """[S·H·W, head_dim/2] angles of 3D rotary encoding: the frequency pairs are split between the
    time, row and column axes, each rotating by its own coordinate. On a wrapped axis of length n the
    frequencies are 1, 2, … whole turns per n positions, so offsets are the same modulo n (the last
    position is one before the first)."""
    pairs = head_dim // 2
    split = (pairs // 3, pairs // 3, pairs - 2 * (pairs // 3))  # (time, row, col)
    axes = torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float32) for n in grid), indexing="ij")
    frequencies = [2 * math.pi * torch.arange(1, p + 1, device=device) / n if w
                   else ROTARY_BASE ** (-torch.arange(p, device=device) / p) for p, n, w in zip(split, grid, wrap)]
    return torch.cat([axis.reshape(-1, 1) * f for axis, f in zip(axes, frequencies)], dim=1)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x [B, h, N, hd]: pair dimension i with i + hd/2 and turn the pair by angles [N, hd/2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class NearbyAttention(nn.Module):
    """Multi-head 3DNA. Self-attention when `context` is None, else cross-attention to `context`.

    With `causal=True` (the decoder) the slots hold [<bos>, y_0, …, y_{N-2}]: slot t is the query
    that predicts token t, so the key/value of token u is read from slot u+1 and slot 0 (<bos>) is
    a global key every query sees. Windows are thereby centred on the token being predicted and a
    token never sees itself (DESIGN.md, "3D nearby attention").

    `angles` (config.rotary) turns queries and grid keys by their token's location, so that the
    score of a query-key pair also depends on their offset; <bos> is not turned.
    """

    def __init__(self, config: NuwaConfig):
        super().__init__()
        self.heads = config.heads
        self.query = nn.Linear(config.width, config.width)
        self.key_value = nn.Linear(config.width, 2 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.dropout = nn.Dropout(config.dropout)
        self.backend = config.attention_backend
        self.recompute = config.checkpointing == "attention"

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.view(B, N, self.heads, C // self.heads).transpose(1, 2)  # (B, h, N, hd)

    def forward(self, x, q_grid, extent, context=None, kv_grid=None, causal=False, key_mask=None, angles=None,
                wrap=NO_WRAP):
        if self.recompute and self.training:  # activation_checkpointing: attention
            return checkpoint(self.attend, x, q_grid, extent, context, kv_grid, causal, key_mask, angles, wrap,
                              use_reentrant=False)
        return self.attend(x, q_grid, extent, context, kv_grid, causal, key_mask, angles, wrap)

    def attend(self, x, q_grid, extent, context, kv_grid, causal, key_mask, angles, wrap):
        B, N, C = x.shape
        q = self.split_heads(self.query(x))
        k, v = self.key_value(x if context is None else context).chunk(2, dim=-1)
        k, v = self.split_heads(k), self.split_heads(v)  # (B, h, Nk, hd)
        k_global = v_global = None
        if causal:
            # Token u's key sits in slot u+1; the last token's key would be slot N (never visible: zeros).
            k_global, v_global = k[:, :, :1], v[:, :, :1]
            k, v = F.pad(k[:, :, 1:], (0, 0, 0, 1)), F.pad(v[:, :, 1:], (0, 0, 0, 1))
        if angles is not None:  # query t and key u now both sit at their token's location
            q, k = rotate(q, angles), rotate(k, angles)
        y = nearby_attention(q, k, v, q_grid, kv_grid or q_grid, extent, causal=causal, backend=self.backend,
                             k_global=k_global, v_global=v_global, key_mask=key_mask, wrap=wrap)
        y = y.transpose(1, 2).reshape(B, N, C)
        return self.dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: NuwaConfig):
        super().__init__()
        self.fc = nn.Linear(config.width, config.mlp_ratio * config.width)
        self.proj = nn.Linear(config.mlp_ratio * config.width, config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class EncoderBlock(nn.Module):
    """Pre-LN 3DNA self-attention over the condition, then an MLP (paper Eq. 14)."""

    def __init__(self, config: NuwaConfig):
        super().__init__()
        self.norm_attn = LayerNorm(config.width)
        self.attn = NearbyAttention(config)
        self.norm_mlp = LayerNorm(config.width)
        self.mlp = MLP(config)

    def forward(self, x, grid, extent, key_mask):
        x = x + self.attn(self.norm_attn(x), grid, extent, key_mask=key_mask)
        return x + self.mlp(self.norm_mlp(x))


class DecoderBlock(nn.Module):
    """Causal 3DNA self-attention, then 3DNA cross-attention to the condition, then an MLP (Eq. 15).

    The paper writes the two attentions as a sum; we apply them one after the other, each with its
    residual, the standard encoder-decoder reading.
    """

    def __init__(self, config: NuwaConfig):
        super().__init__()
        self.norm_self = LayerNorm(config.width)
        self.self_attn = NearbyAttention(config)
        self.norm_cross = LayerNorm(config.width)
        self.cross_attn = NearbyAttention(config)
        self.norm_mlp = LayerNorm(config.width)
        self.mlp = MLP(config)

    def forward(self, x, grid, extent, condition, condition_grid, condition_extent, condition_keys, angles, wrap):
        x = x + self.self_attn(self.norm_self(x), grid, extent, causal=True, angles=angles, wrap=wrap)
        x = x + self.cross_attn(self.norm_cross(x), grid, condition_extent, context=condition, kv_grid=condition_grid,
                                key_mask=condition_keys)
        return x + self.mlp(self.norm_mlp(x))


class Nuwa(nn.Module):
    """Text or a sketch → encoder; visual codes → causal decoder → logits over the codebook.

    The adaptive encoder (paper Sec. 3.3) reads a caption on the 1×1×77 text grid, or sketch codes (a
    VQ-GAN-Seg's codes of a label map, on the visual grid) with the image or video window; the decoder's
    cross-attention reads either condition through 3DNA over the condition's grid."""

    def __init__(self, config: NuwaConfig):
        super().__init__()
        self.config = config
        d = config.width
        self.text_embed = nn.Embedding(config.text_vocab_size, d)
        self.text_pos = nn.Embedding(config.text_length, d)  # the text grid's time axis
        if config.sketch_codebook_size:  # sketch positions share the decoder's tables: the same grid
            self.sketch_embed = nn.Embedding(config.sketch_codebook_size, d)
        self.encoder = nn.ModuleList(EncoderBlock(config) for _ in range(config.encoder_layers))
        self.encoder_norm = LayerNorm(d)

        self.code_embed = nn.Embedding(config.codebook_size, d)
        self.bos = nn.Parameter(torch.empty(d))
        self.pos_time = nn.Embedding(config.frames, d)
        self.pos_row = nn.Embedding(config.grid_height, d)
        self.pos_col = nn.Embedding(config.grid_width, d)
        self.decoder = nn.ModuleList(DecoderBlock(config) for _ in range(config.decoder_layers))
        self.decoder_norm = LayerNorm(d)
        self.head = nn.Linear(d, config.codebook_size)
        self.init_weights()
        if config.compile:
            for block in (*self.encoder, *self.decoder):
                block.compile()

    def init_weights(self):
        """GPT-2 style: N(0, 0.02), residual projections scaled by 1/√(2·layers), zero biases."""
        residual_std = 0.02 / math.sqrt(2 * (self.config.encoder_layers + self.config.decoder_layers))
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith(".proj") else 0.02
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, (nn.LayerNorm, LayerNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.bos, std=0.02)

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        """Parameter count; by default without the nn.Embedding tables (the paper's 870M)."""
        skip = {id(p) for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if not (exclude_embeddings and id(p) in skip))

    def extent_for(self, grid: tuple[int, int, int]):
        """Images (S = 1) use the image window, videos the video window."""
        return self.config.image_extent if grid[0] == 1 else self.config.video_extent

    def wrap(self) -> tuple[bool, bool, bool]:
        """Which axes of an image/video grid the decoder's windows wrap around (config.spatial_wrap)."""
        return (False, True, True) if self.config.spatial_wrap else NO_WRAP

    def _run(self, block, *args):
        if self.config.checkpointing == "full" and self.training:
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def text_keys(self, text: torch.Tensor) -> torch.Tensor:
        """text [B, L] ids → [B, L] bool, False at padding: a caption of 10 ids in 77 slots would
        otherwise spread every attention over 67 identical pad keys. Slot 0 (<bos>) always counts,
        so even an all-pad text has a key."""
        keys = text != self.config.text_pad_id
        keys[:, 0] = True
        return keys

    def encode_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text [B, L] ids → (condition states [B, L, d] on the 1×1×L grid, their keys [B, L]): pad
        slots attend but are never keys, here and in the decoder's cross-attention."""
        L = text.shape[1]
        if L != self.config.text_length:
            raise ValueError(f"text has {L} positions, the model expects {self.config.text_length}")
        x = self.text_embed(text) + self.text_pos(torch.arange(L, device=text.device))  # (B, L, d)
        keys = self.text_keys(text)
        for block in self.encoder:
            x = self._run(block, x, self.config.text_grid, self.config.text_extent, keys)
        return self.encoder_norm(x), keys

    def encode_sketch(self, sketch: torch.Tensor) -> tuple[torch.Tensor, None]:
        """sketch codes [B, S, H, W] → (condition states [B, S·H·W, d] on the sketch's grid, None: every
        position is a key). Windows: the image extent for one frame, the video extent for a clip."""
        if not self.config.sketch_codebook_size:
            raise ValueError("this model has no sketch encoder (model.sketch_codebook_size 0)")
        B, S, H, W = sketch.shape
        grid = (S, H, W)
        self.check_grid(grid)
        x = self.sketch_embed(sketch.reshape(B, -1).long()) + self.position_embedding(grid)
        for block in self.encoder:
            x = self._run(block, x, grid, self.extent_for(grid), None)
        return self.encoder_norm(x), None

    def position_embedding(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """[S·H·W, d]: per-axis tables added, in raster order."""
        S, H, W = grid
        device = self.bos.device
        # Called as modules (not .weight) so that ZeRO-3 gathers the tables before use.
        time, row, col = (table(torch.arange(n, device=device)) for table, n in
                          ((self.pos_time, S), (self.pos_row, H), (self.pos_col, W)))
        pos = time[:, None, None] + row[None, :, None] + col[None, None, :]  # (S, H, W, d)
        return pos.reshape(S * H * W, -1)

    def rotary_angles(self, grid: tuple[int, int, int]) -> torch.Tensor | None:
        """The decoder self-attention's rotary angles for this grid, None without config.rotary."""
        if not self.config.rotary:
            return None
        return rotary_angles(grid, self.config.width // self.config.heads, self.bos.device, self.wrap())

    def decoder_input(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, N] → slots [<bos>, y_0 … y_{N-2}] embedded, [B, N, d]."""
        B = codes.shape[0]
        tokens = self.code_embed(codes[:, :-1])  # (B, N-1, d)
        return torch.cat([self.bos.expand(B, 1, -1), tokens], dim=1)

    def condition_window(self, grid: tuple[int, int, int], condition_keys: torch.Tensor | None,
                         condition_length: int) -> tuple[tuple[int, int, int], tuple]:
        """(the condition's grid, the cross-attention window): text (with its keys) is the 1×1×L grid seen
        whole; a sketch (no key mask) lies on the visual grid, seen through that grid's window."""
        if condition_keys is None:
            return grid, self.extent_for(grid)
        return (1, 1, condition_length), self.config.text_extent

    def decode(self, codes: torch.Tensor, condition: torch.Tensor, condition_keys: torch.Tensor | None
               ) -> torch.Tensor:
        """codes [B, S, H, W], condition [B, L, d] with its keys [B, L] (text) or None (a sketch on the code
        grid) → logits [B, S·H·W, codebook] (slot t predicts y_t)."""
        B, S, H, W = codes.shape
        grid = (S, H, W)
        self.check_grid(grid)
        x = self.decoder_input(codes.reshape(B, -1)) + self.position_embedding(grid)  # slot t gets location t
        extent = self.extent_for(grid)
        condition_grid, condition_extent = self.condition_window(grid, condition_keys, condition.shape[1])
        if condition_keys is None and condition.shape[1] != S * H * W:
            raise ValueError(f"a sketch of {condition.shape[1]} positions for a code grid of {grid}")
        angles = self.rotary_angles(grid)
        for block in self.decoder:
            x = self._run(block, x, grid, extent, condition, condition_grid, condition_extent, condition_keys,
                          angles, self.wrap())
        return self.head(self.decoder_norm(x))

    def check_grid(self, grid):
        S, H, W = grid
        if S > self.config.frames or H != self.config.grid_height or W != self.config.grid_width:
            raise ValueError(f"code grid {grid} does not fit the model's (≤{self.config.frames}, "
                             f"{self.config.grid_height}, {self.config.grid_width})")

    def encode(self, text: torch.Tensor, sketch: torch.Tensor | None = None):
        """The condition: the sketch's when given (S2I, S2V), else the text's."""
        return self.encode_text(text) if sketch is None else self.encode_sketch(sketch)

    def forward(self, text: torch.Tensor, codes: torch.Tensor, sketch: torch.Tensor | None = None):
        """text [B, L], codes [B, S, H, W], sketch codes [B, S, H, W] or None → (logits [B, N, V], mean
        cross-entropy over all codes)."""
        logits = self.decode(codes, *self.encode(text, sketch))
        loss = F.cross_entropy(logits.float().flatten(0, 1), codes.reshape(-1).long())
        return logits, loss
