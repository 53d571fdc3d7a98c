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


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` the exported model (FBGEMM's operators are registered by importing
    ``fbgemm_gpu``, which torchrec's import has done in fusionrec's processes)."""
    import fbgemm_gpu  # noqa: F401, PLC0415  (registers torch.ops.fbgemm.*)

    manifest = read_manifest(directory)
    model = torch.jit.load(str(Path(directory) / manifest["file"]), map_location=device)
    model.eval()
    return model
