"""The experiment config: one YAML file, loaded into typed, validated sections.

Every problem (unknown key, missing required key, wrong type, inconsistent value) stops
the job before any process group starts, with a message naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from datasets.config import DataConfig, SyntheticConfig
from datasets.schema import FeatureSchema, Schema, TaskConfig
from fusionrec.typedconfig import ConfigError, from_dict, load_yaml, to_dict
from models.config import DTRNConfig, ModelConfig
from sharding.config import ShardingConfig


@dataclass
class OptimizerConfig:
    """``rowwise_adagrad`` is for sparse tables only (one accumulator per embedding row)."""

    type: Literal["rowwise_adagrad", "adagrad", "adam", "sgd"]
    lr: float
    weight_decay: float = 0.0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be positive")


@dataclass
class TrainConfig:
    """``max_steps`` caps the run; otherwise it lasts ``epochs`` passes over the train data."""

    sparse_optimizer: OptimizerConfig
    dense_optimizer: OptimizerConfig
    max_steps: Optional[int] = None
    epochs: int = 1
    log_every: int = 50
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    process_group_timeout_s: int = 600

    def __post_init__(self) -> None:
        if self.dense_optimizer.type == "rowwise_adagrad":
            raise ValueError("dense_optimizer: rowwise_adagrad applies to embedding tables only")
        if self.epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("epochs and max_steps must be at least 1")
        if self.log_every < 1:
            raise ValueError("log_every must be at least 1")


@dataclass
class CheckpointConfig:
    """``every_n_steps``: 0 saves only at the end; ``keep_last``: older checkpoints are deleted."""

    every_n_steps: int = 0
    keep_last: int = 3

    def __post_init__(self) -> None:
        if self.every_n_steps < 0 or self.keep_last < 1:
            raise ValueError("every_n_steps must be >= 0 and keep_last >= 1")


@dataclass
class EvalConfig:
    batch_size: Optional[int] = None  # default: data.batch_size


@dataclass
class ExperimentConfig:
    """One experiment: data, schema, model, training, sharding, checkpoints, evaluation."""

    features: FeatureSchema
    tasks: list[TaskConfig]
    model: ModelConfig
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        self.schema = Schema(self.features, self.tasks)
        tables = [t.name for t in self.features.tables]
        unknown = sorted(set(self.sharding.constraints) - set(tables))
        if unknown:
            raise ValueError(f"sharding.constraints names unknown table(s) {unknown}; tables: {tables}")
        bottom = self.model.bottom
        if isinstance(bottom, DTRNConfig) and bottom.target_feature is not None:
            on_seq_table = [f.name for f in self.features.sequence_table_features]
            if bottom.target_feature not in on_seq_table:
                raise ValueError(
                    f"model.bottom.target_feature {bottom.target_feature!r} must be a sparse feature on a "
                    f"sequence table (one of {on_seq_table})"
                )

    def to_dict(self) -> dict:
        return to_dict(self)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load and validate an experiment YAML, applying ``key.path=value`` overrides first."""
    data = load_yaml(path, overrides)
    return from_dict(ExperimentConfig, data, source=str(path))


__all__ = ["ConfigError", "ExperimentConfig", "load_config"]
