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
from torchrec.modules.mc_embedding_modules import (
    ManagedCollisionEmbeddingBagCollection,
    ManagedCollisionEmbeddingCollection,
)
from torchrec.modules.mc_modules import (
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHManagedCollisionModule,
)
from torchrec.sparse.jagged_tensor import JaggedTensor

from fusionrec.datasets.schema import MC_ID_SPACE, CollisionConfig, FeatureSchema, SparseFeature

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}
# TableConfig.data_type → TorchRec's table DataType. fp16 trains on CPU and GPU (fbgemm's
# training kernels keep fp16 weights, fp32 optimizer state and return fp32 lookups); bf16 has
# no CPU forward kernel ("split_embedding_cpu_forward_2 not implemented for BFloat16") and int8
# has no training kernel at all (TorchRec's sharded int8 tables fail to build), so neither is offered.
DATA_TYPES = {"fp32": DataType.FP32, "fp16": DataType.FP16}


def bag_table_configs(features: FeatureSchema, managed: Optional[bool] = None) -> list[EmbeddingBagConfig]:
    """One ``EmbeddingBagConfig`` per bag table, its features in ``pooled_features`` order.
    With weighted pooling every table pools SUM (see the module docstring). ``managed``:
    only the tables with (True) or without (False) a ``collision`` config; None: all.

    Raises:
        ValueError: features on one bag table disagree on pooling (an EBC pools per table).
    """
    configs = []
    for name in features.bag_tables:
        table = features.table(name)
        if managed is not None and managed != (table.collision is not None):
            continue
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


def sequence_table_configs(features: FeatureSchema, managed: Optional[bool] = None) -> list[EmbeddingConfig]:
    """One ``EmbeddingConfig`` per sequence table, its features in ``sequence_table_features``
    order (sequences first, then pooled features that live on the table); ``managed`` as in
    :func:`bag_table_configs`.

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
        if managed is not None and managed != (table.collision is not None):
            continue
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
    """The EBC of the bag tables without collision management on ``device`` (weighted when
    ``features.weighted_pooling``), or None when there is no such table."""
    configs = bag_table_configs(features, managed=False)
    if not configs:
        return None
    return EmbeddingBagCollection(tables=configs, is_weighted=features.weighted_pooling, device=torch.device(device))


def build_embedding_collection(
    features: FeatureSchema, device: torch.device | str = "cpu"
) -> Optional[EmbeddingCollection]:
    """The EC of the sequence tables without collision management on ``device``, or None."""
    configs = sequence_table_configs(features, managed=False)
    if not configs:
        return None
    return EmbeddingCollection(tables=configs, device=torch.device(device))


# ----------------------------------------------------------------------------- managed collisions


def _mch_module(
    table: str, rows: int, collision: CollisionConfig, device: torch.device, buckets: int
) -> MCHManagedCollisionModule:
    """TorchRec's MCH module for one table: ``rows`` slots (the last one for ids without a
    row), ids in [0, MC_ID_SPACE), admission and eviction every ``eviction_interval`` steps.
    ``buckets``: TorchRec's planner needs a multiple of the world size, so the job passes its
    world size. It does not decouple the layout from the world size: the sharded module rebuilds
    each rank's map with one bucket per shard, and the input dist splits the id range into one
    block per rank whatever this count (see ``sharding.collisions.maps_reload``)."""
    policy = LFU_EvictionPolicy() if collision.eviction == "lfu" else LRU_EvictionPolicy()
    return MCHManagedCollisionModule(
        zch_size=rows,
        device=device,
        eviction_policy=policy,
        eviction_interval=collision.eviction_interval,
        input_hash_size=MC_ID_SPACE,
        name=table,
        buckets=buckets,
    )


def _collisions(features: FeatureSchema, configs, device: torch.device, buckets: int) -> ManagedCollisionCollection:
    modules = {
        c.name: _mch_module(c.name, c.num_embeddings, features.table(c.name).collision, device, buckets)
        for c in configs
    }
    return ManagedCollisionCollection(modules, configs)


def max_ids_per_row(features: FeatureSchema, table: str) -> int:
    """The most ids one row can send to ``table``: 1 per scalar feature, ``max_len`` per list.

    Raises:
        ValueError: a multi-valued feature without ``max_len`` on a collision-managed table
            (its admission history is sized from this bound).
    """
    total = 0
    for f in [*features.sparse, *features.sequences]:
        if f.table != table:
            continue
        if isinstance(f, SparseFeature) and not f.multi_valued:
            total += 1
        elif f.max_len is None:
            raise ValueError(
                f"features.sparse.{f.name}: a multi-valued feature on collision-managed table {table!r} needs max_len"
            )
        else:
            total += f.max_len
    return total


def build_mc_embedding_bag_collection(
    features: FeatureSchema, device: torch.device | str = "cpu", buckets: int = 1
) -> Optional[ManagedCollisionEmbeddingBagCollection]:
    """TorchRec's ``ManagedCollisionEmbeddingBagCollection`` for the collision-managed bag
    tables (input: the batch's ``mc_sparse`` KJT of raw ids; output: ``(KeyedTensor, None)``),
    or None when there is none. ``buckets``: see :func:`_mch_module`."""
    configs = bag_table_configs(features, managed=True)
    if not configs:
        return None
    device = torch.device(device)
    ebc = EmbeddingBagCollection(tables=configs, is_weighted=features.weighted_pooling, device=device)
    return ManagedCollisionEmbeddingBagCollection(ebc, _collisions(features, configs, device, buckets))


def build_mc_embedding_collection(
    features: FeatureSchema, device: torch.device | str = "cpu", buckets: int = 1
) -> Optional[ManagedCollisionEmbeddingCollection]:
    """TorchRec's ``ManagedCollisionEmbeddingCollection`` for the collision-managed sequence
    tables (input: ``mc_sequence``; output: ``(Dict[str, JaggedTensor], None)``), or None."""
    configs = sequence_table_configs(features, managed=True)
    if not configs:
        return None
    device = torch.device(device)
    ec = EmbeddingCollection(tables=configs, device=device)
    return ManagedCollisionEmbeddingCollection(ec, _collisions(features, configs, device, buckets))


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
