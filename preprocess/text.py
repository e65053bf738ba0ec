"""Caption tokenizer: lower-cased sentencepiece BPE ids in a fixed 77-slot text grid.

A caption becomes [bos, pieces…, eos, pad…] of exactly TEXT_LENGTH int32 ids; pieces beyond
75 are cut (eos is kept). A missing or empty caption becomes all pad with length 0, which the
trainer reads as "no text" (such a sample serves V2V only). V2V conditions on the constant
text "None", a user-defined piece of its own: captions are lower-cased first, so no caption
can ever produce it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import sentencepiece as spm

TEXT_LENGTH = 77
NONE_TEXT = "None"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class CaptionTokenizer:
    """Wraps a model written by preprocess/train_tokenizer.py (checked to have the special pieces)."""

    def __init__(self, model_file: str | Path):
        self.model_file = str(model_file)
        if not Path(model_file).is_file():
            raise FileNotFoundError(f"{model_file}: no such sentencepiece model (preprocess/train_tokenizer.py writes one)")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=self.model_file)
        except (RuntimeError, OSError) as error:
            raise ValueError(f"{model_file} is not a sentencepiece model ({str(error).splitlines()[0][:120]})") from None
        ids = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(f"{model_file}: special ids (pad, unk, bos, eos) are {ids}, expected "
                             f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; train it with preprocess/train_tokenizer.py")
        self.none_id = self._sp.piece_to_id(NONE_TEXT)
        if self.none_id == UNK_ID:
            raise ValueError(f"{model_file}: has no {NONE_TEXT!r} piece; train it with preprocess/train_tokenizer.py")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, caption: str | None) -> tuple[np.ndarray, int]:
        """(ids int32 [TEXT_LENGTH], length); length 0 means no caption."""
        text = (caption or "").strip().lower()
        if not text:
            return np.full(TEXT_LENGTH, PAD_ID, dtype=np.int32), 0
        return self._grid(self._sp.encode(text)[: TEXT_LENGTH - 2])

    def piece_count(self, caption: str) -> int:
        """Pieces of the lower-cased caption before cutting (more than 75 do not fit)."""
        return len(self._sp.encode(caption.strip().lower()))

    def encode_none(self) -> tuple[np.ndarray, int]:
        """The constant V2V condition: the encoding of the text "None"."""
        return self._grid([self.none_id])

    def decode(self, ids: np.ndarray, length: int) -> str:
        """The lower-cased text of an encoded caption (reports and samples)."""
        return self._sp.decode([int(i) for i in ids[1 : length - 1]])

    def fingerprint(self) -> str:
        """Short sha256 of the model and the grid layout: shards record it, the trainer compares it."""
        digest = hashlib.sha256(self._sp.serialized_model_proto())
        digest.update(f"length={TEXT_LENGTH};lower-case;bos-eos".encode())
        return digest.hexdigest()[:16]

    @staticmethod
    def _grid(pieces: list[int]) -> tuple[np.ndarray, int]:
        ids = np.full(TEXT_LENGTH, PAD_ID, dtype=np.int32)
        ids[: len(pieces) + 2] = [BOS_ID, *pieces, EOS_ID]
        return ids, len(pieces) + 2
