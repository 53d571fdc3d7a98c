"""A checkpoint as a self-contained serving artifact: TorchScript, quantised tables.

:func:`export` is what the export job (``python -m fusionrec.pipeline.export``) runs, and what
continuous training (``train.follow``) calls to publish a fresh version. It loads the
checkpoint (saved by any number of ranks; DCP reshards it into this one process), replaces
the embedding collections by TorchRec's quantised inference collections
(``torchrec.quant``: FBGEMM's ``IntNBitTableBatchedEmbeddingBagsCodegen`` kernels, row-wise
int8 with an fp16 scale and bias per row, fp16, or fp32 for ``none``), wraps embeddings,
bottom, fusion and towers in ``models.inference.InferenceModel``, traces it with TorchRec's FX
tracer and compiles it with TorchScript. The directory (layout in ``pipeline.artifact``) is
written aside and renamed into place at the end, so an interrupted export leaves nothing at
its destination.

Why TorchScript and not AOTInductor: TorchRec's inference stack (``torchrec.inference``, its
C++ predictor) and Triton's PyTorch backend load TorchScript; FBGEMM's inference operators are
TorchScript operators on CPU and GPU; jagged id inputs of any length run without recompiling;
and one ``model.pt`` loads from Python (``torch.jit.load``) or C++ (``torch::jit::load``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch
import yaml
from torch import nn

from fusionrec.datasets.batch import Batch
from fusionrec.datasets.hashing import FNV_OFFSET, FNV_PRIME
from fusionrec.datasets.schema import Schema
from fusionrec.errors import UserError
from fusionrec.models import MultiTaskModel, build_model
from fusionrec.models.inference import DenseHead, InferenceModel
from fusionrec.pipeline import artifact
from fusionrec.pipeline.cli_common import refuse_file_in_the_way
from fusionrec.pipeline.config import ExperimentConfig
from fusionrec.pipeline.job import check_checkpoint_binding, load_model_weights
from fusionrec.typedconfig import to_dict

QUANTIZE = {"none": torch.float32, "fp16": torch.float16, "int8": torch.qint8}
TABLE_DTYPE = {"none": "fp32", "fp16": "fp16", "int8": "int8 (row-wise, fp16 scale + bias per row)"}
# FBGEMM's CPU kernels read rows at any byte alignment; its CUDA kernels need 16 (TorchRec's
# default). A CPU artifact cannot run on a GPU anyway (its TBEs hold host weights), so rows are
# packed tight: int8 rows of dim 64 take 68 bytes instead of 80.
CPU_ROW_ALIGNMENT = 1
FP32_TOLERANCE = 1e-5
TMP_PREFIX = ".tmp-"


# ----------------------------------------------------------------------------- conversion


def quantized_collection(module: nn.Module | None, quantize: str) -> nn.Module | None:
    """TorchRec's inference version of an ``EmbeddingBagCollection`` / ``EmbeddingCollection``
    with its tables stored as ``quantize`` (FBGEMM table-batched inference kernels). The float
    module is left as it was."""
    from torch import quantization as tq  # noqa: PLC0415
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection  # noqa: PLC0415
    from torchrec.quant import embedding_modules as qm  # noqa: PLC0415

    if module is None:
        return None
    kinds = {EmbeddingBagCollection: qm.EmbeddingBagCollection, EmbeddingCollection: qm.EmbeddingCollection}
    quant_cls = kinds[type(module)]
    module.qconfig = tq.QConfig(
        activation=tq.PlaceholderObserver.with_args(dtype=torch.float32),
        weight=tq.PlaceholderObserver.with_args(dtype=QUANTIZE[quantize]),
    )
    setattr(module, qm.MODULE_ATTR_ROW_ALIGNMENT_INT, CPU_ROW_ALIGNMENT)
    try:
        return quant_cls.from_float(module)
    finally:
        del module.qconfig
        delattr(module, qm.MODULE_ATTR_ROW_ALIGNMENT_INT)


def _trace_head(head: DenseHead, inputs: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of the dense head, with DTRN's TIM swapped for its scripted
    per-length form (``models.inference.PerLengthInterests``: a trace would freeze the bucket
    plan of the example batch, a script keeps it per batch). Any other module that can pick a
    data-dependent path (``per_length``) is traced in its static one. The model is restored."""
    from fusionrec.models.dtrn import TaskInterestModule  # noqa: PLC0415
    from fusionrec.models.inference import compile_per_length_interests  # noqa: PLC0415

    swapped = []
    for parent in list(head.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, TaskInterestModule):
                swapped.append((parent, name, child))
    static = [m for m in head.modules() if hasattr(m, "per_length") and not isinstance(m, TaskInterestModule)]
    saved = [m.per_length for m in static]
    try:
        for parent, name, child in swapped:
            setattr(parent, name, compile_per_length_interests(child))
        for m in static:
            m.per_length = False
        return torch.jit.trace(head, inputs)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
        for m, value in zip(static, saved):
            m.per_length = value


