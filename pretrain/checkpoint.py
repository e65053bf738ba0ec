"""Checkpoints: a DeepSpeed checkpoint per tag plus the trainer state, the run's config and a marker.

Layout: `{output_dir}/checkpoints/step-00001000/` holds DeepSpeed's files and, written last by
rank 0 once every rank has saved, `trainer_state.json` (step, data position, counters, the
resolved config). A tag without that file is incomplete and never resumed from. Resume needs
no flags beyond the path: the checkpoint describes itself, universal ones included (made by
`tools/convert_checkpoint.py to-universal`, recognised by their `zero/` folder, loadable on
any number of ranks).
"""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from model.config import NuwaConfig
from model.storage import atomic_write
from pretrain.config import TASKS
from pretrain.distributed import agree
from pretrain.errors import MISTAKES, CheckpointError

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Everything besides weights and optimizer moments that a resume needs."""
    step: int = 0
    micro_step: int = 0
    """Micro-steps drawn so far (skipped bad batches included): the task sequence position."""
    consumed: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TASKS})
    """Global samples taken from each task's stream: the data position."""
    tokens_seen: int = 0
    skipped_batches: int = 0


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def complete_tags(folder: Path) -> list[Path]:
    """Complete checkpoint folders in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).is_file())


def is_universal(tag_dir: Path) -> bool:
    """ds_to_universal's layout: one folder per parameter under zero/, beside the optimizer's common state."""
    return (tag_dir / "zero" / "optimizer_state.pt").is_file()


def mark_complete(tag_dir: Path, state: dict, config: dict, keep_last: int) -> None:
    """Write the completion marker (last, atomically), then delete all but the newest `keep_last` complete tags."""
    atomic_write(tag_dir / STATE_FILE, json.dumps({"state": state, "config": config}, indent=1, sort_keys=True))
    for old in complete_tags(tag_dir.parent)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)


def save(engine, output_dir: str | Path, state: TrainState, config: dict, keep_last: int, ema=None) -> Path:
    """Collective: every rank saves its shard; rank 0 then marks the tag complete and prunes old ones."""
    folder = checkpoint_dir(output_dir)
    tag = tag_for(state.step)
    if dist.get_rank() == 0:  # a tag saved again (after a resume) reads incomplete until its new marker
        (folder / tag / STATE_FILE).unlink(missing_ok=True)
    dist.barrier()
    engine.save_checkpoint(str(folder), tag=tag, client_state={"trainer_state": asdict(state)})
    if ema is not None:
        ema.save(folder / tag, dist.get_rank(), dist.get_world_size())
    dist.barrier()
    if dist.get_rank() == 0:
        mark_complete(folder / tag, asdict(state), config, keep_last)
    dist.barrier()
    return folder / tag


def refuse_legacy(folder: Path) -> None:
    """VQ-GAN runs of the earlier layout (`step_XXXXXXXX` tags and a `latest` pointer) are not resumed."""
    old = sorted(folder.glob("step_*")) if folder.is_dir() else []
    if old or (folder / "latest").is_file():
        example = old[-1] if old else folder / "step_XXXXXXXX"
        raise CheckpointError(f"{folder} holds checkpoints of the earlier VQ-GAN layout (step_XXXXXXXX tags and a "
                              f"'latest' pointer), which cannot be resumed; {example / 'vqgan'} is a complete VQ-GAN "
                              f"folder: start a new run from it with --trainer.init {example / 'vqgan'}")


def resolve(path: str | Path | None, output_dir: str | Path | None = None) -> Path | None:
    """The tag folder to load: `auto` → the newest complete tag of `output_dir` (None when there is none);
    a tag folder as given; a checkpoints or run folder → its newest complete tag."""
    if path is None:
        return None
    if str(path) == "auto":
        folder = checkpoint_dir(output_dir)
        tags = complete_tags(folder)
        if not tags:
            refuse_legacy(folder)
        return tags[-1] if tags else None
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path}: " + ("not a folder" if path.exists() else "no such folder"))
    if (path / STATE_FILE).is_file():
        return path
    tags = complete_tags(path) or complete_tags(path / "checkpoints")
    if tags:
        return tags[-1]
    if any(path.glob("*_states.pt")) or path.name.startswith("step-"):
        raise CheckpointError(f"checkpoint {path} is incomplete: no {STATE_FILE} (rank 0 writes it last, once "
                              f"every rank has saved); it was interrupted and cannot be used")
    for folder in (path, path / "checkpoints", path.parent):
        refuse_legacy(folder)
    raise FileNotFoundError(f"checkpoint {path}: no complete checkpoint there (a tag folder holds {STATE_FILE})")


RANK_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(model|optim)_states\.pt$")


def whole(files: list[Path]) -> None:
    """torch.save writes a zip whose directory is at its end: a cut file is not a zip."""
    for file in files:
        if not zipfile.is_zipfile(file):
            raise CheckpointError(f"checkpoint file {file} is truncated or not a torch checkpoint; copy it again "
                                  f"or use an earlier tag")


def verify(tag: Path) -> dict:
    """Check a tag before anything is loaded: its marker, DeepSpeed's files of every rank, and that each
    torch file is whole. Returns the marker; raises CheckpointError naming what is wrong."""
    marker = read_marker(tag)
    names = sorted(p.name for p in tag.iterdir())
    if is_universal(tag):
        whole(sorted(tag.glob("*.pt")) + sorted((tag / "zero").rglob("*.pt")))
        return marker
    model = [n for n in names if n.endswith("_model_states.pt")]
    optim = [n for n in names if n.endswith("_optim_states.pt")]
    if not model or not optim:
        lacking = " and ".join(kind for kind, files in (("*_model_states.pt", model), ("*_optim_states.pt", optim))
                               if not files)
        raise CheckpointError(f"checkpoint {tag} is missing DeepSpeed files: no {lacking} (it holds {names})")
    whole([tag / name for name in model + optim] + sorted((tag / "ema").glob("*.pt")))
    ranks = {kind: {int(m[1]) for n in names if (m := RANK_FILE.match(n)) and m[2] == kind}
             for kind in ("model", "optim")}
    # Memory-mapped: only the pickled header is read, to learn how many ranks saved.
    header = torch.load(tag / model[0], map_location="cpu", mmap=True, weights_only=False)
    world = header.get("dp_world_size") or max(ranks["optim"], default=-1) + 1
    for kind in ("optim", "model"):
        if kind == "model" and not ranks["model"]:
            continue  # ZeRO-1/2 write one model file for all ranks, ZeRO-3 one per rank
        missing = sorted(set(range(world)) - ranks[kind])
        if missing:
            raise CheckpointError(f"checkpoint {tag} was saved by {world} ranks but the {kind} states of rank(s) "
                                  f"{missing} are missing")
    return marker


def choose(resume: str | None, output_dir: str | Path, log) -> Path | None:
    """Collective: the tag every rank resumes from, each rank having verified its files.

    `auto` takes the newest complete tag that verifies on every rank, saying (through `log`) which
    newer ones it skipped and why (it never deletes them); no complete tag at all is a fresh start,
    complete tags of which none verifies are refused. A PATH that does not verify is refused. Either
    way every rank takes the same decision.
    """
    if resume is None:
        return None
    if str(resume) != "auto":
        tag = agree(lambda: resolve(resume, output_dir), MISTAKES)
        agree(lambda: verify(tag), MISTAKES)
        return tag
    folder = checkpoint_dir(output_dir)

    def newest_first() -> list[str]:
        tags = complete_tags(folder)
        if not tags:
            refuse_legacy(folder)
        return [t.name for t in reversed(tags)]

    names = agree(newest_first, MISTAKES)
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, names)
    if any(other != names for other in seen):
        raise CheckpointError(f"the ranks see different complete checkpoints in {folder}: {seen}")
    for name in names:
        try:
            agree(lambda: verify(folder / name), MISTAKES)
            return folder / name
        except CheckpointError as e:
            log(f"--resume auto: skipping {name} (kept on disk): {e}")
    if names:
        raise CheckpointError(f"--resume auto: none of the {len(names)} complete checkpoints in {folder} can be "
                              f"loaded (see above); move them away to start fresh, or resume an earlier copy")
    return None


def read_marker(tag_dir: Path) -> dict:
    try:
        return json.loads((tag_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {tag_dir}: unreadable {STATE_FILE}: {e}") from e


def check_same_model(saved: dict, current: dict, tag_dir: Path) -> None:
    """Refuse a checkpoint of another model shape before anything is loaded or overwritten. A field newer than
    the checkpoint counts as its default."""
    defaults = NuwaConfig().to_dict()
    diffs = [f"{k}: {saved.get(k, defaults.get(k))!r} in the checkpoint, {v!r} now" for k, v in current.items()
             if k not in ("activation_checkpointing", "attention_backend", "compile", "dropout")
             and saved.get(k, defaults.get(k)) != v]
    if diffs:
        raise ValueError(f"checkpoint {tag_dir} was trained with another model config: " + "; ".join(diffs))


def load(engine, tag_dir: Path, model_config: dict, load_optimizer: bool = True) -> TrainState:
    """Load weights, optimizer and trainer state from a complete tag folder."""
    marker = read_marker(tag_dir)
    check_same_model(marker["config"]["model"], model_config, tag_dir)
    zero3 = engine.zero_optimization_stage() == 3
    if is_universal(tag_dir) and any(tag_dir.glob("zero_pp_rank_*_model_states.pt")) != zero3:
        raise CheckpointError(f"checkpoint {tag_dir} is a universal checkpoint of a ZeRO-"
                              f"{'1/2' if zero3 else '3'} run; resume it with that ZeRO stage (trainer.ds_config): "
                              f"universal checkpoints change the world size, not between ZeRO-3 and ZeRO-1/2")
    try:
        load_path, client = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name,
                                                   load_optimizer_states=load_optimizer,
                                                   load_lr_scheduler_states=load_optimizer)
    except Exception as e:  # DeepSpeed/torch raise many kinds for truncated or foreign files
        raise CheckpointError(f"checkpoint {tag_dir} could not be loaded ({type(e).__name__}: {e}); "
                           f"it may be truncated or from another DeepSpeed layout") from e
    if load_path is None:
        raise CheckpointError(f"checkpoint {tag_dir}: DeepSpeed found no model states to load")
    if load_optimizer and is_universal(tag_dir) and zero3:
        repair_zero3_universal_load(engine, tag_dir)
    state = TrainState(**client["trainer_state"])
    state.consumed = {**{t: 0 for t in TASKS}, **state.consumed}  # tasks newer than the checkpoint start at 0
    return state


def repair_zero3_universal_load(engine, tag_dir: Path) -> None:
    """Undo two slips of DeepSpeed's (0.19) ZeRO-3 universal load that bite with several param groups.

    It copies group 0's settings onto every group, so the no-decay group (biases, norms, <bos>)
    would start decaying; and it hands every group one shared Adam `step` tensor, which each
    group's update then increments, so bias corrections drift. The settings file is DeepSpeed's
    own pickle, which it has just read the same way.
    """
    saved = torch.load(tag_dir / "zero" / "optimizer_state.pt", map_location="cpu", weights_only=False)
    groups = saved["optimizer_state_dict"]["param_groups"]
    if len(groups) != len(engine.optimizer.param_groups):
        raise CheckpointError(f"checkpoint {tag_dir} has {len(groups)} optimizer param groups, the optimizer "
                              f"{len(engine.optimizer.param_groups)}")
    for group, saved_group in zip(engine.optimizer.param_groups, groups):
        group.update({k: v for k, v in saved_group.items() if k != "params"})
    for state in engine.optimizer.optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
