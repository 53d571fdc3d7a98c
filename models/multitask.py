"""The whole multi-task model: embeddings → bottom → fusion → towers → losses.

Any bottom (shared | DTRN) composes with any fusion (shared_bottom, mmoe, ml_mmoe, ple,
cross_stitch, adatt, adatt_sp) and the per-task towers; the bottom hands the fusion one input
row per task, [B, T, D_b].

Introspection for evaluation (eval mode; ``batch`` on the model's device)::

    inner = dmp.module          # the MultiTaskModel inside DistributedModelParallel
    mats = inner.fusion_matrices(batch)     # list of [R_l, U_l] per level, or None
    names = inner.fusion_matrix_labels()    # list of (row names, column names) per level

Each call returns batch means, so averaging them over batches weighted by batch size gives
the exact mean over an eval set. The sharded lookups inside are collective: under several
ranks every rank must make the same calls.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from fusionrec.datasets.batch import Batch
from fusionrec.datasets.schema import Schema
from fusionrec.models.bottoms import build_bottom
from fusionrec.models.config import ModelConfig
from fusionrec.models.embeddings import (
    build_embedding_bag_collection,
    build_embedding_collection,
    build_mc_embedding_bag_collection,
    build_mc_embedding_collection,
    feature_max_len,
    pad_sequence,
    pool_jagged,
    weighted_mean,
)
from fusionrec.models.fusion import build_fusion
from fusionrec.models.losses import MultiTaskLoss
from fusionrec.models.towers import TaskTowers

class StepOutput(NamedTuple):
    """What one forward computed, for the train loop's logs and metrics and for scoring.

    ``loss`` []: the weighted total (detached); ``task_losses`` [T]: each task's masked, weighted
    mean loss (detached); ``logits``, ``predictions`` [B, T] (sigmoid for binary tasks, the value
    for regression tasks); ``labels`` [B, T] and ``weights`` [B] as the batch carried them.
    (A NamedTuple so that TorchRec's pipeline tracer accepts it as the model's output.)
    """

    loss: torch.Tensor
    task_losses: torch.Tensor
    logits: torch.Tensor
    predictions: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor


Labels = list[tuple[list[str], list[str]]]


class MultiTaskModel(nn.Module):
    """Embeddings (``ebc``: pooled features on bag tables; ``ec``: every feature on a sequence
    table), a bottom giving per-task inputs [B, T, D_b], a fusion module giving [B, T, D_f],
    per-task towers giving logits [B, T], and the multi-task loss.

    ``forward`` calls ``self.ebc(batch.sparse)`` and ``self.ec(batch.sequence)`` (and, for
    collision-managed tables, ``self.mc_ebc(batch.mc_sparse)`` / ``self.mc_ec(batch.mc_sequence)``)
    directly on the batch, as TorchRec's train pipelines expect; the rest is fx-traceable.
    """

    def __init__(
        self,
        schema: Schema,
        cfg: ModelConfig,
        device: torch.device | str = "cpu",
        dense_device: Optional[torch.device | str] = None,
        mc_buckets: int = 1,
    ) -> None:
        super().__init__()
        device = torch.device(device)
        if dense_device is None:
            dense_device = torch.device("cpu") if device.type == "meta" else device
        features = schema.features
        self.schema, self.cfg = schema, cfg
        self.ebc: Optional[EmbeddingBagCollection] = build_embedding_bag_collection(features, device)
        self.ec: Optional[EmbeddingCollection] = build_embedding_collection(features, device)
        # Collision-managed tables (TorchRec's MC-EBC / MC-EC over the batch's mc_* KJTs of raw ids).
        self.mc_ebc = build_mc_embedding_bag_collection(features, device, mc_buckets)
        self.mc_ec = build_mc_embedding_collection(features, device, mc_buckets)
        groups = features.batch_features()
        self._mc_features = {f.name for f in [*groups["mc_sparse"], *groups["mc_sequence"]]}

        bag = set(features.bag_tables)
        # (name, comes from the EBC, pooling, static max length) per pooled feature, schema order.
        self._fields = [(f.name, f.table in bag, f.pooling, feature_max_len(f)) for f in features.sparse]
        self._sequences = [(s.name, s.max_len) for s in features.sequences]
        self._weighted = features.weighted_pooling

        num_tasks = len(schema.tasks)
        self.bottom = build_bottom(schema, cfg).to(dense_device)
        self.fusion = build_fusion(
            num_tasks, self.bottom.out_dim, cfg.fusion, identical_rows=not self.bottom.task_specific
        ).to(dense_device)
        self.towers = TaskTowers(num_tasks, self.fusion.out_dim, cfg.tower_dims, cfg.activation).to(dense_device)
        self.loss_fn = MultiTaskLoss(schema.tasks).to(dense_device)

    def embed(
        self, batch: Batch
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Embedding lookups → (fields P × [B, D_f], padded sequences M × [B, L_m, D],
        lengths M × [B])."""
        pooled = self.ebc(batch.sparse).to_dict() if self.ebc is not None else {}
        looked_up = self.ec(batch.sequence) if self.ec is not None else {}
        # A managed-collision collection returns (embeddings, remapped ids or None). Its outputs
        # stay separate dicts: under the train pipeline's tracer they are proxies, which index
        # but do not unpack.
        mc_pooled = self.mc_ebc(batch.mc_sparse)[0].to_dict() if self.mc_ebc is not None else {}
        mc_looked_up = self.mc_ec(batch.mc_sequence)[0] if self.mc_ec is not None else {}
        fields = []
        for name, from_bag, pooling, max_len in self._fields:
            managed = name in self._mc_features
            if not from_bag:
                fields.append(pool_jagged((mc_looked_up if managed else looked_up)[name], pooling, max_len))
            elif self._weighted and pooling == "mean":  # the weighted EBC pooled Σ w·e
                kjt = batch.mc_sparse if managed else batch.sparse
                fields.append(weighted_mean((mc_pooled if managed else pooled)[name].float(), kjt[name], max_len))
            else:  # fp32 for the dense part whatever the table's data_type (a no-op for sharded tables)
                fields.append((mc_pooled if managed else pooled)[name].float())
        sequences, lengths = [], []
        for name, max_len in self._sequences:
            padded, n = pad_sequence((mc_looked_up if name in self._mc_features else looked_up)[name], max_len)
            sequences.append(padded)
            lengths.append(n)
        return fields, sequences, lengths

    def task_inputs(self, batch: Batch) -> torch.Tensor:
        """The bottom's per-task inputs to the fusion [B, T, D_b]."""
        fields, sequences, lengths = self.embed(batch)
        return self.bottom(batch.dense, fields, sequences, lengths)

    def logits(self, batch: Batch) -> torch.Tensor:
        """→ logits [B, T]."""
        return self.towers(self.fusion(self.task_inputs(batch)))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, StepOutput]:
        """→ ``(loss [] with its graph, StepOutput)``: the pair TorchRec's train pipelines expect."""
        logits = self.logits(batch)
        loss, task_losses = self.loss_fn(logits, batch.labels, batch.weights)
        logits = logits.detach()
        out = StepOutput(
            loss.detach(), task_losses.detach(), logits, self.loss_fn.predictions(logits), batch.labels, batch.weights
        )
        return loss, out

    # ------------------------------------------------------------------ introspection (eval)

    @torch.no_grad()
    def fusion_matrices(self, batch: Batch) -> Optional[list[torch.Tensor]]:
        """Task-to-task fusion matrices, one [R_l, U_l] per fusion level, averaged over the batch.

        Rows are the units that fuse at level l (the tasks, then ``shared`` where a shared unit
        fuses), columns the units that own experts (the tasks, then ``shared``); see
        :meth:`fusion_matrix_labels`. Entry (r, u) is the gate mass unit r puts on unit u's
        experts (AdaTT, AdaTT-sp, PLE; rows sum to 1), or the stitch weight α_{r,u}
        (cross-stitch). None for fusions whose experts belong to no task (shared_bottom, mmoe,
        ml_mmoe), without a lookup.
        """
        if self.fusion_matrix_labels() is None:
            return None
        return self.fusion.fusion_matrices(self.task_inputs(batch))

    @torch.no_grad()
    def gate_matrices(self, batch: Batch) -> Optional[list[torch.Tensor]]:
        """Per fusion level, the batch-mean gates [R_l, N_l] over individual experts (AdaTT,
        AdaTT-sp, PLE, MMoE, ML-MMoE; see :meth:`gate_matrix_labels`), or None without gates."""
        if self.gate_matrix_labels() is None:
            return None
        return [g.mean(dim=0) for g in self.fusion.gate_weights(self.task_inputs(batch))]

    def fusion_matrix_labels(self) -> Optional[Labels]:
        """(row names, column names) of each :meth:`fusion_matrices` entry."""
        return self.fusion.fusion_labels(self.schema.task_names)

    def gate_matrix_labels(self) -> Optional[Labels]:
        """(row names, expert names ``unit/j`` or ``L<level>/j``) of each :meth:`gate_matrices` entry."""
        return self.fusion.gate_labels(self.schema.task_names)


def build_model(
    schema: Schema,
    cfg: ModelConfig,
    device: torch.device | str = "cpu",
    dense_device: Optional[torch.device | str] = None,
    mc_buckets: int = 1,
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
        mc_buckets: row-wise blocks of the collision-managed tables' id → row maps; TorchRec's
            planner needs a multiple of the world size the model is sharded over (the job
            passes its world size).
    """
    return MultiTaskModel(schema, cfg, device, dense_device, mc_buckets)
