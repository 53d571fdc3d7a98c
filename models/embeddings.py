"""Embedding modules built from the feature schema, and helpers that turn their outputs into
dense tensors for the bottoms.

* Bag tables → one ``EmbeddingBagCollection`` (pooled lookups, output ``KeyedTensor``).
* Sequence tables → one ``EmbeddingCollection`` (one vector per id, output
  ``Dict[str, JaggedTensor]``) so that behaviour sequences and the candidate item live in one
  embedding space.

Both are built on the device they are given; the trainer passes ``torch.device("meta")`` and
``DistributedModelParallel`` allocates and shards them.

Weighted pooling (``FeatureSchema.weighted_pooling``): the ``sparse`` KJT then carries one
weight per id for every key (1.0 for features without a weight column) and the EBC is built
with ``is_weighted=True``, so a bag pools ``Σ_i w_i e_i``. Bag tables are then configured with
SUM pooling (torch's ``embedding_bag`` takes per-id weights only with sum, and SUM keeps the
unsharded and sharded kernels alike), and a ``mean`` feature is finished by the model as the
weighted mean ``Σ_i w_i e_i / Σ_i w_i`` (:func:`weighted_mean`), which is the plain mean for a
feature whose weights are all 1.
"""

from __future__ import annotations

from typing import Optional

import torch
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor

from fusionrec.datasets.schema import FeatureSchema, SparseFeature

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}
# TableConfig.data_type → TorchRec's table DataType. fp16 trains on CPU and GPU (fbgemm's
# training kernels keep fp16 weights, fp32 optimizer state and return fp32 lookups); bf16 has
# no CPU forward kernel ("split_embedding_cpu_forward_2 not implemented for BFloat16") and int8
# has no training kernel at all (TorchRec's sharded int8 tables fail to build), so neither is offered.
DATA_TYPES = {"fp32": DataType.FP32, "fp16": DataType.FP16}


def bag_table_configs(features: FeatureSchema) -> list[EmbeddingBagConfig]:
    """One ``EmbeddingBagConfig`` per bag table, its features in ``pooled_features`` order.
    With weighted pooling every table pools SUM (see the module docstring).

    Raises:
        ValueError: features on one bag table disagree on pooling (an EBC pools per table).
    """
    configs = []
    for name in features.bag_tables:
        table = features.table(name)
        feats = [f for f in features.pooled_features if f.table == name]
        poolings = sorted({f.pooling for f in feats})
        if len(poolings) > 1:
            detail = ", ".join(f"{f.name}: {f.pooling}" for f in feats)
            raise ValueError(f"bag table {name!r}: its features must share one pooling, got {detail}")
        configs.append(
            EmbeddingBagConfig(
                name=name,
                num_embeddings=table.num_embeddings,
                embedding_dim=table.dim,
                feature_names=[f.name for f in feats],
                pooling=PoolingType.SUM if features.weighted_pooling else _POOLING[poolings[0]],
                data_type=DATA_TYPES[table.data_type],
            )
        )
    return configs


def sequence_table_configs(features: FeatureSchema) -> list[EmbeddingConfig]:
    """One ``EmbeddingConfig`` per sequence table, its features in ``sequence_table_features``
    order (sequences first, then pooled features that live on the table).

    Raises:
        ValueError: sequence tables differ in dim (TorchRec's ``EmbeddingCollection`` needs one).
    """
    names = features.sequence_tables
    dims = {n: features.table(n).dim for n in names}
    if len(set(dims.values())) > 1:
        raise ValueError(f"sequence tables must share one embedding dim, got {dims}")
    configs = []
    for name in names:
        table = features.table(name)
        configs.append(
            EmbeddingConfig(
                name=name,
                num_embeddings=table.num_embeddings,
                embedding_dim=table.dim,
                feature_names=[f.name for f in features.sequence_table_features if f.table == name],
                data_type=DATA_TYPES[table.data_type],
            )
        )
    return configs


def build_embedding_bag_collection(
    features: FeatureSchema, device: torch.device | str = "cpu"
) -> Optional[EmbeddingBagCollection]:
    """The pooled-feature EBC on ``device`` (weighted when ``features.weighted_pooling``), or
    None when the schema has no bag table."""
    configs = bag_table_configs(features)
    if not configs:
        return None
    return EmbeddingBagCollection(tables=configs, is_weighted=features.weighted_pooling, device=torch.device(device))


def build_embedding_collection(
    features: FeatureSchema, device: torch.device | str = "cpu"
) -> Optional[EmbeddingCollection]:
    """The sequence-table EC on ``device``, or None when the schema has no sequence."""
    configs = sequence_table_configs(features)
    if not configs:
        return None
    return EmbeddingCollection(tables=configs, device=torch.device(device))


def pad_sequence(jt: JaggedTensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad one sequence feature's embeddings.

    Args:
        jt: EC output for the feature: values [sum(lengths), D], lengths [B]. Rows are ordered
            oldest → newest and hold at most ``max_len`` ids (the reader keeps the most recent).
        max_len: L, the padded length.

    Returns:
        padded [B, L, D] (zeros after each row's length) and lengths [B] (int, clamped to L:
        a longer row would be cut to its first L ids); see :func:`sequence_mask` for the
        [B, L] validity mask.
    """
    return jt.to_padded_dense(desired_length=max_len).float(), jt.lengths().clamp(max=max_len)


def sequence_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """lengths [...] → bool mask [..., L], True at the first ``length`` (valid) positions."""
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)


def pool_jagged(jt: JaggedTensor, pooling: str, max_len: Optional[int]) -> torch.Tensor:
    """Sum or mean of each row's embeddings, for a pooled feature on a sequence table.

    Args:
        jt: EC output for the feature: values [sum(lengths), D], lengths [B].
        pooling: "sum" or "mean" (mean of an empty row is 0).
        max_len: most ids per row (1 for a scalar feature). None reads the longest row of the
            batch, which costs a device sync; set ``max_len`` on multi-valued features.

    Returns:
        [B, D].
    """
    summed = jt.to_padded_dense(desired_length=max_len).float().sum(dim=1)
    if pooling == "sum":
        return summed
    if pooling == "mean":
        count = jt.lengths().clamp(min=1).unsqueeze(1).to(summed.dtype)
        return summed / count
    raise ValueError(f"unknown pooling {pooling!r}")


def weighted_mean(weighted_sum: torch.Tensor, jt: JaggedTensor, max_len: Optional[int]) -> torch.Tensor:
    """Turn a bag's weighted sum into its weighted mean.

    Args:
        weighted_sum: [B, D], ``Σ_i w_i e_i`` per row (the weighted EBC's output).
        jt: the feature's key of the weighted ``sparse`` KJT (``kjt[name]``), for its weights.
        max_len: most ids per row, as in :func:`pool_jagged`.

    Returns:
        [B, D], ``Σ_i w_i e_i / Σ_i w_i``; a row whose weights sum to <= 0 (an empty row, say)
        keeps its weighted sum (0 for an empty row).
    """
    weights = jt.to_padded_dense_weights(desired_length=max_len)
    if weights is None:
        raise ValueError("weighted_mean needs a weighted feature (a KJT with weights)")
    total = weights.sum(dim=1, keepdim=True).to(weighted_sum.dtype)
    return weighted_sum / torch.where(total > 0, total, torch.ones_like(total))


def feature_max_len(feature: SparseFeature) -> Optional[int]:
    """Static row length of a pooled feature: 1 for scalars, ``max_len`` for lists."""
    return feature.max_len if feature.multi_valued else 1
