"""Plan embedding tables onto ranks with TorchRec's planner and shard a model with DMP.

Works on meta-device models: the planner needs only table shapes, so a plan for a cluster
can be made on a laptop (see ``fusionrec.pipeline.plan``), and the trainer shards a model whose tables
were never materialised on one rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.constants import DEFAULT_PERF_ESTIMATOR
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.estimator import EmbeddingPerfEstimatorFactory
from torchrec.distributed.planner.proposers import GreedyProposer, GridSearchProposer, UniformProposer
from torchrec.distributed.planner.shard_estimators import EmbeddingStorageEstimator
from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation
from torchrec.distributed.planner.types import Enumerator, Proposer, ShardingOption, Stats
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.mc_embedding import ManagedCollisionEmbeddingCollectionSharder
from torchrec.distributed.mc_embeddingbag import ManagedCollisionEmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan, ShardingType

from fusionrec.sharding.config import SEQUENCE_TABLE_TYPES, ShardingConfig

GIB = 1024**3


@dataclass
class MachineMemory:
    """Per-rank memory the planner may use, in bytes (hbm is 0 for CPU ranks)."""

    hbm_bytes: int
    ddr_bytes: int


def machine_memory(device_type: str, local_world_size: int, cfg: ShardingConfig) -> MachineMemory:
    """Per-rank HBM and host memory: read from this machine unless the config overrides it.

    Host memory is split evenly between the ``local_world_size`` ranks of a node.
    """
    if cfg.ddr_gb is not None:
        ddr = int(cfg.ddr_gb * GIB)
    else:
        ddr = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(local_world_size, 1)
    hbm = 0
    if device_type == "cuda":
        if cfg.hbm_gb is not None:
            hbm = int(cfg.hbm_gb * GIB)
        else:
            hbm = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return MachineMemory(hbm_bytes=hbm, ddr_bytes=ddr)


def make_topology(world_size: int, local_world_size: int, device_type: str, memory: MachineMemory) -> Topology:
    return Topology(
        world_size=world_size,
        local_world_size=local_world_size,
        compute_device=device_type,
        hbm_cap=memory.hbm_bytes if device_type == "cuda" else None,
        ddr_cap=memory.ddr_bytes,
    )


def make_constraints(cfg: ShardingConfig, table_names: list[str]) -> dict[str, ParameterConstraints]:
    """Planner constraints from the config; a constraint for an unknown table is an error."""
    unknown = sorted(set(cfg.constraints) - set(table_names))
    if unknown:
        raise ValueError(f"sharding.constraints names unknown table(s) {unknown}; tables: {table_names}")
    return {
        name: ParameterConstraints(
            sharding_types=list(c.sharding_types) if c.sharding_types else None,
            compute_kernels=list(c.compute_kernels) if c.compute_kernels else None,
            min_partition=c.min_partition,
        )
        for name, c in cfg.constraints.items()
    }


def torchrec_default_proposers() -> list[Proposer]:
    """The proposers TorchRec's planner uses when given none (torchrec 1.x, planners.py)."""
    return [GridSearchProposer(), GreedyProposer(), GreedyProposer(use_depth=False), UniformProposer()]


class StagedProposer(Proposer):
    """Proposers in stages: a stage's proposals are weighed (the planner's cost model picks
    among them) and the next stage is tried only when none of them could be placed (no
    proposal at all, e.g. the constraints exclude it, or none that fits the memory).

    ``stages``: each makes a stage's fresh proposers. The planner calls ``load`` once,
    then ``propose`` / ``feedback`` until ``propose`` returns None; this proposer hands those
    calls to the proposer whose turn it is."""

    def __init__(self, stages: list[Callable[[], list[Proposer]]]) -> None:
        self._stages = stages
        self._proposers: list[Proposer] = []
        self._stage = self._turn = 0
        self._placed = False
        self._search_space: list[ShardingOption] = []
        self._enumerator: Enumerator | None = None

    def load(self, search_space: list[ShardingOption], enumerator: Enumerator | None = None) -> None:
        self._search_space, self._enumerator = search_space, enumerator
        self._start_stage(0)

    def _start_stage(self, stage: int) -> None:
        self._stage, self._turn, self._placed = stage, 0, False
        self._proposers = self._stages[stage]()
        for proposer in self._proposers:
            proposer.load(search_space=self._search_space, enumerator=self._enumerator)

    def propose(self) -> list[ShardingOption] | None:
        while True:
            proposal = self._proposers[self._turn].propose() if self._turn < len(self._proposers) else None
            if proposal is not None:
                return proposal
            if self._turn + 1 < len(self._proposers):
                self._turn += 1
            elif not self._placed and self._stage + 1 < len(self._stages):
                self._start_stage(self._stage + 1)
            else:
                return None

    def feedback(
        self,
        partitionable: bool,
        plan: list[ShardingOption] | None = None,
        perf_rating: float | None = None,
        storage_constraint: Topology | None = None,
    ) -> None:
        self._placed = self._placed or partitionable
        self._proposers[self._turn].feedback(
            partitionable=partitionable, plan=plan, perf_rating=perf_rating, storage_constraint=storage_constraint
        )


