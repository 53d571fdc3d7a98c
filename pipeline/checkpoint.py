"""Atomic, resharding checkpoints with torch.distributed.checkpoint (DCP).

Layout of a run dir::

    RUN_DIR/checkpoints/step_00000400/      a complete checkpoint
        *.distcp, .metadata                 DCP shards (model, optimizers, trainer state)
        meta.json                           {"step", "samples_seen", "world_size", ...}
        plan.json                           the sharding plan it was saved under
        config.yaml                         the resolved experiment config
        ranks/rank{r}.pt                    per-rank state (RNG states), when given
    RUN_DIR/checkpoints/.tmp-step_00000400/ a save in progress (never loaded)

A save writes under the ``.tmp-`` name and is published by one atomic rename once every
rank has finished and ``meta.json`` is on disk, so a crash mid-save leaves the previous
checkpoint as the newest complete one. Loading goes through DCP's resharding, so a
checkpoint saved by N ranks loads into any world size and any plan.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import yaml

from fusionrec.errors import CheckpointDamagedError, CheckpointMismatchError
from fusionrec.pipeline.distributed import barrier, this_rank

PREFIX = "step_"
TMP_PREFIX = ".tmp-"
META = "meta.json"
RANKS = "ranks"
DCP_METADATA = ".metadata"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _is_main() -> bool:
    return this_rank() == 0


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    state: dict[str, Any],
    meta: dict[str, Any],
    plan: list[dict],
    config: dict,
    keep_last: int,
    rank_state: dict[str, Any] | None = None,
) -> Path:
    """Collectively save ``state`` (a DCP state dict) as checkpoint ``step``; every rank calls.

    ``rank_state`` is this rank's own small state (e.g. RNG states), saved with torch.save.
    Returns the published directory. Older checkpoints beyond ``keep_last`` are deleted
    only after the new one is published.
    """
    root = checkpoint_dir(run_dir)
    name = f"{PREFIX}{step:08d}"
    tmp, final = root / f"{TMP_PREFIX}{name}", root / name
    if _is_main():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    dcp.save(state, checkpoint_id=str(tmp))
    if rank_state is not None:
        (tmp / RANKS).mkdir(exist_ok=True)
        torch.save(rank_state, tmp / RANKS / f"rank{this_rank()}.pt")
    barrier()
    if _is_main():
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        _write_json(tmp / "plan.json", plan)
        _write_json(tmp / META, {"step": step, **meta})
        if final.exists():  # a re-save of the same step (e.g. after a resume) replaces it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (published, with meta.json), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(rf"{PREFIX}\d+", p.name) and (p / META).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def damage(path: str | Path) -> str | None:
    """What makes checkpoint ``path`` unloadable, or None when it looks whole.

    Checks what can be checked without reading the weights: ``meta.json`` parses, DCP's
    ``.metadata`` loads, and every shard file it lists exists and is at least as long as the
    last byte range it records there. Missing per-rank RNG states (``ranks/``) are not damage:
    see :func:`missing_rank_states`."""
    path = Path(path)
    try:
        json.loads((path / META).read_text())
    except FileNotFoundError:
        return f"{path / META} is missing"
    except (OSError, ValueError) as err:
        return f"{path / META} is unreadable ({err})"
    if not (path / DCP_METADATA).is_file():
        return f"{path / DCP_METADATA} is missing"
    try:
        storage = dcp.FileSystemReader(str(path)).read_metadata().storage_data
    except Exception as err:  # a truncated or corrupt pickle raises any of several types
        return f"{path / DCP_METADATA} is unreadable ({type(err).__name__}: {err})"
    needed: dict[str, int] = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        file = path / name
        if not file.is_file():
            return f"{file} is missing (listed in {DCP_METADATA})"
        have = file.stat().st_size
        if have < size:
            return f"{file} is truncated: {have} bytes, {DCP_METADATA} needs {size}"
    return None


def missing_rank_states(path: str | Path, world_size: int) -> list[str]:
    """The ``ranks/rank{r}.pt`` files (RNG states) of a checkpoint saved by ``world_size`` ranks
    that are not there."""
    return [f"{RANKS}/rank{r}.pt" for r in range(world_size) if not (Path(path) / RANKS / f"rank{r}.pt").is_file()]


def newest_whole_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest published checkpoint of ``run_dir`` that is not damaged (:func:`damage`), and
    the newer ones skipped on the way with what is wrong with each."""
    skipped = []
    for path in reversed(list_checkpoints(run_dir)):
        problem = damage(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a complete fusionrec checkpoint (no {META})")
    return json.loads(meta_file.read_text())


def load_checkpoint(path: str | Path, state: dict[str, Any], alone: bool = False) -> None:
    """Load checkpoint ``path`` into ``state`` in place, resharding as needed; every rank calls,
    unless ``alone``: one process loads an unsharded ``state`` with no collective, even while
    its process group is up (rank 0 exporting in the middle of a training job).

    A damaged checkpoint (:func:`damage`) fails first, naming the missing or short file; then
    the model part is checked (:func:`check_compatible`), so a checkpoint of another model
    fails with the names of the tables and parameters that differ."""
    read_meta(path)
    problem = damage(path)
    if problem is not None:
        raise CheckpointDamagedError(f"checkpoint {path} is damaged: {problem}")
    if "model" in state:
        check_compatible(path, state)
    dcp.load(state, checkpoint_id=str(path), no_dist=alone)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch, NumPy and Python RNG states (and the CUDA one on a GPU)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def load_rank_state(path: str | Path, rank: int) -> dict[str, Any] | None:
    """The per-rank state saved by ``rank`` in checkpoint ``path``, or None if there is none."""
    file = Path(path) / RANKS / f"rank{rank}.pt"
    return torch.load(file, weights_only=False) if file.is_file() else None




def _describe_key(key: str) -> str:
    """``model.ebc.embedding_bags.user.weight`` -> ``table 'user' (model.ebc...)``."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[-1] == "weight" and parts[-3] in ("embedding_bags", "embeddings"):
        return f"table {parts[-2]!r} ({key})"
    return key


def check_compatible(path: str | Path, state: dict[str, Any], prefix: str = "model") -> None:
    """Compare the tensors saved under ``prefix`` in checkpoint ``path`` with ``state[prefix]``
    (names and global shapes) before loading; raise CheckpointMismatchError naming every table
    or parameter that is missing, unexpected or of another shape."""
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    saved = {k: v for k, v in saved.items() if k.startswith(prefix + ".")}
    wanted = {f"{prefix}.{k}": v for k, v in state[prefix].items()}
    problems = []
    for key in sorted(set(wanted) - set(saved)):
        problems.append(f"missing from the checkpoint: {_describe_key(key)}")
    for key in sorted(set(saved) - set(wanted)):
        problems.append(f"in the checkpoint but not in the model: {_describe_key(key)}")
    for key in sorted(set(saved) & set(wanted)):
        have = tuple(getattr(saved[key], "size", ()) or ())
        with warnings.catch_warnings():  # ShardedTensor.size() warns that it is deprecated
            warnings.simplefilter("ignore")
            want = tuple(wanted[key].size()) if hasattr(wanted[key], "size") else ()
        if have and want and have != want:
            problems.append(f"{_describe_key(key)}: checkpoint {list(have)}, model {list(want)}")
    problems.sort(key=lambda p: "table '" not in p)  # embedding tables first: usually the cause
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointMismatchError(f"{path} does not match the configured model: {shown}")
