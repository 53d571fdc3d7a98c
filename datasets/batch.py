"""The unit of data that flows from the reader to the train pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class Batch(Pipelineable):
    """One batch of B impressions.

    Attributes:
        dense: [B, Dd] float32 dense features (Dd may be 0), normalised as the schema says.
        sparse: KJT of pooled features on bag tables, keys in
            ``FeatureSchema.pooled_features`` order (stride B). When
            ``FeatureSchema.weighted_pooling``, it carries float32 weights for every key
            (1.0 for features without a ``weight_column``).
        sequence: KJT of features on sequence tables, keys in
            ``FeatureSchema.sequence_table_features`` order (stride B).
        labels: [B, T] float32, one column per task in ``Schema.tasks`` order.
        weights: [B] float32 sample weights (1 when the schema has no weight column).
        mc_sparse / mc_sequence: the KJTs of the same kinds of features on collision-managed
            tables (``TableConfig.collision``; keys from ``FeatureSchema.batch_features()``),
            with raw ids for TorchRec's managed-collision modules; None without such tables.

    Two more attributes ride along without being dataclass fields (so the model and the
    train pipeline never see them); ``to`` and ``pin_memory`` keep them:

        group_ids: [B] int64 user / group ids (``FeatureSchema.group_column``) for group
            AUC, or None.
        stats: bad-value events in this batch's rows, ``{"counter/column": count}`` (only
            non-zero ones; see :mod:`datasets.convert`). Plain ints, so they cross
            DataLoader worker processes with the batch.
        source: the Parquet file(s) its rows came from, set by the reader when ``stats`` is
            not empty (else None), so a bad-value report can name where it happened.
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    sequence: KeyedJaggedTensor
    labels: torch.Tensor
    weights: torch.Tensor
    mc_sparse: Optional[KeyedJaggedTensor] = None
    mc_sequence: Optional[KeyedJaggedTensor] = None

    def __post_init__(self) -> None:
        self.group_ids: Optional[torch.Tensor] = None
        self.stats: dict[str, int] = {}
        self.source: Optional[str] = None

    def _with_extras(self, other: "Batch", group_ids: Optional[torch.Tensor]) -> "Batch":
        other.group_ids = group_ids
        other.stats = self.stats
        other.source = self.source
        return other

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        moved = Batch(
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            sparse=self.sparse.to(device=device, non_blocking=non_blocking),
            sequence=self.sequence.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            weights=self.weights.to(device=device, non_blocking=non_blocking),
            mc_sparse=None if self.mc_sparse is None else self.mc_sparse.to(device=device, non_blocking=non_blocking),
            mc_sequence=None if self.mc_sequence is None else self.mc_sequence.to(device=device, non_blocking=non_blocking),
        )
        group_ids = None if self.group_ids is None else self.group_ids.to(device=device, non_blocking=non_blocking)
        return self._with_extras(moved, group_ids)

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.sequence.record_stream(stream)
        self.labels.record_stream(stream)
        self.weights.record_stream(stream)
        for kjt in (self.mc_sparse, self.mc_sequence):
            if kjt is not None:
                kjt.record_stream(stream)
        if self.group_ids is not None:
            self.group_ids.record_stream(stream)

    def pin_memory(self) -> "Batch":
        pinned = Batch(
            dense=self.dense.pin_memory(),
            sparse=self.sparse.pin_memory(),
            sequence=self.sequence.pin_memory(),
            labels=self.labels.pin_memory(),
            weights=self.weights.pin_memory(),
            mc_sparse=None if self.mc_sparse is None else self.mc_sparse.pin_memory(),
            mc_sequence=None if self.mc_sequence is None else self.mc_sequence.pin_memory(),
        )
        return self._with_extras(pinned, None if self.group_ids is None else self.group_ids.pin_memory())

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]