class UniformOfTypes(UniformProposer):
    """TorchRec's UniformProposer (one plan per sharding type that every table allows, each
    table on that type) over some sharding types only."""

    def __init__(self, sharding_types: list[str]) -> None:
        super().__init__()
        self._types = set(sharding_types)

    def load(self, search_space: list[ShardingOption], enumerator: Enumerator | None = None) -> None:
        super().load(search_space, enumerator)
        # The parent's list of per-type plans (torchrec 1.8, pinned; tests/test_proposals.py
        # fails if its shape changes).
        self._grouped_sharding_options = [
            group for group in self._grouped_sharding_options if group[0].sharding_type in self._types
        ]


def make_proposers(proposals: str, device_type: str) -> list[Proposer]:
    """The planner's proposers for ``sharding.proposals`` on ranks of ``device_type``.

    ``auto`` on CPU ranks weighs, in this order until a stage yields a plan that fits:
    every table table_wise or every table data_parallel (the cost model picks; on CPU ranks
    these have the least work per step around the lookups: one all-to-all each way per
    collection, or none, where row- and column-wise plans add bucketing, reduce-scatters and
    more dists, which TorchRec's GPU-calibrated cost model prices as nearly free;
    benchmarks/results/fixed_cost.md); then every table on any one type; then TorchRec's
    default proposers. On GPUs ``auto`` is TorchRec's default."""
    if proposals == "uniform":
        return [UniformProposer()]
    if proposals == "auto" and device_type == "cpu":
        return [StagedProposer([
            lambda: [UniformOfTypes([ShardingType.TABLE_WISE.value, ShardingType.DATA_PARALLEL.value])],
            lambda: [UniformProposer()],
            lambda: torchrec_default_proposers()[:-1],  # its UniformProposer ran in the stage before
        ])]  # fmt: skip
    return torchrec_default_proposers()


def make_planner(
    cfg: ShardingConfig,
    table_names: list[str],
    world_size: int,
    local_world_size: int,
    device_type: str,
    batch_size: int,
    memory: MachineMemory | None = None,
    stats: list[Stats] | None = None,
    collision_ids_per_step: dict[str, int] | None = None,
) -> EmbeddingShardingPlanner:
    """``stats``: TorchRec planner Stats hooks called with the chosen plan (e.g.
    ``sharding.report.PlanRecorder``); None keeps TorchRec's default.

    The storage estimate is TorchRec's plus, for collision-managed tables, their id → row maps
    and admission histories (:class:`sharding.collisions.CollisionMapStorage`;
    ``collision_ids_per_step``: the most ids one step brings to one rank, per such table)."""
    from fusionrec.sharding.collisions import CollisionMapStorage  # noqa: PLC0415  (collisions imports this module)

    memory = memory or machine_memory(device_type, local_world_size, cfg)
    topology = make_topology(world_size, local_world_size, device_type, memory)
    constraints = make_constraints(cfg, table_names)
    estimators = [
        EmbeddingPerfEstimatorFactory.create(DEFAULT_PERF_ESTIMATOR, topology=topology, constraints=constraints),
        EmbeddingStorageEstimator(topology=topology, constraints=constraints),
        CollisionMapStorage(topology, constraints, collision_ids_per_step),
    ]
    return EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,
        enumerator=EmbeddingEnumerator(topology=topology, batch_size=batch_size, constraints=constraints,
                                       estimator=estimators),  # fmt: skip
        constraints=constraints,
        proposer=make_proposers(cfg.proposals, device_type),
        storage_reservation=HeuristicalStorageReservation(percentage=cfg.storage_reservation),
        debug=False,
        stats=stats,
    )


