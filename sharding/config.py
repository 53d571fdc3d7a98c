"""The ``sharding:`` section of the experiment YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

ShardingTypeName = Literal["table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel"]
KernelName = Literal["dense", "fused", "fused_uvm", "fused_uvm_caching"]


@dataclass
class TableConstraint:
    """Restricts the planner's choices for one table (absent keys leave the planner free).

    ``min_partition``: the narrowest column block a column_wise shard may have (TorchRec's
    default keeps tables under 128 columns in one block).
    """

    sharding_types: Optional[list[ShardingTypeName]] = None
    compute_kernels: Optional[list[KernelName]] = None
    min_partition: Optional[int] = None


@dataclass
class ShardingConfig:
    """How embedding tables are planned onto ranks.

    ``hbm_gb`` / ``ddr_gb`` override the per-rank device / host memory the planner assumes
    (default: read from the machine). ``storage_reservation`` is the fraction of each rank's
    memory the planner leaves for dense parameters, activations and buffers.
    """

    constraints: dict[str, TableConstraint] = field(default_factory=dict)
    storage_reservation: float = 0.15
    hbm_gb: Optional[float] = None
    ddr_gb: Optional[float] = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.storage_reservation < 1.0:
            raise ValueError("storage_reservation must be in [0, 1)")
