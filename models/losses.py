"""Per-task losses with task-space masks, sample weights and task weights."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusionrec.datasets.schema import TaskConfig, space_gates, task_space_mask

_EPS = 1e-8


class MultiTaskLoss(nn.Module):
    """``loss = Σ_t w_t · L_t`` with

        L_t = Σ_b mask_{b,t} · sw_b · ℓ_t(logit_{b,t}, y_{b,t}) / max(Σ_b mask_{b,t} · sw_b, eps)

    ℓ_t is BCE-with-logits for a binary task and squared error for a regression task;
    mask_{b,t} = 1 when task t has no ``space``, else 1 where the label of its space task is 1
    (> 0.5). A task with no row in its space in the batch contributes 0.
    """

    def __init__(self, tasks: Sequence[TaskConfig]) -> None:
        super().__init__()
        self.task_names = [t.name for t in tasks]
        self.register_buffer("is_binary", torch.tensor([t.type == "binary" for t in tasks]), persistent=False)
        self.register_buffer("task_weights", torch.tensor([float(t.weight) for t in tasks]), persistent=False)
        gate, gated = space_gates(tasks)
        self.register_buffer("space_gate", torch.tensor(gate), persistent=False)
        self.register_buffer("space_gated", torch.tensor(gated), persistent=False)

    def masks(self, labels: torch.Tensor) -> torch.Tensor:
        """labels [B, T] → [B, T] float, 1 where task t is trained on row b."""
        return task_space_mask(labels, self.space_gate, self.space_gated).to(labels.dtype)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, T] → sigmoid for binary tasks, identity for regression tasks."""
        return torch.where(self.is_binary, torch.sigmoid(logits), logits)

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """logits, labels [B, T]; weights [B] → (total loss [], per-task losses [T])."""
        elementwise = torch.where(
            self.is_binary,
            F.binary_cross_entropy_with_logits(logits, labels, reduction="none"),
            (logits - labels) ** 2,
        )
        w = self.masks(labels) * weights.unsqueeze(1)
        per_task = (w * elementwise).sum(dim=0) / w.sum(dim=0).clamp(min=_EPS)
        return (self.task_weights * per_task).sum(), per_task