def compile_inference_model(
    model: MultiTaskModel, schema: Schema, quantize: str, example: Batch
) -> tuple[torch.jit.ScriptModule, list[str], InferenceModel]:
    """The scripted serving model of ``model`` (CPU, eval mode) and its input names.

    1. The embedding collections become TorchRec's quantised ones (:func:`quantized_collection`).
    2. The dense head (bottom, fusion, towers) is recorded by ``torch.jit.trace`` on
       ``example``'s lookups (:func:`_trace_head`), DTRN's per-length sequence encoding, whose
       bucket plan depends on the batch, kept as a scripted call inside the trace.
    3. The whole model is traced by TorchRec's FX tracer with the head as one leaf call, inputs
       the schema does not use are removed from the signature, the traced head is put in, and
       ``torch.jit.script`` compiles it.

    Returns (scripted, input names, the eager ``InferenceModel`` it was made from)."""
    from torchrec.fx import Tracer  # noqa: PLC0415

    if quantize not in QUANTIZE:
        raise UserError(f"--quantize {quantize!r}: unknown quantisation; choose one of {', '.join(QUANTIZE)}")
    model.eval()
    head = DenseHead(schema, model.bottom, model.fusion, model.towers).eval()
    wrapper = InferenceModel(
        schema, quantized_collection(model.ebc, quantize), quantized_collection(model.ec, quantize), head
    ).eval()
    sparse = example.sparse
    weights = sparse.weights().float() if schema.features.weighted_pooling else torch.zeros(0)
    full_inputs = (example.dense.float(), sparse.values().long(), sparse.lengths().int(), weights,
                   example.sequence.values().long(), example.sequence.lengths().int())
    head_inputs = tuple(wrapper.head_inputs(*full_inputs))
    traced_head = _trace_head(head, head_inputs)
    graph = Tracer(leaf_modules=[DenseHead.__name__]).trace(wrapper)
    graph_module = torch.fx.GraphModule(wrapper, graph)
    for node in list(graph_module.graph.nodes):
        if node.op == "placeholder" and not node.users:
            graph_module.graph.erase_node(node)
    graph_module.recompile()
    names = [n.target for n in graph_module.graph.nodes if n.op == "placeholder"]
    graph_module.head = traced_head
    with warnings.catch_warnings():
        # TorchRec's and torch's own annotations make TorchScript warn on every export (dtype
        # constraints of Tensor subtypes not enforced; instance-level annotations of empty
        # containers): nothing a user can act on, and the inputs' dtypes are the manifest's.
        warnings.filterwarnings("ignore", message="TorchScript will treat type annotations of Tensor")
        warnings.filterwarnings("ignore", message="The TorchScript type system doesn't support instance-level")
        scripted = torch.jit.script(graph_module)
    scripted.eval()
    return scripted, names, wrapper


# ----------------------------------------------------------------------------- example inputs


