"""Per-task towers: one MLP per task ending in a single logit, all tasks in grouped einsums."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fusionrec.models.layers import GroupedMLP


class TaskTowers(nn.Module):
    """T independent MLPs ``in → tower_dims… → 1``.

    Shapes: x [B, T, in] (task t's fused representation in row t) → logits [B, T].
    Hidden layers use ``activation``; the logit layer is linear.
    """

    def __init__(self, num_tasks: int, in_dim: int, tower_dims: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        self.mlp = GroupedMLP(num_tasks, in_dim, [*tower_dims, 1], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)
