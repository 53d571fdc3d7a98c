"""The experiment config: one YAML file, loaded into typed, validated sections.

Every problem (unknown key, missing required key, wrong type, inconsistent value) stops
the job before any process group starts, with a message naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from fusionrec.datasets.config import DataConfig, SyntheticConfig
from fusionrec.datasets.schema import FeatureSchema, Schema, TaskConfig
from fusionrec.typedconfig import ConfigError, from_dict, load_yaml, to_dict
from fusionrec.models.config import DTRNConfig, ModelConfig
from fusionrec.sharding.config import ShardingConfig


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
class ScheduleConfig:
    """Dense learning rate: linear warm-up to the optimizer's ``lr`` over ``warmup_steps``, then
    ``decay`` (none | linear | cosine) down to ``min_lr_ratio`` × lr at the last step. The sparse
    optimizer keeps its own lr (row-wise Adagrad already adapts it per row)."""

    warmup_steps: int = 0
    decay: Literal["none", "linear", "cosine"] = "none"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")


@dataclass
class EarlyStoppingConfig:
    """Stop when ``metric`` of ``task`` on the eval data has not improved by ``min_delta`` for
    ``patience`` evaluations in a row (AUC: higher is better; the others: lower)."""

    task: str
    metric: Literal["auc", "ne", "logloss", "mse", "mae"] = "auc"
    patience: int = 3
    min_delta: float = 0.0

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "auc"


@dataclass
class TrainConfig:
    """``max_steps`` caps the run; otherwise it lasts ``epochs`` passes over the train data.

    ``eval_every_n_steps`` > 0 scores ``data.eval`` during training (at most
    ``eval_max_batches`` batches per rank); ``early_stopping`` needs it. ``mixed_precision:
    bf16`` runs the dense forward under bf16 autocast (meant for GPUs; it works, slowly, on CPU).
    ``metrics_window`` is the number of samples in the windowed training metrics.
    """

    sparse_optimizer: OptimizerConfig
    dense_optimizer: OptimizerConfig
    max_steps: Optional[int] = None
    epochs: int = 1
    lr_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip_norm: Optional[float] = None
    mixed_precision: Literal["none", "bf16"] = "none"
    log_every: int = 50
    metrics_window: int = 100_000
    progress_bar: bool = True
    tensorboard: bool = False
    eval_every_n_steps: int = 0
    eval_max_batches: Optional[int] = None
    early_stopping: Optional[EarlyStoppingConfig] = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    process_group_timeout_s: int = 600

    def __post_init__(self) -> None:
        if self.dense_optimizer.type == "rowwise_adagrad":
            raise ValueError("dense_optimizer: rowwise_adagrad applies to embedding tables only")
        if self.epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("epochs and max_steps must be at least 1")
        if self.log_every < 1 or self.metrics_window < 1:
            raise ValueError("log_every and metrics_window must be at least 1")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError("grad_clip_norm must be positive")
        if self.eval_every_n_steps < 0:
            raise ValueError("eval_every_n_steps must be >= 0")
        if self.early_stopping is not None and self.eval_every_n_steps == 0:
            raise ValueError("early_stopping needs eval_every_n_steps > 0")
        if self.process_group_timeout_s < 1:
            raise ValueError("process_group_timeout_s must be at least 1")


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
        stopping = self.train.early_stopping
        if stopping is not None:
            task = next((t for t in self.tasks if t.name == stopping.task), None)
            if task is None:
                raise ValueError(f"train.early_stopping.task {stopping.task!r} is not a task ({self.schema.task_names})")
            allowed = ("auc", "ne", "logloss") if task.type == "binary" else ("mse", "mae")
            if stopping.metric not in allowed:
                raise ValueError(f"train.early_stopping.metric {stopping.metric!r} does not apply to {task.type} "
                                 f"task {task.name!r}; use one of {list(allowed)}")
        if (self.train.eval_every_n_steps or stopping) and self.data.eval is None:
            raise ValueError("train.eval_every_n_steps needs data.eval (or --eval-data)")
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