def example_batch(schema: Schema, batch_size: int, seed: int = 0) -> Batch:
    """A reproducible batch of B rows shaped like the reader's: dense N(0, 1); every id feature
    0..max_len ids per row (scalars 0 or 1, mostly 1), ids uniform over the table; weights
    in (0, 2); labels 0 and sample weights 1 (the model does not read them)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: PLC0415

    g = torch.Generator().manual_seed(seed)
    features = schema.features
    B = batch_size

    def kjt(keys, weighted: bool) -> KeyedJaggedTensor:
        lengths, values = [], []
        for f in keys:
            cap = getattr(f, "max_len", None) if getattr(f, "multi_valued", True) else 1
            cap = cap or 1
            n = torch.randint(0, cap + 1, (B,), generator=g)
            if cap == 1:
                n = (torch.rand(B, generator=g) > 0.1).long()
            lengths.append(n)
            rows = features.table(f.table).num_embeddings
            values.append(torch.randint(0, rows, (int(n.sum()),), generator=g))
        lengths_t = torch.cat(lengths).int() if lengths else torch.zeros(0, dtype=torch.int32)
        values_t = torch.cat(values).long() if values else torch.zeros(0, dtype=torch.int64)
        weights = 2 * torch.rand(values_t.numel(), generator=g) if weighted else None
        return KeyedJaggedTensor(keys=[f.name for f in keys], values=values_t, lengths=lengths_t, weights=weights, stride=B)

    return Batch(
        dense=torch.randn(B, len(features.dense), generator=g),
        sparse=kjt(features.pooled_features, features.weighted_pooling),
        sequence=kjt(features.sequence_table_features, False),
        labels=torch.zeros(B, len(schema.tasks)),
        weights=torch.ones(B),
    )


@torch.no_grad()
def eager_predictions(model: MultiTaskModel, batch: Batch) -> torch.Tensor:
    """What the trainer's model predicts for ``batch``: [B, T] (eval mode, as evaluate scores)."""
    model.eval()
    return model(batch)[1].predictions


# ----------------------------------------------------------------------------- the manifest


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def embedding_bytes(collection: nn.Module | None) -> int:
    """Bytes of a quantised collection's table storage (rows with their scale/bias, padding)."""
    return 0 if collection is None else _bytes(collection.state_dict().values())


def dense_bytes(model: MultiTaskModel) -> int:
    """Bytes of every parameter and buffer outside the embedding tables."""
    parts = (model.bottom, model.fusion, model.towers)
    return sum(_bytes([*p.parameters(), *p.buffers()]) for p in parts)


def feature_pipeline(schema: Schema) -> dict:
    """What a serving-side feature pipeline must do to build the inputs from raw values."""
    f = schema.features
    bag = set(f.bag_tables)
    dense = []
    for i, name in enumerate(f.dense):
        norm = f.normalization.get(name)
        dense.append({
            "column": name, "index": i,
            "log": bool(norm and norm.log), "mean": norm.mean if norm else 0.0, "std": norm.std if norm else 1.0,
            "clip": norm.clip if norm else None,
        })
    ids = []
    for group, keys in (("sparse", f.pooled_features), ("sequence", f.sequence_table_features)):
        for index, feature in enumerate(keys):
            table = f.table(feature.table)
            is_seq = hasattr(feature, "behavior")
            entry = {
                "column": feature.name, "input": group, "key_index": index, "table": table.name,
                "num_embeddings": table.num_embeddings, "dim": table.dim,
                "kind": "sequence" if is_seq else ("id_list" if feature.multi_valued else "id"),
            }
            if is_seq:
                entry.update(behavior=feature.behavior, max_len=feature.max_len, order=feature.order,
                             keep="the most recent max_len ids, fed to the model oldest first")
            else:
                entry.update(pooling=feature.pooling, pooled_in=("EmbeddingBagCollection" if feature.table in bag else "model"))
                if feature.multi_valued:
                    entry.update(max_len=feature.max_len, keep="the first max_len ids")
                if feature.weight_column:
                    entry["weight_column"] = feature.weight_column
            ids.append(entry)
    return {
        "dense": dense,
        "dense_rule": "x -> sign(x)*log1p(|x|) if log; then (x - mean) / std; then clip to [-clip, clip] if clip; "
                      "a null, NaN or inf value becomes 0.0 (after normalisation)",
        "ids": ids,
        "id_rule": "integer id -> id mod num_embeddings (floor modulo: negative ids wrap); string id -> "
                   "stable_hash(utf8 bytes) mod num_embeddings (unsigned); a null id or list is absent (length 0), "
                   "nulls inside a list are dropped",
        "string_hash": {
            "name": "mix64(fnv1a64(bytes))",
            "fnv1a64": {"offset": FNV_OFFSET, "prime": FNV_PRIME, "step": "h = (h ^ byte) * prime mod 2**64"},
            "mix64": "h ^= h >> 30; h *= 0xBF58476D1CE4E5B9; h ^= h >> 27; h *= 0x94D049BB133111EB; h ^= h >> 31 (mod 2**64)",
        },
        "weights_rule": "per-id weights: a missing, null, NaN or inf weight is 1.0; features without a weight column weigh 1.0",
        "group_column": f.group_column,
    }


