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
from typing import Literal, Optional


@dataclass
class TableConfig:
    """One embedding table: ``num_embeddings`` rows of ``dim`` floats."""

    name: str
    num_embeddings: int
    dim: int

    def __post_init__(self) -> None:
        if self.num_embeddings < 1 or self.dim < 1:
            raise ValueError(f"table {self.name!r}: num_embeddings and dim must be positive")


@dataclass
class SparseFeature:
    """A pooled id feature read from column ``name``: an int64 scalar or, when
    ``multi_valued``, a list<int64> of at most ``max_len`` ids (the first ones kept).
    Ids are mapped into the table by ``id mod num_embeddings``."""

    name: str
    table: str
    multi_valued: bool = False
    pooling: Literal["sum", "mean"] = "sum"
    max_len: Optional[int] = None
    weight_column: Optional[str] = None  # list<float> column, one weight per id, for weighted pooling


@dataclass
class SequenceFeature:
    """A behaviour sequence: column ``name`` holds a list<int64> ordered oldest → newest;
    the ``max_len`` most recent ids are kept. ``behavior`` tags its type (click, buy, …)."""

    name: str
    table: str
    behavior: str
    max_len: int

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"sequence {self.name!r}: max_len must be at least 1")


@dataclass
class TaskConfig:
    """One task, labelled by column ``name``.

    ``space`` names a binary task whose label gates this one: the task is trained and scored
    only on rows where that label is 1 (e.g. conversion only on clicks)."""

    name: str
    type: Literal["binary", "regression"] = "binary"
    weight: float = 1.0
    space: Optional[str] = None


@dataclass
class FeatureSchema:
    """All input columns: dense floats, pooled id features and behaviour sequences."""

    tables: list[TableConfig]
    dense: list[str] = field(default_factory=list)
    sparse: list[SparseFeature] = field(default_factory=list)
    sequences: list[SequenceFeature] = field(default_factory=list)
    weight_column: Optional[str] = None

    def __post_init__(self) -> None:
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate table names in {names}")
        columns = self.dense + [f.name for f in self.sparse] + [s.name for s in self.sequences]
        duplicates = sorted({c for c in columns if columns.count(c) > 1})
        if duplicates:
            raise ValueError(f"column(s) {duplicates} declared more than once")
        for feature in [*self.sparse, *self.sequences]:
            if feature.table not in names:
                raise ValueError(f"feature {feature.name!r} uses unknown table {feature.table!r}; tables: {names}")
        if not self.sparse and not self.sequences:
            raise ValueError("at least one sparse or sequence feature is needed")
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
        """Keys of a batch's ``sequence`` KJT: sequences first, then pooled features that
        live on a sequence table (looked up per id and pooled by the model)."""
        seq_tables = set(self.sequence_tables)
        return [*self.sequences, *[f for f in self.sparse if f.table in seq_tables]]


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
        """Every Parquet column the reader needs."""
        f = self.features
        cols = [*f.dense, *[s.name for s in f.sparse], *[s.name for s in f.sequences], *self.task_names]
        return cols + ([f.weight_column] if f.weight_column else [])
