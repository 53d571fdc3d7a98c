"""The exported model directory, from fusionrec's side: its layout, its manifest, and how a
batch of the reader becomes the model's inputs.

``pipeline.export`` writes the directory and ``pipeline.predict`` reads it. A serving system
needs none of this module: ``torch.jit.load(DIR/model.pt)`` after ``import fbgemm_gpu`` is
all it takes (docs/serving.md).

Layout of DIR::

    model.pt              TorchScript module: model(*inputs) -> predictions [B, T]
    manifest.json         format, inputs, tasks, feature pipeline rules, bytes, source
    example_inputs.pt     a tuple of tensors: model(*torch.load(...)) runs
    example_outputs.pt    what the trainer's eager model predicts for them, [B, T]
    config.yaml           the resolved experiment config, for reference only
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fusionrec.datasets.batch import Batch
from fusionrec.datasets.schema import FeatureSchema, Schema, TaskConfig
from fusionrec.errors import ConfigError, UserError
from fusionrec.typedconfig import from_dict

FORMAT = "torchscript"
FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
MANIFEST = "manifest.json"
EXAMPLE_INPUTS = "example_inputs.pt"
EXAMPLE_OUTPUTS = "example_outputs.pt"
CONFIG = "config.yaml"


def batch_inputs(batch: Batch, names: list[str]) -> tuple[torch.Tensor, ...]:
    """The model inputs named ``names`` (the manifest's ``inputs`` order) from a reader batch.

    dense [B, Dd] float32; ``*_values`` int64 [N]; ``*_lengths`` int32 [F*B] (feature-major,
    the KJT layout); ``sparse_weights`` float32 [N]."""
    parts = {
        "dense": lambda: batch.dense.float(),
        "sparse_values": lambda: batch.sparse.values().long(),
        "sparse_lengths": lambda: batch.sparse.lengths().int(),
        "sparse_weights": lambda: batch.sparse.weights().float(),
        "sequence_values": lambda: batch.sequence.values().long(),
        "sequence_lengths": lambda: batch.sequence.lengths().int(),
    }
    return tuple(parts[name]() for name in names)


def read_manifest(directory: str | Path) -> dict:
    """``DIR/manifest.json`` of an exported model; a UserError names what is wrong."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UserError(f"{directory}: not an exported model (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
            f"this fusionrec reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    if not (Path(directory) / manifest["file"]).is_file():
        raise UserError(f"{directory}: the model file {manifest['file']!r} named by {MANIFEST} is missing")
    return manifest


def manifest_schema(manifest: dict) -> Schema:
    """The features and tasks the model reads, as the reader needs them (from the manifest's
    ``schema`` section, the training config's ``features:`` and ``tasks:`` verbatim)."""
    section = manifest["schema"]
    try:
        features = from_dict(FeatureSchema, section["features"], key="schema.features", source=MANIFEST)
        tasks = [from_dict(TaskConfig, t, key=f"schema.tasks.{i}", source=MANIFEST) for i, t in enumerate(section["tasks"])]
        return Schema(features, tasks)
    except (ConfigError, ValueError, KeyError) as err:
        raise UserError(f"{MANIFEST}: schema: {err}") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """``torch.jit.load`` the exported model (FBGEMM's operators are registered by importing
    ``fbgemm_gpu``, which torchrec's import has done in fusionrec's processes); returns the
    model and its manifest.

    The manifest that counts is the copy the model file carries (written into ``model.pt`` at
    export): ``manifest.json`` beside it is for people and servers to read, and a copy that
    differs from it (edited, or from another export) stops here, naming the first field that
    differs, instead of feeding the model by rules it was not exported with. A truncated or
    corrupt model file is one line naming it."""
    import fbgemm_gpu  # noqa: F401, PLC0415  (registers torch.ops.fbgemm.*)

    loose = read_manifest(directory)
    path = Path(directory) / loose["file"]
    extra = {MANIFEST: ""}
    try:
        model = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a loadable TorchScript model ({first}); re-export it") from None
    if not extra[MANIFEST]:
        raise UserError(f"{path}: carries no manifest of its own (not written by fusionrec's export); re-export it")
    embedded = json.loads(extra[MANIFEST])
    where = first_difference(embedded, loose)
    if where is not None:
        raise UserError(
            f"{Path(directory) / MANIFEST} differs from the manifest inside {path} at {where}: the model file's copy "
            f"is the one it was exported with; restore {MANIFEST} or re-export"
        )
    model.eval()
    return model, embedded


def first_difference(a: object, b: object, path: str = "") -> str | None:
    """The first key path (``features.3.max_len``) where the JSON values ``a`` and ``b`` differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{path}{key} ({'missing from the model' if key not in a else 'missing from the file'})"
            found = first_difference(a[key], b[key], f"{path}{key}.")
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path.rstrip('.')} ({len(a)} entries in the model, {len(b)} in the file)"
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}{i}.")
            if found is not None:
                return found
        return None
    return None if a == b else f"{path.rstrip('.')} (model {a!r}, file {b!r})"
