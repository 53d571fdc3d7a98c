"""Bottoms: from embedded features to per-task inputs [B, T, D_bottom].

Every bottom takes the same arguments, assembled by ``MultiTaskModel`` from the embedding
outputs:

* dense [B, Dd];
* fields: one [B, D_f] vector per pooled feature, in ``FeatureSchema.sparse`` order;
* sequences: one right-padded [B, L_m, D_m] tensor per behaviour sequence and its
  lengths [B], in ``FeatureSchema.sequences`` order;

and exposes ``out_dim`` (D_bottom) and ``task_specific`` (False when every task gets the same
row, which lets the fusion above compute task-neutral parts once).
"""

from __future__ import annotations

import torch
from torch import nn

from fusionrec.datasets.schema import Schema
from fusionrec.models.config import DTRNConfig, ModelConfig, SharedBottomConfig
from fusionrec.models.dtrn import DTRN


class SharedBottom(nn.Module):
    """Every task reads ``concat[dense; fields…; masked mean of each sequence…]``.

    Output [B, T, Dd + Σ D_f + Σ D_m], the same row for every task (a broadcast view).
    """

    task_specific = False

    def __init__(self, num_tasks: int, dense_dim: int, field_dims: list[int], sequence_dims: list[int]) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.out_dim = dense_dim + sum(field_dims) + sum(sequence_dims)
        if self.out_dim == 0:
            raise ValueError("the shared bottom has no input")

    def forward(
        self,
        dense: torch.Tensor,
        fields: list[torch.Tensor],
        sequences: list[torch.Tensor],
        lengths: list[torch.Tensor],
    ) -> torch.Tensor:
        means = []
        for seq, n in zip(sequences, lengths):
            # Padding is zero, so the sum over all positions is the sum over valid ones.
            means.append(seq.sum(dim=1) / n.clamp(min=1).unsqueeze(1).to(seq.dtype))
        x = torch.cat([dense, *fields, *means], dim=1)
        return x.unsqueeze(1).expand(-1, self.num_tasks, -1)


def build_bottom(schema: Schema, cfg: ModelConfig) -> nn.Module:
    """The bottom named by ``cfg.bottom`` for ``schema``.

    Raises:
        ValueError: DTRN over tables of different dims, or a target feature that is not a
            pooled feature on a sequence table.
    """
    features = schema.features
    num_tasks = len(schema.tasks)
    dim_of = {t.name: t.dim for t in features.tables}
    field_dims = [dim_of[f.table] for f in features.sparse]
    sequence_dims = [dim_of[s.table] for s in features.sequences]
    bottom = cfg.bottom
    if isinstance(bottom, SharedBottomConfig):
        return SharedBottom(num_tasks, len(features.dense), field_dims, sequence_dims)
    if isinstance(bottom, DTRNConfig):
        used = {f.table for f in features.sparse} | {s.table for s in features.sequences}
        dims = {name: dim_of[name] for name in sorted(used)}
        if len(set(dims.values())) > 1:
            raise ValueError(f"DTRN needs one embedding dim for all tables it reads, got {dims}")
        target_index = None
        if bottom.pooling == "target" and features.sequences:
            names = [f.name for f in features.sparse]
            if bottom.target_feature not in names:
                raise ValueError(f"DTRN target_feature {bottom.target_feature!r} is not a sparse feature; have {names}")
            target_index = names.index(bottom.target_feature)
            table = features.sparse[target_index].table
            if table not in features.sequence_tables:
                raise ValueError(
                    f"DTRN target_feature {bottom.target_feature!r} is on table {table!r}, which no sequence "
                    f"uses; the candidate must share a table with the behaviours ({features.sequence_tables})"
                )
        return DTRN(
            num_tasks=num_tasks,
            dense_dim=len(features.dense),
            dim=next(iter(dims.values())),
            num_pooled=len(features.sparse),
            behaviors=[s.behavior for s in features.sequences],
            sequence_max_lens=[s.max_len for s in features.sequences],
            target_index=target_index,
            cfg=bottom,
            activation=cfg.activation,
        )
    raise ValueError(f"unknown bottom config {bottom!r}")