def input_spec(schema: Schema, names: list[str]) -> list[dict]:
    f = schema.features
    sparse_keys = [x.name for x in f.pooled_features]
    seq_keys = [x.name for x in f.sequence_table_features]
    spec = {
        "dense": {"dtype": "float32", "shape": ["B", len(f.dense)], "columns": list(f.dense)},
        "sparse_values": {"dtype": "int64", "shape": ["N_sparse"], "kjt_keys": sparse_keys,
                          "layout": "ids of every key, key-major then row order"},
        "sparse_lengths": {"dtype": "int32", "shape": [f"{len(sparse_keys)}*B"], "kjt_keys": sparse_keys,
                           "layout": "lengths[k*B + b]: ids of key k in row b"},
        "sparse_weights": {"dtype": "float32", "shape": ["N_sparse"], "kjt_keys": sparse_keys,
                           "layout": "one weight per id of sparse_values (1.0 where a feature has none)"},
        "sequence_values": {"dtype": "int64", "shape": ["N_sequence"], "kjt_keys": seq_keys,
                            "layout": "ids of every key, key-major then row order"},
        "sequence_lengths": {"dtype": "int32", "shape": [f"{len(seq_keys)}*B"], "kjt_keys": seq_keys,
                             "layout": "lengths[k*B + b]: ids of key k in row b"},
    }
    return [{"name": n, **spec[n]} for n in names]


def _used_tables(schema: Schema) -> list:
    used = {*schema.features.bag_tables, *schema.features.sequence_tables}
    return [t for t in schema.features.tables if t.name in used]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- the job


# --- managed collisions (issue 14) ---------------------------------------------------------------
# A collision-managed table maps raw ids to rows with TorchRec's MCH modules (an id -> row map that
# training keeps changing); the artifact's quantised tables take rows, not raw ids, so a server
# would look up the wrong rows. Until the export carries the maps (TorchRec's
# QuantManagedCollisionEmbeddingCollection is a start), it refuses such models.
def refuse_managed_collisions(cfg: ExperimentConfig) -> None:
    """Stop with one line when ``cfg`` has collision-managed tables (see above)."""
    managed = cfg.features.collision_tables
    if managed:
        raise UserError(
            f"features.tables: {', '.join(managed)} use collision management (collision: ...), whose id -> row maps "
            f"the export does not carry yet; a model with such tables cannot be exported"
        )


@torch.no_grad()
def export(cfg: ExperimentConfig, checkpoint: Path, out: Path, quantize: str, batch_size: int, force: bool,
           config_path: str = "") -> dict:
    """Write the artifact of ``checkpoint`` to ``out``; returns the manifest."""
    refuse_managed_collisions(cfg)
    # The checkpoint's own config rules: reordered tasks would export each task with another
    # task's tower (the id types are checked where data is read, by predict's reader).
    check_checkpoint_binding(cfg, checkpoint, None, "export")
    if quantize not in QUANTIZE:
        raise UserError(f"--quantize {quantize!r}: unknown quantisation; choose one of {', '.join(QUANTIZE)}")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    refuse_file_in_the_way(out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out}: exists and is not empty (pass --force to replace it)")
    started = time.perf_counter()
    out = out.absolute()
    # Everything is written under a hidden sibling and renamed to ``out`` only when complete:
    # an export killed at any point leaves ``out`` as it was.
    tmp = out.parent / f"{TMP_PREFIX}{out.name}-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise UserError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    try:
        (tmp / artifact.CONFIG).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        manifest = _export_into(tmp, cfg, checkpoint, quantize, batch_size, config_path)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["seconds"] = round(time.perf_counter() - started, 2)
    return manifest


