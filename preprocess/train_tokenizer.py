"""Train the caption tokenizer: sentencepiece BPE on lower-cased captions.

    python preprocess/train_tokenizer.py --input 'data/{00000..00009}.tar' captions.csv \
        --output tok/captions --vocab-size 8192

writes tok/captions.model and tok/captions.vocab (atomically). Ids 0-3 are pad, unk, bos, eos,
and "None" is a piece of its own (the V2V condition, see preprocess/text.py). The vocabulary
size is an upper bound: a small corpus (the demo's) yields fewer pieces instead of failing.
Training sees at most `--max-captions` captions, a uniform sample drawn with a fixed seed (all of them
in a smaller corpus), so memory stays bounded; with one thread the model is the same bytes on every run.
"""
import preprocess  # noqa: F401  (first: see preprocess/__init__.py)
import argparse
import io
import random
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm

from model.storage import atomic_write
from preprocess.cli import errors_in_one_line
from preprocess.readers import iter_captions
from preprocess.text import BOS_ID, EOS_ID, NONE_TEXT, PAD_ID, UNK_ID, CaptionTokenizer


def sample_captions(captions: Iterator[str], size: int, seed: int = 0) -> list[str]:
    """A uniform sample of at most `size` captions (reservoir sampling), in input order when all fit."""
    rng, kept = random.Random(seed), []
    for seen, caption in enumerate(captions):
        if seen < size:
            kept.append(caption)
        elif (slot := rng.randrange(seen + 1)) < size:
            kept[slot] = caption
    return kept


def train_tokenizer(inputs: list[str], output_prefix: str | Path, vocab_size: int = 8192,
                    max_captions: int = 2_000_000) -> CaptionTokenizer:
    """Train on (a sample of at most `max_captions` of) the lower-cased captions of `inputs`."""
    captions = sample_captions((text.lower() for text in iter_captions(inputs)), max_captions)
    if not captions:
        raise ValueError(f"no captions found in {inputs}")
    model = io.BytesIO()  # in memory: a model_prefix would be recorded in the model and change its bytes
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, user_defined_symbols=[NONE_TEXT],
        character_coverage=1.0, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i) + 0.0:g}\n"
                    for i in range(processor.get_piece_size()))
    prefix = Path(output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for suffix, data in ((".vocab", vocab.encode()), (".model", model.getvalue())):
        atomic_write(f"{prefix}{suffix}", data)
    return CaptionTokenizer(f"{prefix}.model")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="tars (brace patterns ok), .csv/.jsonl indexes, .txt")
    parser.add_argument("--output", required=True, help="model prefix: writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, default=8192, help="upper bound on the number of pieces")
    parser.add_argument("--max-captions", type=int, default=2_000_000,
                        help="captions the trainer sees at most: a seeded uniform sample of a larger corpus")
    args = parser.parse_args(argv)
    with errors_in_one_line("train_tokenizer"):
        tokenizer = train_tokenizer(args.input, args.output, args.vocab_size, args.max_captions)
    print(f"tokenizer: {tokenizer.vocab_size} pieces, fingerprint {tokenizer.fingerprint()} → {args.output}.model")


if __name__ == "__main__":
    main()
