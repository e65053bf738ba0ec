"""CLIP's text tokenizer (byte-level BPE, 77 positions), read from the public vocabulary file by path.

The OpenAI CLIP archives hold the model but not its vocabulary: pass `bpe_simple_vocab_16e6.txt.gz`, the
file the `clip` and `open_clip` packages ship (those packages need torchvision, which does not import
beside our CPU torch). Text is cleaned as CLIP cleans it (ftfy, HTML entities, whitespace, lower case),
split with CLIP's pattern, and each word is merged by rank; a caption longer than 77 tokens is cut and
still ends with <|endoftext|>.
"""
from __future__ import annotations

import functools
import gzip
import html
from pathlib import Path

import ftfy
import regex
import torch

CONTEXT = 77
MERGES = 49152 - 256 - 2  # the merges the released vocabulary uses: 49,408 tokens in all
PATTERN = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
                        regex.IGNORECASE)


def byte_characters() -> tuple[list[str], list[int]]:
    """(characters, bytes): the printable stand-ins of the 256 byte values in vocabulary order, bytes that print as themselves
    first, then the rest mapped past U+0100 in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))], printable + others


class ClipTokenizer:
    def __init__(self, vocab_path: str | Path):
        lines = gzip.open(vocab_path, "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1: MERGES + 1] if line]
        characters, order = byte_characters()
        self.byte_to_character = dict(zip(order, characters))
        vocab = characters + [c + "</w>" for c in characters] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.start, self.end = self.ids["<|startoftext|>"], self.ids["<|endoftext|>"]

    @functools.lru_cache(maxsize=100_000)
    def merge(self, word: str) -> tuple[str, ...]:
        """One word (as byte characters) → its BPE tokens, the last one marked with </w>."""
        parts = (*word[:-1], word[-1] + "</w>")
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = tuple(merged)
        return parts

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for word in PATTERN.findall(text):
            characters = "".join(self.byte_to_character[b] for b in word.encode("utf-8"))
            ids.extend(self.ids[token] for token in self.merge(characters))
        return ids

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """[N, 77] token ids: <|startoftext|>, the text, <|endoftext|>, zeros."""
        out = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start, *self.encode(text)][:CONTEXT - 1] + [self.end]
            out[row, :len(ids)] = torch.tensor(ids)
        return out