def _remove_stale(out: Path) -> None:
    """Delete the leftovers of exports to ``out`` whose process is gone (killed mid-export)."""
    for path in out.parent.glob(f"{TMP_PREFIX}{out.name}-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@torch.no_grad()
def _export_into(tmp: Path, cfg: ExperimentConfig, checkpoint: Path, quantize: str, batch_size: int, config_path: str) -> dict:
    """Load, convert, check and write model, example files and manifest into ``tmp``."""
    schema = cfg.schema
    model = build_model(schema, cfg.model, device="cpu")
    # Alone: in follow mode rank 0 exports while the other ranks wait for it at the next
    # partition; a collective here would never be matched.
    meta = load_model_weights(model, checkpoint, alone=True)
    model.eval()

    batch = example_batch(schema, batch_size)
    scripted, names, wrapper = compile_inference_model(model, schema, quantize, batch)
    # The trace must hold for any batch: check the example and a batch of another size.
    max_diff = 0.0
    for b in (batch, example_batch(schema, 3, seed=1)):
        got = scripted(*artifact.batch_inputs(b, names))
        max_diff = max(max_diff, float((got - eager_predictions(model, b)).abs().max()))
    inputs = artifact.batch_inputs(batch, names)
    got = scripted(*inputs)
    if quantize == "none" and not max_diff <= FP32_TOLERANCE:
        raise RuntimeError(f"the fp32 export predicts {max_diff:.3g} away from the eager model (tolerance {FP32_TOLERANCE})")

    table_bytes = {"bag": embedding_bytes(wrapper.ebc), "sequence": embedding_bytes(wrapper.ec)}
    manifest = {
        "format": artifact.FORMAT,
        "format_version": artifact.FORMAT_VERSION,
        "file": artifact.MODEL_FILE,
        "load": "import torch, fbgemm_gpu; model = torch.jit.load(file); predictions = model(*inputs)",
        "device": "cpu",
        "quantize": quantize,
        "table_dtype": TABLE_DTYPE[quantize],
        "embedding_bytes": sum(table_bytes.values()),
        "dense_bytes": dense_bytes(model),
        "fp32_embedding_bytes": sum(t.num_embeddings * t.dim * 4 for t in _used_tables(schema)),
        "tasks": [{"name": t.name, "type": t.type, "space": t.space,
                   "output": "sigmoid probability" if t.type == "binary" else "value"} for t in schema.tasks],
        "inputs": input_spec(schema, names),
        "output": {"name": "predictions", "dtype": "float32", "shape": ["B", len(schema.tasks)],
                   "columns": schema.task_names},
        "tables": [{"name": t.name, "num_embeddings": t.num_embeddings, "dim": t.dim,
                    "collection": "EmbeddingBagCollection" if t.name in schema.features.bag_tables else "EmbeddingCollection"}
                   for t in _used_tables(schema)],
        "features": feature_pipeline(schema),
        "example_inputs": artifact.EXAMPLE_INPUTS,
        "example_outputs": artifact.EXAMPLE_OUTPUTS,
        "example_max_abs_diff_vs_eager": max_diff,
        "source": {
            "config": config_path, "checkpoint": str(checkpoint), "step": meta.get("step"),
            "world_size": meta.get("world_size"), "model": cfg.model.name,
        },
        "versions": {"torch": torch.__version__, "fbgemm_gpu": _version("fbgemm-gpu-cpu") or _version("fbgemm-gpu"),
                     "torchrec": _version("torchrec"), "fusionrec": _version("fusionrec")},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # For fusionrec.pipeline.predict's reader (the config's features: and tasks:); a
        # serving system reads "inputs" and "features" instead.
        "schema": {"features": to_dict(schema.features), "tasks": to_dict(schema.tasks)},
        # Per id feature, the kind of ids it was trained on: predict refuses logs of the other kind.
        "id_types": meta.get("id_types"),
    }

    text = json.dumps(manifest, indent=2) + "\n"
    torch.jit.save(scripted, str(tmp / artifact.MODEL_FILE), _extra_files={artifact.MANIFEST: text})
    torch.save(tuple(inputs), tmp / artifact.EXAMPLE_INPUTS)
    torch.save(got, tmp / artifact.EXAMPLE_OUTPUTS)
    (tmp / artifact.MANIFEST).write_text(text)
    return manifest


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; an existing ``out`` (checked empty or --force) is
    moved aside first and deleted only after the new one is in place."""
    old = None
    if out.exists():
        old = out.parent / f".old-{out.name}-{os.getpid()}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
