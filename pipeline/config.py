"""The experiment config: one YAML file, loaded into typed, validated sections.

Every problem (unknown key, missing required key, wrong type, inconsistent value) stops
the job before any process group starts, with a message naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, get_args

from fusionrec.datasets.config import DataConfig, SyntheticConfig
from fusionrec.datasets.schema import FeatureSchema, Schema, TaskConfig
from fusionrec.typedconfig import ConfigError, blame_override, from_dict, load_yaml_with_overrides, to_dict
from fusionrec.models.config import DTRNConfig, ModelConfig
from fusionrec.sharding.config import (
    COLLISION_TABLE_TYPES,
    SEQUENCE_TABLE_TYPES,
    ShardingConfig,
    ShardingTypeName,
)


@dataclass
class OptimizerConfig:
    """``rowwise_adagrad`` is for sparse tables only (one accumulator per embedding row)."""

    #: the algorithm; rowwise_adagrad is for sparse_optimizer only
    type: Literal["rowwise_adagrad", "adagrad", "adam", "sgd"]
    #: learning rate (> 0); for the dense optimizer, the peak that lr_schedule scales
    lr: float
    #: weight decay passed to the optimizer (0: none)
    weight_decay: float = 0.0
    #: the optimizer's epsilon term (sgd has none and ignores it)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be positive")


@dataclass
class ScheduleConfig:
    """Dense learning rate: linear warm-up to the optimizer's ``lr`` over ``warmup_steps``, then
    ``decay`` (none | linear | cosine) down to ``min_lr_ratio`` × lr at the last step. The sparse
    optimizer keeps its own lr (row-wise Adagrad already adapts it per row)."""

    #: steps of linear warm-up from lr / warmup_steps to lr (>= 0; 0: no warm-up)
    warmup_steps: int = 0
    #: after warm-up: none keeps lr; linear or cosine reach min_lr_ratio × lr at the last step
    decay: Literal["none", "linear", "cosine"] = "none"
    #: the last step's dense lr as a fraction of lr, in [0, 1]
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")


@dataclass
class EarlyStoppingConfig:
    """Stop when ``metric`` of ``task`` on the eval data has not improved by ``min_delta`` for
    ``patience`` evaluations in a row (AUC: higher is better; the others: lower)."""

    #: the task whose eval metric is watched
    task: str
    #: auc, ne or logloss for a binary task; mse or mae for a regression task
    metric: Literal["auc", "ne", "logloss", "mse", "mae"] = "auc"
    #: evaluations in a row without improvement after which training stops
    patience: int = 3
    #: an improvement must beat the best value so far by more than this
    min_delta: float = 0.0

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "auc"


@dataclass
class CompileConfig:
    """``enabled: true`` runs the dense part of the model (bottom, fusion, towers, loss: what
    runs on the pooled and sequence embeddings) under ``torch.compile``; the embedding lookups,
    the KJTs and the train pipeline's rewritten forward stay eager. The math is the eager
    model's (within float rounding), and checkpoints are interchangeable with eager runs. On
    the 2-core CPU machine it made training slower (benchmarks/results/compile.md); it is
    untested on GPUs. See :mod:`fusionrec.pipeline.compiled` for what is compiled and why."""

    #: compile the dense part of the model with torch.compile (false: eager)
    enabled: bool = False
    #: inductor generates fused kernels; aot_eager only traces (checks that the model compiles, no speed-up)
    backend: Literal["inductor", "aot_eager"] = "inductor"
    #: inductor's mode; max-autotune-no-cudagraphs also benchmarks GEMM choices while compiling (slower to compile)
    mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    #: null: static shapes first, symbolic once a shape changes (an eval set's last batch);
    #: true: symbolic from the start; false: a recompile per new shape
    dynamic: Optional[bool] = None


@dataclass
class FollowConfig:
    """``enabled: true`` (or ``--follow``) trains on a growing Hive-partitioned log
    (``data.partitioning``): every complete partition once, oldest first, waiting for new ones;
    each is scored before it is trained on (progressive validation), a checkpoint closes it,
    and every ``export_every_n_partitions`` a serving artifact is published (docs/continuous.md)."""

    #: train each complete partition of data.train once, in key order, as it lands (needs data.partitioning)
    enabled: bool = False
    #: seconds between looks for a new complete partition once every one is trained (> 0)
    poll_interval_s: float = 30.0
    #: stop (done, exit 0) after waiting this long with nothing new, in seconds (> 0); null: wait for ever
    idle_timeout_s: Optional[float] = None
    #: score each partition with the current model before training on it, per task (progressive validation)
    progressive_eval: bool = True
    #: export the model after every this many trained partitions (>= 0; 0: never)
    export_every_n_partitions: int = 0
    #: where the versioned exports and the latest pointer go; null: RUN_DIR/exports
    export_dir: Optional[str] = None
    #: the exports' table precision (as pipeline.export --quantize)
    export_quantize: Literal["int8", "fp16", "none"] = "int8"
    #: how many exported versions are kept; older ones are deleted (>= 1)
    keep_exports: int = 3

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0 or (self.idle_timeout_s is not None and self.idle_timeout_s <= 0):
            raise ValueError("poll_interval_s and idle_timeout_s must be > 0")
        if self.export_every_n_partitions < 0 or self.keep_exports < 1:
            raise ValueError("export_every_n_partitions must be >= 0 and keep_exports >= 1")


@dataclass
class TrainConfig:
    """``max_steps`` caps the run; otherwise it lasts ``epochs`` passes over the train data.

    ``eval_every_n_steps`` > 0 scores ``data.eval`` during training (at most
    ``eval_max_batches`` batches per rank); ``early_stopping`` needs it. ``mixed_precision:
    bf16`` runs the dense forward under bf16 autocast (meant for GPUs; it works, slowly, on CPU).
    ``metrics_window`` is the number of samples in the windowed training metrics.
    """

    #: optimizer of the embedding tables, fused into their backward
    sparse_optimizer: OptimizerConfig
    #: optimizer of the dense layers (not rowwise_adagrad)
    dense_optimizer: OptimizerConfig
    #: stop after this many steps (>= 1; at most epochs × steps per epoch); null: run all epochs
    max_steps: Optional[int] = None
    #: passes over data.train (>= 1)
    epochs: int = 1
    #: warm-up and decay of the dense learning rate
    lr_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    #: clip the global L2 norm of the dense gradients to this (> 0); null: no clipping
    grad_clip_norm: Optional[float] = None
    #: bf16: run the dense forward under bf16 autocast (meant for GPUs)
    mixed_precision: Literal["none", "bf16"] = "none"
    #: torch.compile of the dense part (off by default; slower on the 2-core CPU, untested on GPUs)
    compile: CompileConfig = field(default_factory=CompileConfig)
    #: steps between training log lines (>= 1)
    log_every: int = 50
    #: samples in the windowed training metrics (>= 1)
    metrics_window: int = 100_000
    #: show a progress bar on rank 0 when stderr is a terminal
    progress_bar: bool = True
    #: also write TensorBoard event files to RUN_DIR/tensorboard
    tensorboard: bool = False
    #: score data.eval every this many steps (>= 0; 0: never)
    eval_every_n_steps: int = 0
    #: at most this many batches per rank in each periodic evaluation; null: all of data.eval
    eval_max_batches: Optional[int] = None
    #: stop when an eval metric stops improving (needs eval_every_n_steps > 0); null: never
    early_stopping: Optional[EarlyStoppingConfig] = None
    #: seed of torch's random number generator on every rank (model initialisation)
    seed: int = 0
    #: auto: CUDA with NCCL when a GPU is present, else CPU with gloo
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: timeout of every collective, in seconds (>= 1)
    process_group_timeout_s: int = 600
    #: continuous training on a partitioned log that keeps growing
    follow: FollowConfig = field(default_factory=FollowConfig)

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

    every_n_steps: int = 0  #: save every this many steps, and always at the end (>= 0; 0: only at the end)
    keep_last: int = 3  #: how many of the newest checkpoints are kept; older ones are deleted (>= 1)
    #: steps between the ranks' checks for SIGTERM / SIGUSR1, which save and stop (>= 1; see docs/reliability.md)
    stop_check_every_n_steps: int = 1

    def __post_init__(self) -> None:
        if self.every_n_steps < 0 or self.keep_last < 1:
            raise ValueError("every_n_steps must be >= 0 and keep_last >= 1")
        if self.stop_check_every_n_steps < 1:
            raise ValueError("stop_check_every_n_steps must be at least 1")


@dataclass
class EvalConfig:
    #: rows per eval batch on each rank (periodic and offline evaluation); null: data.batch_size
    batch_size: Optional[int] = None


@dataclass
class ExperimentConfig:
    """One experiment: data, schema, model, training, sharding, checkpoints, evaluation."""

    #: the input columns and their embedding tables
    features: FeatureSchema
    #: the tasks, in order; each task's label column is the column named after it
    tasks: list[TaskConfig]
    #: bottom, fusion and per-task towers
    model: ModelConfig
    #: optimizers, run length, logging and periodic evaluation
    train: TrainConfig
    #: where the Parquet logs are and how they are batched
    data: DataConfig = field(default_factory=DataConfig)
    #: how the embedding tables are planned onto ranks
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    #: when checkpoints are saved and how many are kept
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    #: evaluation settings
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: shape of the logs that python -m fusionrec.datasets.synthetic writes
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def _check_a_type_for_every_table(self) -> None:
        """``sharding.proposals: uniform`` needs one sharding type that every table allows: by
        its constraint, and by what TorchRec shards (:data:`sharding.config.COLLISION_TABLE_TYPES`,
        :data:`sharding.config.SEQUENCE_TABLE_TYPES`)."""
        every = list(get_args(ShardingTypeName))
        allowed = {}
        for table in (t.name for t in self.features.tables):
            constraint = self.sharding.constraints.get(table)
            types = list(constraint.sharding_types) if constraint is not None and constraint.sharding_types else every
            if table in self.features.collision_tables:
                types = [t for t in types if t in COLLISION_TABLE_TYPES]
            if table in self.features.sequence_tables:
                types = [t for t in types if t in SEQUENCE_TABLE_TYPES]
            allowed[table] = types
        if not set.intersection(*(set(types) for types in allowed.values())):
            limits = "; ".join(f"{table}: {', '.join(types)}" for table, types in allowed.items() if types != every)
            raise ValueError(
                f"sharding.proposals: uniform needs a sharding type that every table allows; none is common to {limits}"
            )

    def __post_init__(self) -> None:
        self.schema = Schema(self.features, self.tasks)
        tables = [t.name for t in self.features.tables]
        unknown = sorted(set(self.sharding.constraints) - set(tables))
        if unknown:
            raise ValueError(f"sharding.constraints names unknown table(s) {unknown}; tables: {tables}")
        for table in self.features.collision_tables:  # TorchRec shards managed-collision tables row_wise only
            types = self.sharding.constraints.get(table)
            if types is not None and types.sharding_types and "row_wise" not in types.sharding_types:
                raise ValueError(
                    f"sharding.constraints.{table}.sharding_types: table {table!r} has collision management, which "
                    f"TorchRec shards row_wise only; allow row_wise (got {types.sharding_types})"
                )
        for table in self.features.sequence_tables:
            types = self.sharding.constraints.get(table)
            if types is not None and "data_parallel" in (types.sharding_types or []):
                # TorchRec 1.8's data-parallel EmbeddingCollection fails in the forward
                # (split_with_sizes); bag tables are fine.
                raise ValueError(
                    f"sharding.constraints.{table}.sharding_types: data_parallel is not supported for a sequence "
                    f"table (one a behaviour sequence uses); use table_wise, row_wise or column_wise"
                )
        if self.sharding.proposals == "uniform":
            self._check_a_type_for_every_table()
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
        self._check_follow()
        bottom = self.model.bottom
        if isinstance(bottom, DTRNConfig) and bottom.target_feature is not None:
            on_seq_table = [f.name for f in self.features.sequence_table_features]
            if bottom.target_feature not in on_seq_table:
                raise ValueError(
                    f"model.bottom.target_feature {bottom.target_feature!r} must be a sparse feature on a "
                    f"sequence table (one of {on_seq_table})"
                )

    def _check_follow(self) -> None:
        follow, train = self.train.follow, self.train
        if not follow.enabled:
            return
        if self.data.partitioning is None:
            raise ValueError("train.follow needs data.partitioning (data.train must be a partitioned log)")
        if train.epochs != 1 or train.max_steps is not None:
            raise ValueError("train.follow trains each partition once: leave train.epochs at 1 and train.max_steps null")
        if train.lr_schedule.decay != "none":
            raise ValueError("train.lr_schedule.decay: a followed log has no last step to decay to; use none")
        if train.eval_every_n_steps or train.early_stopping is not None:
            raise ValueError("train.eval_every_n_steps: follow mode scores each partition before training on it "
                             "(train.follow.progressive_eval); set it to 0")
        if follow.export_every_n_partitions and self.features.collision_tables:
            raise ValueError(f"train.follow.export_every_n_partitions: tables {', '.join(self.features.collision_tables)} "
                             "use collision management, which the export does not carry yet; set it to 0")

    def to_dict(self) -> dict:
        return to_dict(self)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load and validate an experiment YAML, applying ``key.path=value`` overrides first; an
    error in an overridden key names the ``--set`` argument instead of the file."""
    data, applied = load_yaml_with_overrides(path, overrides)
    try:
        return from_dict(ExperimentConfig, data, source=str(path))
    except ConfigError as err:
        raise blame_override(err, str(path), applied) from None


__all__ = ["ConfigError", "ExperimentConfig", "load_config"]
