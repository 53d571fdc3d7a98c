"""The feature schema: which Parquet columns feed which embedding table, and the task labels.

Declared in the experiment YAML under ``features:`` and ``tasks:``; shared by the reader
(which turns columns into tensors) and the model (which builds tables and losses from it).

Embedding lookups are split in two groups, by table:

* *bag tables* are used by pooled features only. Their features form the ``sparse``
  KeyedJaggedTensor of a batch and go through an ``EmbeddingBagCollection`` (pooled).
* *sequence tables* are used by at least one behaviour sequence. Every feature on such a
  table (the sequences, and e.g. the candidate ``item_id`` that shares the item table)
  forms the ``sequence`` KeyedJaggedTensor and goes through an ``EmbeddingCollection``
  (one vector per id), so the candidate and the behaviours live in one embedding space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence


# Ids of collision-managed tables are int64 in [0, MC_ID_SPACE) (datasets.hashing.mc_ids spreads
# raw ids over it): TorchRec's managed-collision modules need non-negative ids below their
# input_hash_size, keep int64 max as the empty-slot marker, and shard the map row-wise by blocks
# of this range.
MC_ID_SPACE = 2**63 - 1


@dataclass
class CollisionConfig:
    """Managed collisions (zero-collision hashing) for one table, with TorchRec's
    ``MCHManagedCollisionModule``: the reader passes raw 64-bit ids (strings hashed, never
    taken modulo) and the module keeps an id → row map of ``num_embeddings`` slots, so
    distinct ids get distinct rows until the table is full. Every ``eviction_interval``
    training steps it admits the ids seen since the last admission and, when slots run out,
    evicts by ``eviction``: ``lfu`` keeps the most frequent ids, ``lru`` the most recently
    seen. An id without a row (not yet admitted, or evicted) reads the last row of its
    block (the table's last row unsharded; each rank's block's last row when sharded
    row-wise), which TorchRec keeps for misses. The map is sharded row-wise with the table
    and saved in checkpoints."""

    #: mch: TorchRec's managed-collision hash (MCHManagedCollisionModule)
    type: Literal["mch"] = "mch"
    #: which ids keep their rows when the table is full: lfu (most frequent) or lru (most recent)
    eviction: Literal["lfu", "lru"] = "lfu"
    #: training steps between two admissions of newly seen ids (>= 1)
    eviction_interval: int = 1

    def __post_init__(self) -> None:
        if self.eviction_interval < 1:
            raise ValueError("eviction_interval must be at least 1")


@dataclass
class TableConfig:
    """One embedding table: ``num_embeddings`` rows of ``dim`` values of ``data_type``."""

    name: str  #: the table's name, used by features' table keys and by sharding.constraints
    num_embeddings: int  #: rows (>= 1); an integer id maps to row id mod num_embeddings unless collision is set
    dim: int  #: embedding width (>= 1)
    #: weight precision in training: fp32 or fp16 (half the memory; lookups still return fp32 to the dense part)
    data_type: Literal["fp32", "fp16"] = "fp32"
    #: managed collisions for raw 64-bit ids instead of id mod num_embeddings; null: modulo
    collision: Optional[CollisionConfig] = None

    def __post_init__(self) -> None:
        if self.num_embeddings < 1 or self.dim < 1:
            raise ValueError(f"table {self.name!r}: num_embeddings and dim must be positive")
        if self.collision is not None and self.num_embeddings < 2:
            raise ValueError(f"table {self.name!r}: a collision-managed table needs at least 2 rows (one is for misses)")


@dataclass
class SparseFeature:
    """A pooled id feature read from column ``name``: one id per row or, when
    ``multi_valued``, a list of ids of which the first ``max_len`` are kept.

    Ids may be integers (any width, signed or not) or strings. An integer id maps to row
    ``id mod num_embeddings`` (floor modulo, so negative ids land in the table too); a string
    is hashed with :func:`datasets.hashing.stable_hash` first. ``weight_column`` names a
    column of per-id weights (a float for a scalar feature, a list<float> as long as the id
    list for a multi-valued one) for weighted pooling; ids without a weight weigh 1.0."""

    #: the id column, which is also the feature's name
    name: str
    #: the embedding table it looks up (a name in features.tables)
    table: str
    #: the column holds a list of ids per row (pooled) instead of one id
    multi_valued: bool = False
    #: how a row's ids are pooled; the features of one bag table must agree
    pooling: Literal["sum", "mean"] = "sum"
    #: keep only the first max_len ids of a list (>= 1); null: keep all
    max_len: Optional[int] = None
    #: column of per-id weights for weighted pooling: float, or list<float> when multi_valued; null: none
    weight_column: Optional[str] = None

    def __post_init__(self) -> None:
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"sparse feature {self.name!r}: max_len must be at least 1")


@dataclass
class SequenceFeature:
    """A behaviour sequence: column ``name`` holds a list<int64> in the order ``order`` says
    (oldest → newest by default); the model sees it oldest → newest, the ``max_len`` most
    recent ids kept. ``behavior`` tags its type (click, buy, …)."""

    name: str  #: the list<int64> column
    table: str  #: the embedding table it looks up (a name in features.tables)
    behavior: str  #: the behaviour type (click, buy, ...) that conditions DTRN
    max_len: int  #: keep the max_len most recent ids (>= 1)
    #: how the column's lists are written: oldest_first (most recent id last) or newest_first (reversed on read)
    order: Literal["oldest_first", "newest_first"] = "oldest_first"

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"sequence {self.name!r}: max_len must be at least 1")


@dataclass
class TaskConfig:
    """One task, labelled by column ``name``.

    ``space`` names a binary task whose label gates this one: the task is trained and scored
    only on rows where that label is 1 (e.g. conversion only on clicks)."""

    #: the task's name, which is also its label column
    name: str
    #: binary (BCE loss, labels in [0, 1]) or regression (MSE loss)
    type: Literal["binary", "regression"] = "binary"
    #: weight of this task's loss in the total loss
    weight: float = 1.0
    #: another binary task whose label gates this one (trained and scored where it is 1); null: every row
    space: Optional[str] = None


@dataclass
class DenseNormalization:
    """How the reader normalises one dense column: ``x → sign(x)·log1p(|x|)`` first when
    ``log``, then ``(x - mean) / std``, then clipped to ``[-clip, clip]`` when ``clip`` is set.
    ``mean`` and ``std`` are statistics of the (log-transformed) training values, e.g. the
    ones ``python -m fusionrec.datasets.census`` writes into its ``stats.json``."""

    mean: float = 0.0  #: subtracted after the log transform
    std: float = 1.0  #: divides the value after mean is subtracted (> 0)
    log: bool = False  #: first map x to sign(x)·log1p(|x|)
    clip: Optional[float] = None  #: finally clip to [-clip, clip] (> 0); null: no clipping

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise ValueError("std must be positive")
        if self.clip is not None and not self.clip > 0:
            raise ValueError("clip must be positive")


@dataclass
class FeatureSchema:
    """All input columns: dense floats, pooled id features and behaviour sequences.

    ``normalization`` maps dense column names to their :class:`DenseNormalization` (columns
    not named are read as they are). ``weight_column`` is the per-row sample weight;
    ``group_column`` an optional user / group id (integer or string) read into
    ``Batch.group_ids`` for group AUC, not a model input."""

    #: the embedding tables (names unique)
    tables: list[TableConfig]
    #: float columns fed to the model, normalised where normalization names them
    dense: list[str] = field(default_factory=list)
    #: pooled id features
    sparse: list[SparseFeature] = field(default_factory=list)
    #: behaviour sequences
    sequences: list[SequenceFeature] = field(default_factory=list)
    #: column of per-row sample weights; null: every row weighs 1
    weight_column: Optional[str] = None
    #: dense column name → its normalisation; dense columns not named are read as they are
    normalization: dict[str, DenseNormalization] = field(default_factory=dict)
    #: user or group id column (integer or string) for GAUC, not a model input; null: none
    group_column: Optional[str] = None

    def __post_init__(self) -> None:
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate table names in {names}")
        columns = self.dense + [f.name for f in self.sparse] + [s.name for s in self.sequences]
        columns += [f.weight_column for f in self.sparse if f.weight_column]
        duplicates = sorted({c for c in columns if columns.count(c) > 1})
        if duplicates:
            raise ValueError(f"column(s) {duplicates} declared more than once")
        for extra in (self.weight_column, self.group_column):
            if extra is not None and extra in columns:
                raise ValueError(f"column {extra!r} is both a feature and the weight or group column")
        unknown = sorted(set(self.normalization) - set(self.dense))
        if unknown:
            raise ValueError(f"normalization names column(s) {unknown} that are not dense features")
        for feature in [*self.sparse, *self.sequences]:
            if feature.table not in names:
                raise ValueError(f"feature {feature.name!r} uses unknown table {feature.table!r}; tables: {names}")
        if not self.sparse and not self.sequences:
            raise ValueError("at least one sparse or sequence feature is needed")
        managed = {t.name for t in self.tables if t.collision is not None}
        for feature in [*self.sparse, *self.sequences]:
            if feature.table in managed and getattr(feature, "multi_valued", True) and feature.max_len is None:
                raise ValueError(
                    f"feature {feature.name!r}: a multi-valued feature on collision-managed table {feature.table!r} "
                    f"needs max_len (it bounds the ids one step can bring to the table)"
                )
        for feature in self.sparse:
            if feature.weight_column and feature.table in self.sequence_tables:
                raise ValueError(
                    f"feature {feature.name!r}: weight_column needs a pooled (bag) table, but table "
                    f"{feature.table!r} is used by a behaviour sequence"
                )

    def table(self, name: str) -> TableConfig:
        return next(t for t in self.tables if t.name == name)

    @property
    def sequence_tables(self) -> list[str]:
        """Tables used by at least one behaviour sequence, in declaration order."""
        used = {s.table for s in self.sequences}
        return [t.name for t in self.tables if t.name in used]

    @property
    def bag_tables(self) -> list[str]:
        """Tables used only by pooled features, in declaration order."""
        used = {f.table for f in self.sparse} - set(self.sequence_tables)
        return [t.name for t in self.tables if t.name in used]

    @property
    def pooled_features(self) -> list[SparseFeature]:
        """Keys of a batch's ``sparse`` KJT: pooled features on bag tables."""
        return [f for f in self.sparse if f.table in self.bag_tables]

    @property
    def weighted_pooling(self) -> bool:
        """True when some pooled feature has per-id weights: the ``sparse`` KJT then carries
        weights for every key (1.0 for unweighted features) and the bag tables pool weighted."""
        return any(f.weight_column for f in self.pooled_features)

    @property
    def sequence_table_features(self) -> list[SparseFeature | SequenceFeature]:
        """Features on sequence tables: sequences first, then pooled features that live on a
        sequence table (looked up per id and pooled by the model)."""
        seq_tables = set(self.sequence_tables)
        return [*self.sequences, *[f for f in self.sparse if f.table in seq_tables]]

    @property
    def collision_tables(self) -> list[str]:
        """Tables with managed collisions (``collision`` set), in declaration order."""
        return [t.name for t in self.tables if t.collision is not None]

    def batch_features(self) -> dict[str, list[SparseFeature | SequenceFeature]]:
        """The keys of each KJT of a :class:`~datasets.batch.Batch`, by its field name:
        ``sparse`` (pooled features on bag tables without collision), ``sequence`` (features
        on sequence tables without collision), and ``mc_sparse`` / ``mc_sequence`` (the same
        on collision-managed tables, whose ids are raw and go through TorchRec's
        managed-collision modules), each in the order of ``pooled_features`` /
        ``sequence_table_features``."""
        mc = set(self.collision_tables)
        return {
            "sparse": [f for f in self.pooled_features if f.table not in mc],
            "sequence": [f for f in self.sequence_table_features if f.table not in mc],
            "mc_sparse": [f for f in self.pooled_features if f.table in mc],
            "mc_sequence": [f for f in self.sequence_table_features if f.table in mc],
        }


