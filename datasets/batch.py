"""The unit of data that flows from the reader to the train pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class Batch(Pipelineable):
    """One batch of B impressions.

    Attributes:
        dense: [B, Dd] float32 dense features (Dd may be 0).
        sparse: KJT of pooled features on bag tables, keys in
            ``FeatureSchema.pooled_features`` order (stride B).
        sequence: KJT of features on sequence tables, keys in
            ``FeatureSchema.sequence_table_features`` order (stride B).
        labels: [B, T] float32, one column per task in ``Schema.tasks`` order.
        weights: [B] float32 sample weights (1 when the schema has no weight column).
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    sequence: KeyedJaggedTensor
    labels: torch.Tensor
    weights: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            sparse=self.sparse.to(device=device, non_blocking=non_blocking),
            sequence=self.sequence.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            weights=self.weights.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.sequence.record_stream(stream)
        self.labels.record_stream(stream)
        self.weights.record_stream(stream)

    def pin_memory(self) -> "Batch":
        return Batch(
            dense=self.dense.pin_memory(),
            sparse=self.sparse.pin_memory(),
            sequence=self.sequence.pin_memory(),
            labels=self.labels.pin_memory(),
            weights=self.weights.pin_memory(),
        )

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]
