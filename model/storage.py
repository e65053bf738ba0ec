"""Files written and read safely, for every layer: atomic writes, pickle-safe torch loads, checked state dicts.

A file or folder written through `atomic_path` appears under its name only complete (written under a
temporary name beside it, then renamed), so a killed process never leaves something that looks
finished. Torch files are loaded with `weights_only=True`: loading never runs pickled code.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch


def temporary_name(path: Path, prefix: str = ".") -> Path:
    """Where `path` is written before it is complete: hidden, and per process (splits may share a folder)."""
    return path.with_name(f"{prefix}{path.name}.{os.getpid()}.tmp")


def remove(path: Path) -> None:
    """Delete a file or a folder tree; nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, prefix: str = ".") -> Iterator[Path]:
    """Yield a temporary path beside `path` to write a file or a folder at; it is renamed over `path`
    when the block ends without error (replacing an earlier file or folder) and deleted otherwise."""
    path = Path(path)
    tmp = temporary_name(path, prefix)
    remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            remove(path)  # rename cannot replace a non-empty folder
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def atomic_write(path: str | Path, data: str | bytes, prefix: str = ".") -> Path:
    """Write text (UTF-8) or bytes to `path` atomically."""
    with atomic_path(path, prefix) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def changed_settings(path: str | Path, settings: dict) -> list[str]:
    """The keys whose value in the JSON settings file at `path` (what made an output folder) differs from
    `settings`, compared as JSON (tuples as lists); [] when there is no file yet."""
    path = Path(path)
    if not path.exists():
        return []
    before, now = json.loads(path.read_text(encoding="utf-8")), json.loads(json.dumps(settings))
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def load_torch(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True, also for Lightning checkpoints that pickle Python objects.

    Old Lightning .ckpt files (taming's among them) hold non-tensor metadata: callback classes as
    dict keys, hyper-parameter namespaces, numpy scalars. weights_only=True refuses them. We then
    list those globals (torch reads the names without unpickling) and let the safe unpickler build
    an inert placeholder in their place: no code of theirs runs, and torch keeps refusing modules
    it blocks outright (os, subprocess, …), so a hostile file still fails.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            with torch.serialization.safe_globals([(_placeholder(n), n) for n in names]):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = next((line for line in str(e).splitlines() if "GLOBAL" in line), str(e).splitlines()[0])
        raise ValueError(f"{path} holds Python objects that cannot be loaded safely (weights_only=True): {reason} "
                         "If you trust the file, re-save its state_dict alone with torch.save and load that.") from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({str(e).split('. ')[0]})") from None


def _placeholder(name: str) -> type:
    """An inert stand-in class for a pickled global we do not need (it ignores its arguments)."""
    return type(name.rsplit(".", 1)[-1], (), {"__init__": lambda self, *a, **k: None,
                                               "__setstate__": lambda self, state: None,
                                               "__module__": "placeholder"})


def check_state_dict(state: dict[str, Any], expected: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Raise ValueError naming every missing, unexpected, non-tensor and wrongly shaped key of `state`."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    not_tensor = sorted(k for k in set(state) & set(expected) if not isinstance(state[k], torch.Tensor))
    reshaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                for k in sorted(set(state) & set(expected)) if k not in not_tensor and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped or not_tensor:
        def listed(keys):
            return ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = [f"{label} keys: {listed(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", reshaped),
                  ("non-tensor", not_tensor)) if keys]
        raise ValueError(f"{source} does not match the {what}; " + "; ".join(parts))


def load_checked(model: torch.nn.Module, state: dict[str, Any], source: str) -> None:
    """load_state_dict that names every missing, unexpected and wrongly shaped key."""
    check_state_dict(state, model.state_dict(), source, f"{type(model).__name__} architecture")
    model.load_state_dict(state)