class PooledTableSharder(EmbeddingBagCollectionSharder):
    """TorchRec's EmbeddingBagCollection sharder, with row-wise sharding allowed on CPU too.

    The stock sharder offers row_wise and table_row_wise only for CUDA, although the CPU
    kernels and the gloo collectives run them correctly (tests/test_sharding.py checks the
    sharded lookups against an unsharded table). CPU ranks therefore get the same plans as
    GPU ranks, which is what lets a GPU-shaped plan be tested here.
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = super().sharding_types(compute_device_type)
        if compute_device_type == "cpu":
            types += [t.value for t in (ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE) if t.value not in types]
        return types


class SequenceTableSharder(EmbeddingCollectionSharder):
    """TorchRec's EmbeddingCollection sharder offering only :data:`SEQUENCE_TABLE_TYPES`: not
    data_parallel, which TorchRec 1.8's sequence collection fails in the forward
    (split_with_sizes); a constraint asking for it is refused at config load, and this keeps
    the planner from choosing it for a small table."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return [t for t in super().sharding_types(compute_device_type) if t in SEQUENCE_TABLE_TYPES]


def default_sharders() -> list[ModuleSharder[nn.Module]]:
    """TorchRec's default sharders, with :class:`PooledTableSharder` for pooled tables,
    :class:`SequenceTableSharder` for sequence tables and the managed-collision sharders of
    :mod:`sharding.collisions` (which build on the pooled one)."""
    from fusionrec.sharding.collisions import ManagedPooledTableSharder, ManagedSequenceTableSharder  # noqa: PLC0415

    replaced = (
        EmbeddingBagCollectionSharder,
        EmbeddingCollectionSharder,
        ManagedCollisionEmbeddingBagCollectionSharder,
        ManagedCollisionEmbeddingCollectionSharder,
    )
    sharders = [s for s in get_default_sharders() if type(s) not in replaced]
    return [PooledTableSharder(), SequenceTableSharder(), ManagedPooledTableSharder(), ManagedSequenceTableSharder(),
            *sharders]  # fmt: skip


def plan_and_shard(
    model: nn.Module,
    cfg: ShardingConfig,
    table_names: list[str],
    device: torch.device,
    batch_size: int,
    local_world_size: int,
    stats: list[Stats] | None = None,
    collision_ids_per_step: dict[str, int] | None = None,
) -> tuple[DistributedModelParallel, ShardingPlan]:
    """Plan ``model``'s embedding tables across the default process group and wrap it in DMP.

    Rank 0 plans and broadcasts, so every rank holds the same plan. The model may live on the
    meta device: DMP materialises each rank's shards (and the dense part) on ``device``.
    ``stats`` and ``collision_ids_per_step`` go to :func:`make_planner`; the stats are called
    on rank 0 only (the rank that plans).
    """
    world_size = dist.get_world_size()
    planner = make_planner(
        cfg, table_names, world_size, local_world_size, device.type, batch_size, stats=stats,
        collision_ids_per_step=collision_ids_per_step,
    )  # fmt: skip
    sharders = default_sharders()
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(
        module=model,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        device=device,
        plan=plan,
        sharders=sharders,
    )
    return dmp, plan


def describe_plan(plan: ShardingPlan) -> list[dict]:
    """One row per table: module path, table, sharding type, compute kernel and ranks."""
    rows = []
    for module_path, module_plan in plan.plan.items():
        for table, spec in module_plan.items():  # type: ignore[union-attr]
            ranks = spec.ranks or []
            if not ranks and spec.sharding_spec is not None:
                ranks = [s.placement.rank() for s in spec.sharding_spec.shards]
            rows.append(
                {
                    "module": module_path,
                    "table": table,
                    "sharding_type": spec.sharding_type,
                    "compute_kernel": spec.compute_kernel,
                    "ranks": sorted(set(ranks)),
                }
            )
    return rows


def format_plan(plan: ShardingPlan) -> str:
    """A plain-text table of :func:`describe_plan`."""
    rows = describe_plan(plan)
    header = f"{'table':<20} {'sharding':<15} {'kernel':<18} ranks"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['table']:<20} {r['sharding_type']:<15} {r['compute_kernel']:<18} {r['ranks']}")
    return "\n".join(lines)
