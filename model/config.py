"""NuwaConfig: the encoder-decoder's shape, its token grids and 3DNA extents, with named presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional, Union

from kernels.attention import BACKENDS
from model import typed_config

Extent = tuple[Optional[int], Optional[int], Optional[int]]


@dataclass
class NuwaConfig:
    """Shape of the NÜWA model. Grids are (S, H, W); extents are odd window widths (e_s, e_h, e_w)."""
    text_vocab_size: int = 49408
    """Caption vocabulary (sentencepiece model size, pad/bos/eos/"None" included)."""
    text_length: int = 77
    """Text positions: the condition is a 1×1×77 grid."""
    text_pad_id: int = 0
    """Caption id that fills the slots after a caption (preprocess/text.py's PAD_ID); never an attention key."""
    codebook_size: int = 12288
    """VQ-GAN codebook entries: the decoder's input and output vocabulary."""
    frames: int = 10
    """Video frames S (10 frames at 2.5 fps); images use S = 1."""
    grid_height: int = 21
    """VQ code rows per frame (336 px / 16)."""
    grid_width: int = 21
    """VQ code columns per frame."""
    width: int = 1280
    """Model width d."""
    heads: int = 20
    """Attention heads (head size = width / heads)."""
    encoder_layers: int = 12
    """3DNA self-attention layers over the condition."""
    decoder_layers: int = 24
    """Layers of causal 3DNA self-attention + cross-attention + MLP."""
    mlp_ratio: int = 4
    """MLP hidden size = mlp_ratio × width."""
    dropout: float = 0.0
    """Dropout on attention outputs and MLP outputs."""
    text_extent: Extent = (1, 1, None)
    """Text attends to the whole caption (the paper's ∞)."""
    image_extent: Extent = (1, 3, 3)
    """Image (and image sketch) window: 3×3 positions in one frame."""
    video_extent: Extent = (3, 3, 3)
    """Video (and video sketch) window: 3 frames × 3×3 positions."""
    sketch_codebook_size: int = 0
    """The VQ-GAN-Seg's codebook size for the sketch tasks S2I/S2V (0: text conditions only). A sketch is a
    code grid the size of the visual one; the encoder reads it with 3DNA (image or video extent)."""
    rotary: bool = False
    """Also turn the decoder's self-attention queries and keys by their 3D location (rotary encoding,
    frequencies split between time, row and column): an offset in the window ("one frame back, one
    column left", which is how an object moves) is then one learned direction of the query instead of a
    pattern over every pair of absolute positions. Off in the paper presets: NÜWA adds the tables only."""
    spatial_wrap: bool = False
    """Frames are tori: the decoder's image/video windows continue past the row and column borders on the
    other side (kernels/mask.py), and rotary row/column frequencies are whole turns per frame, so that the
    last row is one row before the first. For data whose content wraps around (what leaves on one side
    comes back on the other: tiling textures, periodic simulations, toroidal synthetic data, usually coded
    by a VQ-GAN with circular padding): without it, what comes back in is outside every window and must be
    guessed. Off by default (real frames do not wrap); docs/3dna.md."""
    activation_checkpointing: Union[bool, Literal["none", "full", "attention"]] = "none"
    """Recompute activations in the backward pass instead of keeping them: "full" recomputes each block
    (the least memory, ~30% more compute), "attention" only the self- and cross-attention of each block
    (keeps the MLPs' activations), "none" keeps everything; true/false mean full/none."""
    compile: bool = False
    """torch.compile each encoder and decoder block (in place: the weights keep their names)."""
    attention_backend: Optional[str] = None
    """Force a 3DNA backend ("reference", "blocked", "flex", "fused"); None: "blocked" (why:
    kernels/attention.py, docs/3dna.md)."""

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.rotary and (self.width // self.heads) % 2:
            raise ValueError(f"rotary needs an even head size, got {self.width // self.heads}")
        if self.attention_backend not in (None, *BACKENDS):
            raise ValueError(f"attention_backend must be one of {BACKENDS} or null, got {self.attention_backend!r}")
        for name in ("text_extent", "image_extent", "video_extent"):
            setattr(self, name, tuple(getattr(self, name)))

    @property
    def checkpointing(self) -> str:
        """activation_checkpointing as "none", "full" or "attention"."""
        value = self.activation_checkpointing
        return {True: "full", False: "none"}.get(value, value) if isinstance(value, bool) else value

    @property
    def image_grid(self) -> tuple[int, int, int]:
        return (1, self.grid_height, self.grid_width)

    @property
    def video_grid(self) -> tuple[int, int, int]:
        return (self.frames, self.grid_height, self.grid_width)

    @property
    def text_grid(self) -> tuple[int, int, int]:
        return (1, 1, self.text_length)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "NuwaConfig":
        """A named preset with keyword overrides, e.g. `from_preset("tiny", decoder_layers=4)`."""
        if name not in PRESETS:
            raise ValueError(f"unknown NÜWA preset {name!r}; choose from {sorted(PRESETS)}")
        return typed_config.from_dict(cls, {**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return typed_config.to_dict(self)

    def replace(self, **changes) -> "NuwaConfig":
        return dataclasses.replace(self, **changes)


PAPER_336 = dict(
    text_vocab_size=49408, text_length=77, codebook_size=12288, frames=10, grid_height=21, grid_width=21,
    width=1280, heads=20, encoder_layers=12, decoder_layers=24, mlp_ratio=4,
)
"""nuwa-336, the paper's model (Appendix B, Tab. 8 as summarised in DESIGN.md).

The 870M count leaves the embedding tables out (token and position `nn.Embedding`s):
  encoder layer: attention 4d² + MLP 8d² = 12d²;  decoder layer: self 4d² + cross 4d² + MLP 8d² = 16d²
  12 × 12d² + 24 × 16d² = 528 d² = 528 × 1280² = 865.1M
  output head 1280 × 12288 = 15.7M, biases and LayerNorms 0.7M  →  881.5M, +1.3% of 870M.
Where the paper is silent we assumed: the text vocabulary is CLIP-sized (49,408 BPE ids; it only
changes the embedding table, which the count excludes), biases on every linear layer, an untied
output head, and separate position tables for the text (77) and the visual grid (10, 21, 21).
"""

PRESETS: dict[str, dict] = {
    "nuwa-336": PAPER_336,
    # The 256×256 variant: VQ-GAN downsampling 8 → 32×32 codes, 4 video frames; same transformer.
    "nuwa-256": {**PAPER_336, "frames": 4, "grid_height": 32, "grid_width": 32},
    # CPU tests and the demo: small enough to train for a few hundred steps in minutes.
    "tiny": dict(text_vocab_size=512, text_length=77, codebook_size=128, frames=4, grid_height=8, grid_width=8,
                 width=128, heads=4, encoder_layers=2, decoder_layers=2, mlp_ratio=4),
}
