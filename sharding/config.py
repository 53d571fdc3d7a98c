"""The ``sharding:`` section of the experiment YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

ShardingTypeName = Literal["table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel"]
KernelName = Literal["dense", "fused", "fused_uvm", "fused_uvm_caching"]
ProposalsName = Literal["auto", "uniform", "mixed"]
#: the sharding types TorchRec 1.8 gives a sequence table: its EmbeddingCollection sharder has no
#: table_row_wise, and a data_parallel one fails in the forward (split_with_sizes)
SEQUENCE_TABLE_TYPES = ("table_wise", "row_wise", "column_wise")
#: the sharding type TorchRec gives a collision-managed table
COLLISION_TABLE_TYPES = ("row_wise",)


@dataclass
class TableConstraint:
    """Restricts the planner's choices for one table (absent keys leave the planner free).

    ``min_partition``: the narrowest column block a column_wise shard may have (TorchRec's
    default keeps tables under 128 columns in one block).
    """

    #: the sharding types the planner may choose from; null: any
    sharding_types: Optional[list[ShardingTypeName]] = None
    #: the compute kernels the planner may choose from; null: any
    compute_kernels: Optional[list[KernelName]] = None
    #: narrowest column block of a column_wise shard; null: TorchRec's default
    min_partition: Optional[int] = None


@dataclass
class ShardingConfig:
    """How embedding tables are planned onto ranks.

    ``hbm_gb`` / ``ddr_gb`` override the per-rank device / host memory the planner assumes
    (default: read from the machine). ``storage_reservation`` is the fraction of each rank's
    memory the planner leaves for dense parameters, activations and buffers.

    ``proposals`` says which plans the planner weighs (its cost model picks among them):
    ``uniform``, one sharding type for every table, so each collection needs one input and one
    output dist per step; ``mixed``, TorchRec's default proposers, each table its own type;
    ``auto``, uniform on CPU ranks, where every extra dist is a fixed cost per step
    (benchmarks/results/fixed_cost.md), unless the constraints or the memory leave no uniform
    plan, and mixed on GPUs, where TorchRec's cost model is calibrated.
    """

    #: table name → constraint on its plan; every name must be a table
    constraints: dict[str, TableConstraint] = field(default_factory=dict)
    #: fraction of each rank's memory the planner leaves for the dense part, in [0, 1)
    storage_reservation: float = 0.15
    #: device memory per rank, in GiB, that the planner assumes; null: read from the GPU
    hbm_gb: Optional[float] = None
    #: host memory per rank, in GiB; null: the machine's memory split over its local ranks
    ddr_gb: Optional[float] = None
    #: the plans the planner weighs: uniform (one sharding type for all tables), mixed (TorchRec's
    #: default: a type per table) or auto (uniform on CPU ranks when one fits, else mixed)
    proposals: ProposalsName = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.storage_reservation < 1.0:
            raise ValueError("storage_reservation must be in [0, 1)")
