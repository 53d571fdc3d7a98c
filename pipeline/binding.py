"""What a checkpoint binds every later job to: the parts of its config that define the model,
and how each id feature's values were turned into table rows.

A checkpoint's weights mean something only with the config that trained them: listing the
tasks in another order scores each task with another task's tower, a changed table or feature
looks up other rows, and string ids are hashed where integer ids are taken modulo the table
size. Evaluation and ``--resume`` therefore compare the given config and data with what the
checkpoint recorded (its ``config.yaml`` and ``meta.json["id_types"]``) and stop with one line
naming every difference; nothing is silently reinterpreted.

Model-defining (must agree): ``features`` (tables, dense columns and their normalisation,
sparse features, sequences; their order too) except ``features.group_column`` and
``features.weight_column``; ``tasks`` (names, order, ``type``, ``space``) except each task's
``weight``; and all of ``model``. Free to differ: ``data``, ``train``, ``eval``, ``sharding``
(DCP reshards), ``checkpoint``, ``synthetic``, task weights, the sample-weight and group
columns. docs/reliability.md has the same list.

The world size is free too, except for collision-managed tables: their id → row maps load on
the saved world size or on one whose row-wise blocks are unions of the saved ones (2 ranks → 1,
4 → 2 or 1), never on more ranks (:func:`check_collision_world_size`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from fusionrec.datasets.schema import MC_ID_SPACE
from fusionrec.errors import CheckpointMismatchError, UserError
from fusionrec.pipeline.config import ExperimentConfig
from fusionrec.sharding.collisions import maps_reload
from fusionrec.typedconfig import from_dict

CONFIG_FILE = "config.yaml"
#: keys of ``features`` that do not reach the model (sample weights, GAUC groups)
FREE_FEATURE_KEYS = ("group_column", "weight_column")
#: keys of a task that only weigh its loss
FREE_TASK_KEYS = ("weight",)


def model_defining(config: dict) -> dict:
    """The parts of a config (plain data, as saved in ``config.yaml``) that define the model."""
    features = {k: v for k, v in (config.get("features") or {}).items() if k not in FREE_FEATURE_KEYS}
    tasks = [{k: v for k, v in t.items() if k not in FREE_TASK_KEYS} for t in config.get("tasks") or []]
    return {"features": features, "tasks": tasks, "model": config.get("model")}


def _short(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        return "[" + ", ".join(str(v["name"]) for v in value) + "]"
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return "[" + ", ".join(str(v) for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def differences(saved: Any, given: Any, path: str = "") -> list[str]:
    """``"path: checkpoint X, config Y"`` for every place where two plain-data trees differ.

    Lists of named mappings (tables, features, tasks) are compared by their names in order
    first, then element by element under ``path.name``."""
    if isinstance(saved, dict) and isinstance(given, dict):
        out = []
        for key in list(saved) + [k for k in given if k not in saved]:
            out += differences(saved.get(key), given.get(key), f"{path}.{key}" if path else str(key))
        return out
    named = lambda v: isinstance(v, list) and all(isinstance(e, dict) and "name" in e for e in v)  # noqa: E731
    if named(saved) and named(given) and (saved or given):
        if [e["name"] for e in saved] != [e["name"] for e in given]:
            return [f"{path}: checkpoint {_short(saved)}, config {_short(given)}"]
        out = []
        for a, b in zip(saved, given):
            out += differences(a, b, f"{path}.{a['name']}")
        return out
    if saved != given:
        return [f"{path}: checkpoint {_short(saved)}, config {_short(given)}"]
    return []


def saved_config(checkpoint: Path) -> Optional[dict]:
    """The resolved config saved with ``checkpoint``, or None for a checkpoint without one."""
    file = Path(checkpoint) / CONFIG_FILE
    return yaml.safe_load(file.read_text()) if file.is_file() else None


def with_defaults(saved: dict) -> dict:
    """``saved`` as today's typed config reads it: keys added to fusionrec after the checkpoint
    was written take their defaults, so an older checkpoint is compared on what it meant, not
    refused for a key it could not know. A saved config that today's loader refuses (a key since
    removed) is compared as written."""
    try:
        return from_dict(ExperimentConfig, saved, source=CONFIG_FILE).to_dict()
    except (UserError, ValueError):
        return saved


def check_config(checkpoint: Path, config: dict, purpose: str) -> None:
    """Stop when ``config`` (the job's resolved config as plain data) defines another model than
    the one ``checkpoint`` was trained with; ``purpose`` (e.g. "evaluate", "resume") words the
    advice. A checkpoint saved without ``config.yaml`` is not checked."""
    saved = saved_config(checkpoint)
    if saved is None:
        return
    found = differences(model_defining(with_defaults(saved)), model_defining(config))
    if found:
        shown = "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
        raise CheckpointMismatchError(
            f"{checkpoint}: the config defines another model than the checkpoint's {CONFIG_FILE} ({shown}); "
            f"to {purpose}, use that {CONFIG_FILE} or a config that agrees with it"
        )


def check_id_types(trained_by: str, saved: Optional[dict], data_types: dict[str, str], data: str) -> None:
    """Stop when an id feature's values in ``data`` are of another kind (``"string"``, hashed, or
    ``"integer"``, taken modulo the table size) than the model was trained on.

    ``trained_by``: the checkpoint (or train data) the message starts with; ``saved``: its id types,
    e.g. ``meta.json["id_types"]`` (None for an older checkpoint: not checked); ``data_types``: the
    same for the job's data (:meth:`ParquetReader.id_types`)."""
    if not saved:
        return
    how = {"string": "string ids (hashed)", "integer": "integer ids (taken modulo the table size)"}
    found = [
        f"feature {name!r}: trained on {how.get(kind, kind)}, {data} has {how.get(data_types[name], data_types[name])}"
        for name, kind in saved.items()
        if name in data_types and data_types[name] != kind
    ]
    if found:
        raise CheckpointMismatchError(
            f"{trained_by}: {'; '.join(found)}; the rows looked up would not be the trained ones "
            "(write the column with the type it was trained on)"
        )


def _ranks(n: int) -> str:
    return f"{n} rank" if n == 1 else f"{n} ranks"


def check_collision_world_size(checkpoint: str, tables: dict[str, int], saved_world: Optional[int], world: int) -> None:
    """Stop when the collision-managed tables ``tables`` (name → rows) of a checkpoint saved by
    ``saved_world`` ranks cannot be loaded right on ``world`` ranks
    (:func:`fusionrec.sharding.collisions.maps_reload`: their maps merge, never split).
    ``saved_world`` None (a checkpoint without it) is not checked."""
    if saved_world is None or saved_world == world or not tables:
        return
    bad = [name for name, rows in tables.items() if not maps_reload(rows, MC_ID_SPACE, saved_world, world)]
    if not bad:
        return
    fits = [w for w in range(1, saved_world + 1) if all(maps_reload(r, MC_ID_SPACE, saved_world, w) for r in tables.values())]
    which, maps = (f"table {bad[0]} was", "its id -> row map")
    if len(bad) > 1:
        which, maps = f"tables {', '.join(bad)} were", "their id -> row maps"
    where = (", ".join(map(str, fits[:-1])) + " or " if len(fits) > 1 else "") + _ranks(fits[-1])
    raise CheckpointMismatchError(
        f"{checkpoint}: collision-managed {which} saved by {_ranks(saved_world)} and cannot be loaded on "
        f"{_ranks(world)}: each rank holds one row-wise block of {maps}, and TorchRec can merge blocks "
        f"onto fewer ranks but not split them (features.tables.<name>.collision); load it on {where}"
    )
