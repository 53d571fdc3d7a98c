"""Data-side sections of the experiment YAML: ``data:`` (where and how to read) and
``synthetic:`` (how ``python -m fusionrec.datasets.synthetic`` makes logs for this schema)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class PartitioningConfig:
    """``data.train`` is the root of a Hive-partitioned log (``ROOT/dt=.../hour=.../*.parquet``):
    training reads the complete partitions of the window ``first`` .. ``last`` in key order
    (``train.follow``: each once, as they land). See :mod:`datasets.partitions`."""

    #: the partition keys, outermost first (e.g. [dt, hour]); values that are integers order numerically
    keys: list[str]
    #: the oldest partition to read, as its path under the root (e.g. dt=2026-12-01/hour=0); null: the oldest there is
    first: Optional[str] = None
    #: the newest partition to read (inclusive), in the same form; null: no end
    last: Optional[str] = None
    #: a partition is complete, and read, only once this file is in it; null: every partition is complete
    marker: Optional[str] = "_SUCCESS"

    def __post_init__(self) -> None:
        if not self.keys or len(set(self.keys)) != len(self.keys) or any(not k or "/" in k or "=" in k for k in self.keys):
            raise ValueError("keys must be distinct non-empty names without '/' or '='")
        if self.marker is not None and (not self.marker or "/" in self.marker):
            raise ValueError("marker must be a file name (no '/'), or null")


@dataclass
class DataConfig:
    """Where the Parquet logs are and how they are batched.

    ``train`` / ``eval``: a directory, a glob, or a single file (local path or pyarrow
    filesystem URI). Every rank reads its own disjoint share of the rows.

    ``num_workers``: DataLoader worker processes per rank (0: read in the training process).
    ``seed``, ``shuffle``, ``shuffle_buffer_rows``: training reads the row groups in an order
    permuted per epoch by (seed, epoch) when ``shuffle``, and with a shuffle buffer also
    permutes rows inside windows of that many rows (memory grows with it; 0: no buffer).
    See :class:`datasets.reader.ParquetReader`.
    """

    #: training logs: a directory, a glob or a file (local path or URI); --train-data overrides it
    train: Optional[str] = None
    #: eval logs, in the same forms; --eval-data overrides it; null: none
    eval: Optional[str] = None
    #: rows per batch on each rank (>= 1)
    batch_size: int = 256
    #: DataLoader worker processes per rank (>= 0; 0: read in the training process)
    num_workers: int = 0
    #: seed of the shuffling (>= 0)
    seed: int = 0
    #: read the training row groups in an order permuted per epoch by (seed, epoch)
    shuffle: bool = False
    #: also permute rows within windows of this many rows (>= 0; 0: no buffer; needs shuffle)
    shuffle_buffer_rows: int = 0
    #: stop training when a bad-value counter passes this many events per row read, in [0, 1]; null: never
    max_bad_fraction: Optional[float] = None
    #: stop training when a binary task's labels fall outside [0, 1] in more than this fraction of the
    #: rows read, in [0, 1] (a label column that is not 0/1 is a config mistake, e.g. a rating); null: never
    max_label_out_of_range_fraction: Optional[float] = 0.01
    #: data.train is a Hive-partitioned log (key=value directories) read partition by partition; null: plain files
    partitioning: Optional[PartitioningConfig] = None

    def __post_init__(self) -> None:
        for key in ("max_bad_fraction", "max_label_out_of_range_fraction"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1]")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0")
        if self.seed < 0 or self.shuffle_buffer_rows < 0:
            raise ValueError("seed and shuffle_buffer_rows must be >= 0")
        if self.shuffle_buffer_rows and not self.shuffle:
            raise ValueError("shuffle_buffer_rows needs shuffle: true")


@dataclass
class SyntheticConfig:
    """Shape of the synthetic logs written by ``python -m fusionrec.datasets.synthetic``."""

    #: seed of the synthetic ground truth and of the rows
    seed: int = 0
    #: Parquet files written under OUT/train (>= 1)
    train_files: int = 4
    #: Parquet files written under OUT/eval (>= 1)
    eval_files: int = 2
    #: fraction of the rows written to the eval files, in (0, 1)
    eval_fraction: float = 0.2
    #: rows per Parquet row group (>= 1)
    row_group_size: int = 2000
    #: cosine between the tasks' latent directions, in [0, 1] (0: no shared signal, 1: identical)
    task_correlation: float = 0.5
    #: exponent of the Zipf distribution of ids over each table
    zipf_exponent: float = 1.1
    #: partitioned logs (--partitions): radians the tasks' latent directions turn per hourly partition (0: no drift)
    drift_per_partition: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.task_correlation <= 1.0:
            raise ValueError("task_correlation must be in [0, 1]")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in (0, 1)")
