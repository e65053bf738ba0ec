"""Preprocessing: raw media readers, caption tokenizer training, batch tokenization, the shard format.

The scripts here run as files (`python preprocess/tokenize.py`) or as modules (`python -m
preprocess.tokenize`). Run as a file, Python puts the script's folder first on sys.path, where
tokenize.py would shadow the standard library's tokenize (which inspect, linecache and torch import).
Every script imports this package before anything else, and the package drops such folders (a
`preprocess` folder holding tokenize.py, this checkout's or another), once for all of them.
"""
import sys
from pathlib import Path


def _shadows_stdlib(entry: str) -> bool:
    folder = Path(entry or ".").resolve()
    return folder.name == "preprocess" and (folder / "tokenize.py").is_file() and (folder / "__init__.py").is_file()


sys.path[:] = [entry for entry in sys.path if not _shadows_stdlib(entry)]
