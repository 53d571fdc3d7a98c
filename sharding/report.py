"""Plan reports: what TorchRec's planner decided and what it costs each rank, and why a plan
does not fit.

:class:`PlanRecorder` is a planner ``Stats`` hook that keeps the chosen sharding options;
:func:`summarize` turns them into per-table placements and per-rank HBM / host-memory use
(:class:`PlanSummary`), :func:`format_table_plan` and :func:`format_memory_summary` print them.
When the tables cannot fit, :func:`fit_report` says how much memory is missing and what to
try. The training job prints the memory summary at start-up and ``python -m
fusionrec.pipeline.plan`` prints the whole report for a cluster on any machine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn
from torchrec.distributed.planner.types import ParameterConstraints, ShardingOption, Stats, Topology
from torchrec.modules.embedding_configs import data_type_to_dtype
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from fusionrec.sharding.planner import GIB

# Kernels that keep a table in GPU memory; the others (fused_uvm, fused_uvm_caching) keep it
# in host memory, reached through unified virtual memory (with an HBM cache for *_caching).
HBM_KERNELS = {"dense", "fused"}
# Optimizer state per table for the sparse optimizers fusionrec offers, in bytes for a table of
# R rows x D fp32 columns: row-wise Adagrad keeps one float per row, Adagrad one per weight,
# Adam two per weight.
OPTIMIZER_STATE = {
    "rowwise_adagrad": lambda rows, dim: 4 * rows,
    "adagrad": lambda rows, dim: 4 * rows * dim,
    "adam": lambda rows, dim: 8 * rows * dim,
    "sgd": lambda rows, dim: 0,
}


def gib(n: float) -> str:
    """Bytes for people: GiB (up to 10 TiB, so sizes compare with --hbm-gb / --ddr-gb), TiB
    above, MiB / KiB below 1 GiB."""
    if n >= 10 * 1024 * GIB:
        return f"{n / (1024 * GIB):.2f} TiB"
    if n >= GIB or n == 0:
        return f"{n / GIB:.2f} GiB"
    if n >= 1024**2:
        return f"{n / 1024**2:.2f} MiB"
    return f"{n / 1024:.2f} KiB"


def rank_ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 3, 8] → '0-3,8'."""
    ranks = sorted(set(ranks))
    if not ranks:
        return "-"
    parts, start, prev = [], ranks[0], ranks[0]
    for r in [*ranks[1:], None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if r is not None:
            start = prev = r
    return ",".join(parts)


# --------------------------------------------------------------------------------------------
# What the planner decided, captured through its public Stats hook.


class PlanRecorder(Stats):
    """A TorchRec planner ``Stats`` hook that keeps what the planner decided.

    Pass it to ``make_planner(..., stats=[recorder])`` (or ``plan_and_shard``). After a
    successful ``plan()`` (on the rank that planned, rank 0 under ``collective_plan``),
    :meth:`summary` turns it into a :class:`PlanSummary`; elsewhere it returns None.
    """

    def __init__(self) -> None:
        self.topology: Topology | None = None
        self.best_plan: list[ShardingOption] = []
        self.storage_reservation: Any = None
        self.run_time: float = 0.0
        self.num_proposals: int = 0
        self.succeeded = False

    def log(  # the arguments of torchrec's Stats.log; later versions may add keywords
        self,
        sharding_plan: Any,
        topology: Topology,
        batch_size: int,
        storage_reservation: Any,
        num_proposals: int,
        num_plans: int,
        run_time: float,
        best_plan: list[ShardingOption],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self.topology = topology
        self.storage_reservation = storage_reservation
        self.num_proposals = num_proposals
        self.run_time = run_time
        # On failure the planner logs its last proposal with every shard's rank set to -1.
        self.succeeded = bool(sharding_plan.plan) and all(
            s.rank is not None and s.rank >= 0 for so in best_plan for s in so.shards
        )
        self.best_plan = list(best_plan) if self.succeeded else []

    def summary(self) -> PlanSummary | None:
        if not self.succeeded or self.topology is None:
            return None
        return summarize(self.best_plan, self.topology, self.storage_reservation, self.run_time, self.num_proposals)


@dataclass
class TablePlacement:
    """One table in a plan; bytes are the planner's estimates (weights, optimizer state and
    lookup buffers) summed over the table's shards."""

    name: str
    module: str
    sharding_type: str
    compute_kernel: str
    ranks: list[int]
    num_embeddings: int
    dim: int
    weight_bytes: int
    hbm_bytes: int
    ddr_bytes: int
    perf_ms: float


@dataclass
class PlanSummary:
    """A plan's memory and perf, per rank. ``per_rank_hbm_bytes`` / ``per_rank_ddr_bytes``
    count embedding shards only; ``reserved_hbm_bytes`` is what the planner set aside on
    every rank for dense parameters, their optimizer/DDP state and input batches, on top of the
    ``reservation_fraction`` of HBM kept free. ``*_usable_bytes`` is what was left per rank
    for embedding shards."""

    world_size: int
    local_world_size: int
    compute_device: str
    hbm_cap_bytes: int
    ddr_cap_bytes: int
    hbm_usable_bytes: int
    ddr_usable_bytes: int
    reserved_hbm_bytes: int
    reservation_fraction: float | None
    total_embedding_bytes: int
    per_rank_hbm_bytes: list[int]
    per_rank_ddr_bytes: list[int]
    per_rank_perf_ms: list[float]
    tables: list[TablePlacement] = field(default_factory=list)
    planning_seconds: float = 0.0
    num_proposals: int = 0

    @property
    def perf_estimate_ms(self) -> float:
        """The planner's estimate of one step's embedding time: its slowest rank."""
        return max(self.per_rank_perf_ms, default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "local_world_size": self.local_world_size,
            "compute_device": self.compute_device,
            "fits": True,
            "total_embedding_bytes": self.total_embedding_bytes,
            "per_rank_hbm_bytes": self.per_rank_hbm_bytes,
            "per_rank_ddr_bytes": self.per_rank_ddr_bytes,
            "per_rank_perf_ms": [round(p, 4) for p in self.per_rank_perf_ms],
            "perf_estimate_ms": round(self.perf_estimate_ms, 4),
            "hbm_cap_bytes_per_rank": self.hbm_cap_bytes,
            "ddr_cap_bytes_per_rank": self.ddr_cap_bytes,
            "hbm_usable_bytes_per_rank": self.hbm_usable_bytes,
            "ddr_usable_bytes_per_rank": self.ddr_usable_bytes,
            "reserved_hbm_bytes_per_rank": self.reserved_hbm_bytes,
            "planning_seconds": round(self.planning_seconds, 3),
            "tables": {
                t.name: {k: v for k, v in asdict(t).items() if k != "name"} for t in self.tables
            },
        }


def _storage_of(obj: Any, tier: str) -> int:
    return int(getattr(obj, tier, 0) or 0) if obj is not None else 0


def summarize(
    best_plan: list[ShardingOption],
    topology: Topology,
    storage_reservation: Any = None,
    planning_seconds: float = 0.0,
    num_proposals: int = 0,
) -> PlanSummary:
    """Per-rank HBM/DDR use and perf of a planner's chosen sharding options (each shard's
    ``storage`` and ``perf`` estimates, added up on its rank)."""
    n = topology.world_size
    hbm, ddr, perf = [0] * n, [0] * n, [0.0] * n
    tables = []
    for so in best_plan:
        t_hbm = t_ddr = 0
        t_perf = 0.0
        for shard in so.shards:
            rank = int(shard.rank)
            s_hbm, s_ddr = _storage_of(shard.storage, "hbm"), _storage_of(shard.storage, "ddr")
            s_perf = float(shard.perf.total) if shard.perf is not None else 0.0
            hbm[rank] += s_hbm
            ddr[rank] += s_ddr
            perf[rank] += s_perf
            t_hbm, t_ddr, t_perf = t_hbm + s_hbm, t_ddr + s_ddr, t_perf + s_perf
        rows, dim = (so.tensor.shape[0], so.tensor.shape[1]) if so.tensor.dim() == 2 else (so.tensor.numel(), 1)
        tables.append(
            TablePlacement(
                name=so.name,
                module=so.path,
                sharding_type=so.sharding_type,
                compute_kernel=so.compute_kernel,
                ranks=sorted({int(s.rank) for s in so.shards}),
                num_embeddings=int(rows),
                dim=int(dim),
                weight_bytes=int(so.tensor.numel() * so.tensor.element_size()),
                hbm_bytes=t_hbm,
                ddr_bytes=t_ddr,
                perf_ms=t_perf,
            )
        )
    device = topology.devices[0].storage
    reserved_topology = getattr(storage_reservation, "last_reserved_topology", None)
    usable = reserved_topology.devices[0].storage if reserved_topology is not None else device
    fraction = getattr(storage_reservation, "_percentage", None)
    reserved = _storage_of(getattr(storage_reservation, "_dense_storage", None), "hbm") + _storage_of(
        getattr(storage_reservation, "_kjt_storage", None), "hbm"
    )
    return PlanSummary(
        world_size=n,
        local_world_size=topology.local_world_size,
        compute_device=topology.compute_device,
        hbm_cap_bytes=_storage_of(device, "hbm"),
        ddr_cap_bytes=_storage_of(device, "ddr"),
        hbm_usable_bytes=_storage_of(usable, "hbm"),
        ddr_usable_bytes=_storage_of(usable, "ddr"),
        reserved_hbm_bytes=reserved,
        reservation_fraction=fraction,
        total_embedding_bytes=sum(t.weight_bytes for t in tables),
        per_rank_hbm_bytes=hbm,
        per_rank_ddr_bytes=ddr,
        per_rank_perf_ms=perf,
        tables=sorted(tables, key=lambda t: (-t.weight_bytes, t.name)),
        planning_seconds=planning_seconds,
        num_proposals=num_proposals,
    )


def format_table_plan(summary: PlanSummary) -> str:
    """table → sharding type, kernel, ranks, with the weights' size and the HBM/DDR it takes."""
    header = (
        f"{'table':<22} {'module':<6} {'sharding':<15} {'kernel':<18} {'ranks':<12} "
        f"{'rows':>14} {'dim':>4} {'weights':>12} {'HBM':>12} {'DDR':>12}"
    )
    lines = [header, "-" * len(header)]
    for t in summary.tables:
        lines.append(
            f"{t.name:<22} {t.module:<6} {t.sharding_type:<15} {t.compute_kernel:<18} {rank_ranges(t.ranks):<12} "
            f"{t.num_embeddings:>14,} {t.dim:>4} {gib(t.weight_bytes):>12} {gib(t.hbm_bytes):>12} "
            f"{gib(t.ddr_bytes):>12}"
        )
    return "\n".join(lines)


def format_memory_summary(summary: PlanSummary) -> str:
    """Per-rank HBM and DDR use against what the planner could use, and the perf estimate."""
    s = summary
    gpu = s.compute_device == "cuda"
    hosts = max(1, math.ceil(s.world_size / max(s.local_world_size, 1)))
    lines = [
        (
            f"embedding tables: {len(s.tables)} tables, {sum(t.num_embeddings for t in s.tables):,} rows, "
            f"{gib(s.total_embedding_bytes)} of weights on {s.world_size} {s.compute_device} rank(s) "
            f"({hosts} host(s) x {s.local_world_size})"
        )
    ]
    if gpu:
        frac = f"{s.reservation_fraction:.0%} kept free, " if s.reservation_fraction is not None else ""
        lines.append(
            f"per rank: HBM {gib(s.hbm_cap_bytes)} ({frac}{gib(s.reserved_hbm_bytes)} for dense parameters and "
            f"inputs, {gib(s.hbm_usable_bytes)} usable for embeddings), DDR {gib(s.ddr_cap_bytes)}"
        )
    else:
        lines.append(f"per rank: host memory {gib(s.ddr_cap_bytes)} ({gib(s.ddr_usable_bytes)} usable for embeddings)")
    if gpu:
        header = f"{'rank':>5} {'HBM used':>12} {'HBM %':>6} {'DDR used':>12} {'DDR %':>6} {'est. ms':>9}"
    else:
        header = f"{'rank':>5} {'memory used':>12} {'%':>6} {'est. ms':>9}"
    lines += [header, "-" * len(header)]
    for r in range(s.world_size):
        hbm_pct = 100 * s.per_rank_hbm_bytes[r] / s.hbm_usable_bytes if s.hbm_usable_bytes else 0.0
        ddr_pct = 100 * s.per_rank_ddr_bytes[r] / s.ddr_usable_bytes if s.ddr_usable_bytes else 0.0
        ddr = f"{gib(s.per_rank_ddr_bytes[r]):>12} {ddr_pct:>5.0f}%"
        hbm = f"{gib(s.per_rank_hbm_bytes[r]):>12} {hbm_pct:>5.0f}% " if gpu else ""
        lines.append(f"{r:>5} {hbm}{ddr} {s.per_rank_perf_ms[r]:>9.3f}")
    total_hbm, total_ddr = sum(s.per_rank_hbm_bytes), sum(s.per_rank_ddr_bytes)
    largest_hbm, largest_ddr = max(s.per_rank_hbm_bytes, default=0), max(s.per_rank_ddr_bytes, default=0)
    if gpu:
        lines.append(
            f"total: HBM {gib(total_hbm)}, DDR {gib(total_ddr)} (weights, optimizer state and lookup buffers); "
            f"largest rank: HBM {gib(largest_hbm)}, DDR {gib(largest_ddr)}"
        )
    else:
        lines.append(
            f"total: {gib(total_hbm + total_ddr)} (weights, optimizer state and lookup buffers); "
            f"largest rank: {gib(largest_ddr)}"
        )
    slowest = max(range(s.world_size), key=lambda r: s.per_rank_perf_ms[r]) if s.world_size else 0
    mean = sum(s.per_rank_perf_ms) / max(s.world_size, 1)
    lines.append(
        f"planner perf estimate: {s.perf_estimate_ms:.3f} ms of embedding work per step on the slowest rank "
        f"({slowest}), mean {mean:.3f} ms; planned in {s.planning_seconds:.1f} s ({s.num_proposals} proposals)"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# When the tables do not fit: how much is missing, and what to try.


@dataclass
class TableSize:
    name: str
    num_embeddings: int
    dim: int
    weight_bytes: int
    kernels: list[str] | None  # allowed compute kernels; None: the planner may pick any
    itemsize: int = 4  # bytes per weight: 4 for fp32, 2 for fp16 tables


def embedding_tables(model: nn.Module, constraints: dict[str, ParameterConstraints] | None = None) -> list[TableSize]:
    """Every table of every EmbeddingBagCollection / EmbeddingCollection in ``model``."""
    constraints = constraints or {}
    out = []
    for module in model.modules():
        if isinstance(module, EmbeddingBagCollection):
            configs = module.embedding_bag_configs()
        elif isinstance(module, EmbeddingCollection):
            configs = module.embedding_configs()
        else:
            continue
        for c in configs:
            kernels = constraints[c.name].compute_kernels if c.name in constraints else None
            itemsize = data_type_to_dtype(c.data_type).itemsize  # 4 for fp32, 2 for fp16 tables
            weight_bytes = c.num_embeddings * c.embedding_dim * itemsize
            out.append(TableSize(c.name, c.num_embeddings, c.embedding_dim, weight_bytes, kernels, itemsize))
    return out


@dataclass
class FitReport:
    """Why a set of tables does not fit a cluster, in bytes (lower bounds: weights plus
    optimizer state, without lookup buffers)."""

    world_size: int
    gpus_per_host: int
    compute_device: str
    weight_bytes: int
    optimizer_bytes: int
    needed_bytes: int
    hbm_only_bytes: int  # of needed_bytes, what constraints pin to HBM kernels
    hbm_usable_bytes_per_rank: int
    ddr_bytes_per_rank: int
    missing_bytes: int
    ranks_needed: int
    planner_error: str = ""
    fp32_weight_bytes: int = 0  # of weight_bytes, what fp32 tables hold (fp16 would halve it)

    def to_json(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "compute_device": self.compute_device,
            "fits": False,
            "total_embedding_bytes": self.weight_bytes,
            "optimizer_state_bytes": self.optimizer_bytes,
            "needed_bytes": self.needed_bytes,
            "hbm_only_bytes": self.hbm_only_bytes,
            "hbm_usable_bytes_per_rank": self.hbm_usable_bytes_per_rank,
            "ddr_cap_bytes_per_rank": self.ddr_bytes_per_rank,
            "missing_bytes": self.missing_bytes,
            "ranks_needed_at_least": self.ranks_needed,
            "per_rank_hbm_bytes": [],
            "per_rank_ddr_bytes": [],
            "tables": {},
            "planner_error": self.planner_error,
        }


def fit_report(
    tables: list[TableSize],
    optimizer: str,
    world_size: int,
    gpus_per_host: int,
    compute_device: str,
    hbm_usable_per_rank: int,
    ddr_per_rank: int,
    planner_error: str = "",
) -> FitReport:
    """Compare what the tables need with what the cluster offers.

    On GPUs, tables whose constraints allow only HBM kernels must fit in HBM; the others may
    go to host memory through UVM. On CPU ranks everything lives in host memory.
    """
    state = OPTIMIZER_STATE.get(optimizer, OPTIMIZER_STATE["adam"])
    need = {t.name: t.weight_bytes + state(t.num_embeddings, t.dim) for t in tables}
    needed = sum(need.values())
    weights = sum(t.weight_bytes for t in tables)
    if compute_device == "cuda":
        pinned = sum(need[t.name] for t in tables if t.kernels and set(t.kernels) <= HBM_KERNELS)
        flexible = needed - pinned
        hbm_total, ddr_total = hbm_usable_per_rank * world_size, ddr_per_rank * world_size
        missing = max(pinned - hbm_total, needed - hbm_total - (ddr_total if flexible else 0), 0)
        per_rank = hbm_usable_per_rank
    else:
        pinned = 0
        missing = max(needed - ddr_per_rank * world_size, 0)
        per_rank = ddr_per_rank
    ranks = math.ceil(needed / per_rank) if per_rank > 0 else 0
    if ranks > gpus_per_host:
        ranks = math.ceil(ranks / gpus_per_host) * gpus_per_host
    return FitReport(
        world_size=world_size,
        gpus_per_host=gpus_per_host,
        compute_device=compute_device,
        weight_bytes=weights,
        optimizer_bytes=needed - weights,
        needed_bytes=needed,
        hbm_only_bytes=pinned,
        hbm_usable_bytes_per_rank=hbm_usable_per_rank,
        ddr_bytes_per_rank=ddr_per_rank,
        missing_bytes=missing,
        ranks_needed=ranks,
        planner_error=planner_error,
        fp32_weight_bytes=sum(t.weight_bytes for t in tables if t.itemsize == 4),
    )


def format_fit_report(r: FitReport) -> str:
    """Says how much is missing and what to try."""
    unit = "GPU" if r.compute_device == "cuda" else "rank"
    what = f"{gib(r.needed_bytes)} ({gib(r.weight_bytes)} of weights + {gib(r.optimizer_bytes)} of optimizer state)"
    lines = []
    if r.compute_device == "cuda":
        hbm_total, ddr_total = r.hbm_usable_bytes_per_rank * r.world_size, r.ddr_bytes_per_rank * r.world_size
        lines.append(
            f"the embedding tables do not fit on {r.world_size} {unit}(s): they need at least {what}; the cluster has "
            f"{gib(hbm_total)} of HBM usable for embeddings ({gib(r.hbm_usable_bytes_per_rank)} per GPU after the "
            f"reservation) and {gib(ddr_total)} of host memory"
        )
        if r.hbm_only_bytes:
            lines.append(
                f"sharding.constraints pin {gib(r.hbm_only_bytes)} of it to HBM kernels (fused/dense), "
                f"which must fit in HBM"
            )
    else:
        lines.append(
            f"the embedding tables do not fit on {r.world_size} CPU rank(s): they need at least {what}; the ranks "
            f"have {gib(r.ddr_bytes_per_rank * r.world_size)} of memory"
        )
    if r.missing_bytes > 0:
        lines.append(f"missing: {gib(r.missing_bytes)} ({r.missing_bytes:,} bytes)")
    else:
        lines.append(
            "in total they would fit, but the planner found no placement: a single shard is larger than one rank "
            "(e.g. a table_wise table bigger than one GPU), or sharding.constraints are too strict; allow row_wise "
            "or table_row_wise for the largest tables"
        )
    lines.append("what to try:")
    if r.ranks_needed > r.world_size:
        hosts = math.ceil(r.ranks_needed / r.gpus_per_host)
        lines.append(
            f"  - more {unit}s: at least {r.ranks_needed} ({hosts} host(s) of {min(r.gpus_per_host, r.ranks_needed)}) "
            f"to hold every table in {'HBM' if r.compute_device == 'cuda' else 'memory'}, more with lookup buffers and "
            f"imbalance: re-run with --world-size {r.ranks_needed}"
        )
    if r.compute_device == "cuda":
        ddr_total = r.ddr_bytes_per_rank * r.world_size
        verdict = (
            "enough" if ddr_total >= r.needed_bytes else f"{gib(r.needed_bytes - ddr_total)} short: more host memory"
        )
        lines.append(
            f"  - UVM caching: keep the largest tables in host memory with an HBM cache: allow compute_kernels "
            f"[fused_uvm_caching] (or fused_uvm) for them in sharding.constraints; that needs about "
            f"{gib(r.needed_bytes)} of host memory, the cluster has {gib(ddr_total)} ({verdict}); slower lookups"
        )
    if r.fp32_weight_bytes:
        lines.append(
            f"  - smaller tables: fp16 weights for the {gib(r.fp32_weight_bytes)} of fp32 tables would need "
            f"{gib(r.needed_bytes - r.fp32_weight_bytes // 2)} in all (data_type: fp16 per table in features.tables, "
            f"or --data-type fp16 here), or hash ids into fewer rows / use a smaller dim"
        )
    else:
        lines.append("  - smaller tables: every table is fp16 already; hash ids into fewer rows or use a smaller dim")
    if r.planner_error:
        lines.append(f"planner: {r.planner_error}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The command line.


class _DropDataParallelSpecWarning(logging.Filter):
    """TorchRec logs 'Sharding spec not found' on the root logger for every data_parallel table
    (replicated tables have no sharding spec): expected, and noise to the user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Sharding spec not found for")


@contextmanager
def quiet_planner() -> Iterator[None]:
    """Silence the planner's expected warnings while it runs."""
    root = logging.getLogger()
    filt = _DropDataParallelSpecWarning()
    root.addFilter(filt)
    try:
        yield
    finally:
        root.removeFilter(filt)
