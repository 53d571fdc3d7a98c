"""The serving forward of a multi-task model: plain tensors in, per-task predictions out.

``InferenceModel`` composes a trained ``MultiTaskModel``'s parts — its embedding collections
(usually replaced by TorchRec's quantised inference collections, see ``pipeline.export``), its
bottom, fusion and towers — behind a signature of plain tensors, so that it can be traced by
TorchRec's FX tracer and compiled with TorchScript. It computes exactly what
``MultiTaskModel.logits`` computes, followed by the prediction link (sigmoid for binary tasks,
the value for regression tasks); it owns no parameters of its own.

Inputs (B rows; the two id groups are KeyedJaggedTensors flattened key-major, keys in the order
the reader builds them, see ``input_spec``)::

    dense             [B, Dd]            float32, normalised as the schema says
    sparse_values     [N_s]              int64 row ids of the pooled features on bag tables
    sparse_lengths    [F_s * B]          int32 ids per (feature, row), feature-major
    sparse_weights    [N_s]              float32 per-id weights (weighted pooling only)
    sequence_values   [N_q]              int64 row ids of every feature on a sequence table
    sequence_lengths  [F_q * B]          int32, feature-major

Output: predictions [B, T] float32. Inputs a schema does not use (no bag table, no sequence
table, no per-id weights) are dropped from the compiled signature by ``pipeline.export``.

``pipeline.export`` compiles the two halves differently: the lookups (KeyedJaggedTensor,
TorchRec's quantised collections, jagged pooling and padding) are traced by TorchRec's FX tracer
and compiled by ``torch.jit.script``; the :class:`DenseHead` (bottom, fusion, towers), whose
shapes are static but whose Python is not TorchScript, is recorded by ``torch.jit.trace``.
"""

from typing import Optional

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from fusionrec.datasets.schema import Schema
from fusionrec.models.embeddings import feature_max_len, pad_sequence, pool_jagged

def _weighted_mean(weighted_sum: torch.Tensor, jt: JaggedTensor, max_len: Optional[int]) -> torch.Tensor:
    """``models.embeddings.weighted_mean`` in TorchScript-friendly form (the weights are known
    to be there): weighted_sum [B, D] / Σ_i w_i per row, a row whose weights sum to <= 0 kept."""
    weights = JaggedTensor(values=jt.weights(), lengths=jt.lengths()).to_padded_dense(desired_length=max_len)
    total = weights.sum(dim=1, keepdim=True).to(weighted_sum.dtype)  # [B, 1]
    return weighted_sum / torch.where(total > 0, total, torch.ones_like(total))


INPUT_NAMES = ["dense", "sparse_values", "sparse_lengths", "sparse_weights", "sequence_values", "sequence_lengths"]


class DenseHead(nn.Module):
    """bottom → fusion → towers → prediction link, over one flat tuple of tensors.

    ``forward(dense [B, Dd], *fields (P × [B, D_f]), *sequences (M × [B, L_m, D]),
    *lengths (M × [B]))`` → predictions [B, T]: sigmoid(logit) for binary tasks, the logit for
    regression tasks. Flat so that ``torch.jit.trace`` records it with a fixed arity.
    """

    def __init__(self, schema: Schema, bottom: nn.Module, fusion: nn.Module, towers: nn.Module) -> None:
        super().__init__()
        self.bottom, self.fusion, self.towers = bottom, fusion, towers
        self.num_fields, self.num_sequences = len(schema.features.sparse), len(schema.features.sequences)
        self.register_buffer("is_binary", torch.tensor([t.type == "binary" for t in schema.tasks]), persistent=False)

    def forward(self, dense: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        P, M = self.num_fields, self.num_sequences
        fields, sequences, lengths = list(inputs[:P]), list(inputs[P : P + M]), list(inputs[P + M : P + 2 * M])
        logits = self.towers(self.fusion(self.bottom(dense, fields, sequences, lengths)))
        return torch.where(self.is_binary, torch.sigmoid(logits), logits)


class InferenceModel(nn.Module):
    """``(dense, sparse_values, sparse_lengths, sparse_weights, sequence_values,
    sequence_lengths) → predictions [B, T]``.

    Args:
        schema: the features and tasks the model was trained on.
        ebc: the bag-table collection (float or quantised), or None without bag tables.
        ec: the sequence-table collection (float or quantised), or None without sequences.
        head: the trained model's bottom, fusion and towers (:class:`DenseHead`), shared, not copied.
    """

    def __init__(self, schema: Schema, ebc: Optional[nn.Module], ec: Optional[nn.Module], head: DenseHead) -> None:
        super().__init__()
        features = schema.features
        self.ebc, self.ec, self.head = ebc, ec, head
        bag = set(features.bag_tables)
        self.sparse_keys = [f.name for f in features.pooled_features]
        self.sequence_keys = [f.name for f in features.sequence_table_features]
        self.fields = [(f.name, f.table in bag, f.pooling, feature_max_len(f)) for f in features.sparse]
        self.sequences = [(s.name, s.max_len) for s in features.sequences]
        self.weighted = features.weighted_pooling

    def head_inputs(
        self,
        dense: torch.Tensor,
        sparse_values: torch.Tensor,
        sparse_lengths: torch.Tensor,
        sparse_weights: torch.Tensor,
        sequence_values: torch.Tensor,
        sequence_lengths: torch.Tensor,
    ) -> list[torch.Tensor]:
        """The embedding lookups: ``[dense, *fields, *padded sequences, *lengths]``, the
        :class:`DenseHead`'s inputs."""
        pooled = {}
        sparse = None
        if self.ebc is not None:
            sparse = KeyedJaggedTensor(
                keys=self.sparse_keys,
                values=sparse_values,
                lengths=sparse_lengths,
                weights=sparse_weights if self.weighted else None,
            )
            pooled = self.ebc(sparse).to_dict()
        looked_up = {}
        if self.ec is not None:
            looked_up = self.ec(KeyedJaggedTensor(keys=self.sequence_keys, values=sequence_values, lengths=sequence_lengths))
        fields = []
        for name, from_bag, pooling, max_len in self.fields:
            if not from_bag:
                fields.append(pool_jagged(looked_up[name], pooling, max_len))
            elif self.weighted and pooling == "mean":  # the weighted EBC pooled Σ w·e
                fields.append(_weighted_mean(pooled[name], sparse[name], max_len))
            else:
                fields.append(pooled[name])
        sequences, lengths = [], []
        for name, max_len in self.sequences:
            padded, n = pad_sequence(looked_up[name], max_len)
            sequences.append(padded)
            lengths.append(n)
        return [dense, *fields, *sequences, *lengths]

    def forward(
        self,
        dense: torch.Tensor,
        sparse_values: torch.Tensor,
        sparse_lengths: torch.Tensor,
        sparse_weights: torch.Tensor,
        sequence_values: torch.Tensor,
        sequence_lengths: torch.Tensor,
    ) -> torch.Tensor:
        return self.head(*self.head_inputs(dense, sparse_values, sparse_lengths, sparse_weights, sequence_values, sequence_lengths))
