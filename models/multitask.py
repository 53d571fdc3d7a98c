"""The whole multi-task model: embeddings → bottom → fusion → towers → losses."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from datasets.batch import Batch
from datasets.schema import Schema
from models.adatt import AdaTT
from models.bottoms import build_bottom
from models.config import AdaTTConfig, ModelConfig
from models.embeddings import (
    build_embedding_bag_collection,
    build_embedding_collection,
    feature_max_len,
    pad_sequence,
    pool_jagged,
)
from models.losses import MultiTaskLoss
from models.towers import TaskTowers

ModelOutput = tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


class MultiTaskModel(nn.Module):
    """Embeddings (``ebc``: pooled features on bag tables; ``ec``: every feature on a sequence
    table), a bottom giving per-task inputs [B, T, D_b], a fusion module giving [B, T, D_f],
    per-task towers giving logits [B, T], and the multi-task loss.

    ``forward`` calls ``self.ebc(batch.sparse)`` and ``self.ec(batch.sequence)`` directly on
    the batch, as TorchRec's train pipelines expect; the rest is fx-traceable.
    """

    def __init__(
        self,
        schema: Schema,
        cfg: ModelConfig,
        device: torch.device | str = "cpu",
        dense_device: Optional[torch.device | str] = None,
    ) -> None:
        super().__init__()
        device = torch.device(device)
        if dense_device is None:
            dense_device = torch.device("cpu") if device.type == "meta" else device
        features = schema.features
        self.schema, self.cfg = schema, cfg
        self.ebc: Optional[EmbeddingBagCollection] = build_embedding_bag_collection(features, device)
        self.ec: Optional[EmbeddingCollection] = build_embedding_collection(features, device)

        bag = set(features.bag_tables)
        # (name, comes from the EBC, pooling, static max length) per pooled feature, schema order.
        self._fields = [(f.name, f.table in bag, f.pooling, feature_max_len(f)) for f in features.sparse]
        self._sequences = [(s.name, s.max_len) for s in features.sequences]

        num_tasks = len(schema.tasks)
        self.bottom = build_bottom(schema, cfg).to(dense_device)
        if not isinstance(cfg.fusion, AdaTTConfig):
            raise ValueError(f"unknown fusion config {cfg.fusion!r}")
        self.fusion = AdaTT(num_tasks, self.bottom.out_dim, cfg.fusion).to(dense_device)
        self.towers = TaskTowers(num_tasks, self.fusion.out_dim, cfg.tower_dims, cfg.activation).to(dense_device)
        self.loss_fn = MultiTaskLoss(schema.tasks).to(dense_device)

    def embed(
        self, batch: Batch
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Embedding lookups → (fields P × [B, D_f], padded sequences M × [B, L_m, D],
        lengths M × [B])."""
        pooled = self.ebc(batch.sparse).to_dict() if self.ebc is not None else {}
        looked_up = self.ec(batch.sequence) if self.ec is not None else {}
        fields = [
            pooled[name] if from_bag else pool_jagged(looked_up[name], pooling, max_len)
            for name, from_bag, pooling, max_len in self._fields
        ]
        sequences, lengths = [], []
        for name, max_len in self._sequences:
            padded, n = pad_sequence(looked_up[name], max_len)
            sequences.append(padded)
            lengths.append(n)
        return fields, sequences, lengths

    def logits(self, batch: Batch) -> torch.Tensor:
        """→ logits [B, T]."""
        fields, sequences, lengths = self.embed(batch)
        bottom = self.bottom(batch.dense, fields, sequences, lengths)  # [B, T, D_b]
        return self.towers(self.fusion(bottom))

    def forward(self, batch: Batch) -> ModelOutput:
        """→ ``(loss, (loss.detach(), logits [B, T], predictions [B, T], labels [B, T],
        weights [B]))``; predictions are sigmoid(logit) for binary tasks and the logit for
        regression tasks."""
        logits = self.logits(batch)
        loss, _ = self.loss_fn(logits, batch.labels, batch.weights)
        predictions = self.loss_fn.predictions(logits.detach())
        return loss, (loss.detach(), logits.detach(), predictions, batch.labels, batch.weights)


def build_model(
    schema: Schema,
    cfg: ModelConfig,
    device: torch.device | str = "cpu",
    dense_device: Optional[torch.device | str] = None,
) -> MultiTaskModel:
    """Build the model for ``schema``.

    Args:
        schema: features and tasks.
        cfg: the ``model:`` section.
        device: where the embedding tables are built; ``torch.device("meta")`` defers their
            allocation to ``DistributedModelParallel``.
        dense_device: where the dense modules are built; defaults to ``device``, or CPU when
            ``device`` is meta (DMP moves dense modules to its device and would fill meta
            buffers with zeros).
    """
    return MultiTaskModel(schema, cfg, device, dense_device)
