"""Score a (sharded) model on Parquet logs with streaming metrics, on every rank at once.

Shared by ``pipeline.evaluate`` (offline) and the periodic evaluation in ``pipeline.train``.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from datasets.batch import Batch
from datasets.schema import Schema
from pipeline.metrics import TaskMetrics


def task_weights(schema: Schema, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[B, T] weights per task: the sample weight, zeroed outside each task's space."""
    names = schema.task_names
    columns = []
    for task in schema.tasks:
        w = weights
        if task.space is not None:
            w = w * (labels[:, names.index(task.space)] > 0.5).to(w.dtype)
        columns.append(w)
    return torch.stack(columns, dim=1)


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


@torch.no_grad()
def score(
    model: nn.Module, batches: Iterable[Batch], num_batches: int, schema: Schema, device: torch.device
) -> tuple[dict[str, dict], int]:
    """Per-task metrics of ``model`` over this rank's ``batches``, summed over all ranks.

    Sharded lookups are collective, so every rank runs the same number of forward passes: a
    rank with fewer batches repeats its last one and does not count it. A rank with no batch
    at all while others have some is an error (the eval set has fewer rows than ranks).

    Returns ({task: metrics}, number of rows scored over all ranks).
    """
    steps = _all_reduce(torch.tensor([num_batches], device=device), dist.ReduceOp.MAX)
    if num_batches == 0 and int(steps.item()) > 0:
        raise ValueError("this rank got no eval rows while others did: the eval set has fewer rows than ranks")
    metrics = {t.name: TaskMetrics(t.type) for t in schema.tasks}
    was_training = model.training
    model.eval()
    iterator, last, rows = iter(batches), None, 0
    for _ in range(int(steps.item())):
        batch = next(iterator, None)
        padding = batch is None
        batch = last if padding else batch.to(device)
        _, (_, _, predictions, labels, weights) = model(batch)
        last = batch
        if padding:
            continue
        rows += labels.shape[0]
        per_task = task_weights(schema, labels, weights)
        for i, task in enumerate(schema.tasks):
            metrics[task.name].update(predictions[:, i].cpu(), labels[:, i].cpu(), per_task[:, i].cpu())
    model.train(was_training)
    for m in metrics.values():
        m.all_reduce()
    total_rows = int(_all_reduce(torch.tensor([rows], device=device)).item())
    return {name: m.compute() for name, m in metrics.items()}, total_rows
