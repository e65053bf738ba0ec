"""Preprocessing: raw media readers, caption tokenizer training, batch tokenization, the shard format.

The scripts here run as files (`python preprocess/tokenize.py`) or as modules (`python -m
preprocess.tokenize`). Run as a file, Python puts this folder first on sys.path, where tokenize.py
would shadow the standard library's tokenize (which inspect, linecache and torch import). Every
script imports this package before anything else, and the package drops that entry, once for all.
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != _HERE]