@dataclass
class Schema:
    """Features plus task labels: every column a training or evaluation job reads."""

    features: FeatureSchema
    tasks: list[TaskConfig]

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if not names:
            raise ValueError("at least one task is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names in {names}")
        f = self.features
        inputs = [*f.dense, *[s.name for s in f.sparse], *[s.name for s in f.sequences]]
        inputs += [s.weight_column for s in f.sparse if s.weight_column]
        inputs += [c for c in (f.weight_column, f.group_column) if c]
        clash = sorted(set(names) & set(inputs))
        if clash:
            raise ValueError(f"label column(s) {clash} are also declared as inputs")
        for task in self.tasks:
            if task.space is not None:
                gate = next((t for t in self.tasks if t.name == task.space), None)
                if gate is None or gate.type != "binary" or gate is task:
                    raise ValueError(f"tasks.{task.name}.space: {task.space!r} must name another binary task")

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def columns(self) -> list[str]:
        """Every Parquet column the reader needs: dense, sparse, sequences, labels, then the
        sample weight, the per-id weight columns and the group column where declared."""
        f = self.features
        cols = [*f.dense, *[s.name for s in f.sparse], *[s.name for s in f.sequences], *self.task_names]
        cols += [f.weight_column] if f.weight_column else []
        cols += [s.weight_column for s in f.sparse if s.weight_column]
        return cols + ([f.group_column] if f.group_column else [])


def space_gates(tasks: Sequence[TaskConfig]) -> tuple[list[int], list[bool]]:
    """Per task, (the label column of the task that gates it — its own column when none does;
    whether it is gated): with them as tensors or arrays, the arguments of :func:`task_space_mask`."""
    names = [t.name for t in tasks]
    gate = [names.index(t.space) if t.space is not None else i for i, t in enumerate(tasks)]
    return gate, [t.space is not None for t in tasks]


SPACE_THRESHOLD = 0.5  # a gate label above this puts the row in the gated task's space


def task_space_mask(labels, gate, gated):
    """Where each task is trained and scored: the one definition of a task space.

    labels [B, T] (a torch tensor or a NumPy array); ``gate``, ``gated`` [T] from
    :func:`space_gates` (as tensors or arrays, on the labels' device) →
    bool [B, T], True where task t has no space or the label of its gate task is 1.
    """
    return (labels[:, gate] > SPACE_THRESHOLD) | ~gated
