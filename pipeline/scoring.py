"""Score a (sharded) model on Parquet logs with streaming metrics, on every rank at once.

Shared by ``pipeline.evaluate`` (offline) and the periodic evaluation in ``pipeline.train``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

from fusionrec.datasets.batch import Batch
from fusionrec.datasets.schema import Schema, space_gates, task_space_mask
from fusionrec.pipeline.distributed import all_reduce, this_rank
from fusionrec.pipeline.grouped import GroupAUC
from fusionrec.pipeline.metrics import BootstrapMetrics, TaskMetrics


def task_weights(schema: Schema, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[B, T] weights per task: the sample weight, zeroed outside each task's space."""
    gate, gated = space_gates(schema.tasks)
    mask = task_space_mask(labels, torch.tensor(gate, device=labels.device), torch.tensor(gated, device=labels.device))
    return weights.unsqueeze(1) * mask.to(weights.dtype)


@dataclass
class ScoreOptions:
    """Extras beyond the point metrics. ``bootstrap``: Poisson replicates for confidence
    intervals (0: none); ``fusion_batches``: batches per rank over which the fusion matrices
    are averaged (0: none); ``on_batch``: called with (batch, predictions [B, T]) for every
    real batch, e.g. to write predictions out. ``gauc``: group AUC per binary task when the
    batches carry group ids (``FeatureSchema.group_column``)."""

    bootstrap: int = 0
    seed: int = 0
    gauc: bool = True
    fusion_batches: int = 0
    on_batch: Optional[Callable[[Batch, torch.Tensor], None]] = None


@dataclass
class ScoreResult:
    tasks: dict[str, dict]
    rows: int
    roc: dict[str, dict] = field(default_factory=dict)
    calibration: dict[str, dict] = field(default_factory=dict)
    fusion: Optional[list[dict]] = None


class _FusionAverage:
    """Row-weighted mean over the eval rows of the model's per-level fusion matrices."""

    def __init__(self, model: nn.Module, fusion_type: str) -> None:
        self.model = model
        self.labels = model.fusion_matrix_labels()
        self.kind = "stitch weights α" if fusion_type == "cross_stitch" else "gate mass on each unit's experts"
        self.sums: Optional[list[torch.Tensor]] = None
        self.rows = 0

    def update(self, batch: Batch, count: bool) -> None:
        matrices = self.model.fusion_matrices(batch)  # a collective lookup: called on padding batches too
        if not count:
            return
        n = batch.batch_size
        weighted = [m.detach().double() * n for m in matrices]
        self.sums = weighted if self.sums is None else [a + b for a, b in zip(self.sums, weighted)]
        self.rows += n

    def compute(self, device: torch.device) -> Optional[list[dict]]:
        if self.sums is None:
            return None
        rows = float(all_reduce(torch.tensor([self.rows], dtype=torch.float64, device=device)).item())
        out = []
        for (row_names, col_names), total in zip(self.labels, self.sums):
            mean = all_reduce(total.to(device)).cpu() / max(rows, 1.0)
            out.append({"rows": row_names, "columns": col_names, "matrix": mean.tolist(), "kind": self.kind})
        return out


def _inner(model: nn.Module) -> nn.Module:
    """The user's model inside DistributedModelParallel (or the model itself)."""
    return getattr(model, "module", model)


@torch.no_grad()
def score(
    model: nn.Module,
    batches: Iterable[Batch],
    num_batches: int,
    schema: Schema,
    device: torch.device,
    options: ScoreOptions | None = None,
    fusion_type: str = "",
) -> ScoreResult:
    """Per-task metrics of ``model`` over this rank's ``batches``, summed over all ranks.

    Sharded lookups are collective, so every rank runs the same number of forward passes: a
    rank with fewer batches repeats its last one and does not count it. A rank with no batch
    at all while others have some is an error (the eval set has fewer rows than ranks).
    """
    options = options or ScoreOptions()
    rank = this_rank()
    steps = int(all_reduce(torch.tensor([num_batches], device=device), dist.ReduceOp.MAX).item())
    if num_batches == 0 and steps > 0:
        raise ValueError("this rank got no eval rows while others did: the eval set has fewer rows than ranks")
    metrics = {t.name: TaskMetrics(t.type, device=device) for t in schema.tasks}
    boot = {
        t.name: BootstrapMetrics(t.type, options.bootstrap, seed=options.seed * 1000 + rank * 31 + i, device=device)
        for i, t in enumerate(schema.tasks)
    } if options.bootstrap else {}
    # Fusions whose experts belong to no task (shared_bottom, mmoe, ml_mmoe) have no matrix.
    has_matrices = _inner(model).fusion_matrix_labels() is not None
    fusion = _FusionAverage(_inner(model), fusion_type) if options.fusion_batches and has_matrices else None
    grouped = {t.name: GroupAUC() for t in schema.tasks if t.type == "binary"} if options.gauc else {}
    was_training = model.training
    model.eval()
    iterator, last, rows = iter(batches), None, 0
    for step in range(steps):
        batch = next(iterator, None)
        padding = batch is None
        batch = last if padding else batch.to(device)
        _, out = model(batch)
        predictions, labels, weights = out.predictions, out.labels, out.weights
        if fusion is not None and step < options.fusion_batches:
            fusion.update(batch, count=not padding)
        last = batch
        if padding:
            continue
        rows += labels.shape[0]
        if options.on_batch is not None:
            options.on_batch(batch, predictions)
        per_task = task_weights(schema, labels, weights)  # everything stays on the device until the end
        predictions = predictions.float()
        for i, task in enumerate(schema.tasks):
            metrics[task.name].update(predictions[:, i], labels[:, i], per_task[:, i])
            if task.name in boot:
                boot[task.name].update(predictions[:, i], labels[:, i], per_task[:, i])
            if task.name in grouped and batch.group_ids is not None:
                grouped[task.name].update(batch.group_ids, predictions[:, i], labels[:, i], per_task[:, i])
    model.train(was_training)
    for m in [*metrics.values(), *boot.values()]:
        m.finish()
    total_rows = int(all_reduce(torch.tensor([rows], device=device)).item())
    tasks = {name: m.compute() for name, m in metrics.items()}
    for name, b in boot.items():
        tasks[name]["ci"] = b.compute()
    if schema.features.group_column:
        for name, g in grouped.items():
            tasks[name]["gauc"], tasks[name]["gauc_groups"] = g.compute()
    binary = [t.name for t in schema.tasks if t.type == "binary"]
    return ScoreResult(
        tasks=tasks,
        rows=total_rows,
        roc={t: metrics[t].roc_curve() for t in binary},
        calibration={t: metrics[t].calibration_curve() for t in binary},
        fusion=fusion.compute(device) if fusion is not None else None,
    )
