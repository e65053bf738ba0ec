"""Turn a trainer checkpoint into a portable model folder, or into a universal checkpoint.

Both conversions use DeepSpeed's own code: `get_fp32_state_dict_from_zero_checkpoint` merges the
fp32 master weights of every ZeRO-1/2/3 rank, and `ds_to_universal` rewrites the optimizer
shards per parameter so that `pretrain/main.py --resume` continues on any number of ranks
(the trainer sees the `zero/` folder and loads it with `checkpoint.load_universal`).
DeepSpeed's checkpoint files are pickles and are read as such: convert only checkpoints you
trust. What comes out for inference (`model/pretrained.py`) is safetensors.

An input is a tag folder (`…/checkpoints/step-00001000`), a checkpoints folder or a run folder
(its newest complete tag). It is checked before any long work: the completion marker, the
per-rank files, and that every torch file is whole. Outputs are never overwritten without
`force`, and appear only complete.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path


from model import typed_config
from model.config import NuwaConfig
from model.pretrained import DTYPES, WEIGHTS, refuse_overwrite, save_state
from preprocess.shards import ShardDataset
from pretrain.checkpoint import STATE_FILE, CheckpointError, is_universal, read_marker, resolve, verify
from pretrain.ema import full_state


def identities(config: dict) -> dict:
    """Tokenizer and VQ-GAN identities of the run (and the VQ-GAN-Seg's, for shards with sketches), from its
    shard manifests (None where unreadable)."""
    data = config.get("data", {})
    found = {"tokenizer": data.get("tokenizer") or None, "tokenizer_fingerprint": None, "vqgan_fingerprint": None}
    for key in ("image_shards", "video_shards"):
        if not data.get(key):
            continue
        try:
            manifest = ShardDataset(data[key]).manifest
        except (OSError, ValueError) as e:
            print(f"convert: note: cannot read the manifest of data.{key} ({e})", file=sys.stderr)
            continue
        for field in ("tokenizer_fingerprint", "vqgan_fingerprint"):
            found[field] = found[field] or manifest.get(field)
        if manifest.get("sketch"):  # S2I/S2V: the VQ-GAN-Seg that coded the sketches
            seg = manifest["sketch"]["vqgan_fingerprint"]
            found["vqgan_seg_fingerprint"] = found.get("vqgan_seg_fingerprint") or seg
    unknown = [k for k, v in found.items() if v is None]
    if unknown:
        print(f"convert: note: {', '.join(unknown)} unknown; config.json records null", file=sys.stderr)
    return found


def to_safetensors(checkpoint: str | Path, out: str | Path, dtype: str = "fp32", force: bool = False,
                   ema: bool = False) -> Path:
    """Consolidate a ZeRO-1/2/3 checkpoint into `out/model.safetensors` + `out/config.json`; with `ema`,
    the weight average (`trainer.ema_decay`) instead of the weights."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    start = time.perf_counter()
    tag, out = resolve(checkpoint), Path(out)
    if is_universal(tag):
        raise CheckpointError(f"checkpoint {tag} is a universal checkpoint; convert the DeepSpeed checkpoint it was "
                              f"made from")
    marker = verify(tag)
    refuse_overwrite(out, force)
    config = marker["config"]
    model_config = typed_config.from_dict(NuwaConfig, config["model"])
    if ema:
        state = full_state(tag)
    else:
        try:
            state = get_fp32_state_dict_from_zero_checkpoint(str(tag.parent), tag=tag.name)
        except Exception as e:  # DeepSpeed raises many kinds for foreign or partial checkpoints
            raise CheckpointError(f"checkpoint {tag}: DeepSpeed could not consolidate it ({type(e).__name__}: "
                                  f"{e})") from e
    info = {"preset": config.get("preset"), "step": marker["state"]["step"], "source": str(tag.resolve()),
            **({"weights": f"ema {config['trainer']['ema_decay']}"} if ema else {}), **identities(config)}
    save_state(state, model_config, out, info=info, dtype=DTYPES[dtype], force=force)
    params = sum(v.numel() for v in state.values())
    size = (out / WEIGHTS).stat().st_size
    print(f"wrote {out / WEIGHTS}: {len(state)} tensors, {params:,} parameters, {dtype}, {size / 2**20:.1f} MiB, "
          f"{'weight average, ' if ema else ''}step {info['step']} of {tag}, in {time.perf_counter() - start:.1f}s")
    return out


def to_universal(checkpoint: str | Path, out: str | Path, force: bool = False, workers: int = 4) -> Path:
    """Rewrite a checkpoint as a universal one: a complete tag folder that resumes on any world size.

    `ds_to_universal` needs `universal_checkpoint_info` in the model states; a plain data-parallel
    model has nothing to record there beyond the version, so DeepSpeed's `inject_missing_state`
    supplies it. The folder is built beside `out` and renamed into place once complete.
    """
    from deepspeed.checkpoint import ds_to_universal

    start = time.perf_counter()
    tag, out = resolve(checkpoint), Path(out)
    if is_universal(tag):
        raise CheckpointError(f"checkpoint {tag} is already a universal checkpoint")
    verify(tag)
    if out.exists() and out.resolve() == tag.resolve():
        raise FileExistsError(f"{out} is the checkpoint being converted; write the universal one elsewhere")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} already exists and is not empty; pass --force to overwrite")
        if not ((out / STATE_FILE).is_file() or is_universal(out)):
            raise FileExistsError(f"{out} is not a checkpoint folder; it is not replaced, even with --force")
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    built = staging / out.name  # ds_to_universal writes `latest_universal` beside its output: keep it in staging
    args = argparse.Namespace(input_folder=str(tag), output_folder=str(built), num_extract_workers=workers,
                              num_merge_workers=max(1, workers // 2), keep_temp_folder=False, strict=True,
                              inject_missing_state=True)
    try:
        ds_to_universal.main(args)
    except Exception as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(f"checkpoint {tag}: ds_to_universal failed ({type(e).__name__}: {e})") from e
    shutil.copy2(tag / STATE_FILE, built / STATE_FILE)
    if out.exists():
        shutil.rmtree(out)
    os.replace(built, out)
    shutil.rmtree(staging)
    params = sum(1 for p in (out / "zero").iterdir() if p.is_dir())
    print(f"wrote universal checkpoint {out}: {params} parameters, step {read_marker(out)['state']['step']} of {tag}, "
          f"in {time.perf_counter() - start:.1f}s; resume with --resume {out} on any number of ranks")
    return out
