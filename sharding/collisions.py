"""Sharders for collision-managed tables: TorchRec's managed-collision sharders, made to run on
CPU ranks too.

TorchRec shards a ``ManagedCollisionEmbeddingBagCollection`` / ``ManagedCollisionEmbeddingCollection``
row_wise only: the id → row map of each table is split into blocks of the id range, each rank
keeping the map (``_mch_sorted_raw_ids``, ``_mch_remapped_ids_mapping``, the eviction
counters) of the rows it owns, and the input dist sends every raw id to the rank owning its
block. The gaps of TorchRec 1.8 / fbgemm-gpu-cpu 1.8 filled here:

* the pooled sharder inside it offers row_wise on CUDA only (:class:`PooledTableSharder`
  lifts that, as for plain tables);
* the managed-collision sharders offer UVM and key-value kernels whatever the device, which
  the planner then fails to estimate on CPU: off CUDA only the embedding sharder's kernels
  (``fused``) are offered;
* TorchRec sizes each table's admission history (the ids seen between two admissions) from
  the first batch it sees, then silently drops the ids of a later, larger batch that do not
  fit: which ids are admitted then depends on where a run started, so a resumed run drifts
  from an uninterrupted one. :func:`reserve_admission_history` sizes it for the largest
  possible step instead.
* when ids are admitted into slots, TorchRec resets those rows' weights and optimizer state
  with ``fbgemm::reset_weight_momentum``, which has no CPU kernel. On CPU the sharded modules
  here do the same reset through the TBE's own per-table views (weights re-drawn with the
  table's ``init_fn``, row-wise Adagrad state zeroed); on CUDA TorchRec's path runs unchanged.
* a checkpoint loaded on fewer ranks merges the saved maps' blocks (TorchRec re-sorts them),
  but keeps the eviction counters of the merged-away blocks' miss slots pinned, so LFU never
  fills them: the sharded modules here zero the counters of empty slots on load.

Across world sizes the blocks merge but never split: :func:`maps_reload` says which world
sizes a saved map reloads on (``pipeline.binding`` refuses the others in one line).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchrec.distributed.mc_embedding import (
    ManagedCollisionEmbeddingCollectionSharder,
    ShardedManagedCollisionEmbeddingCollection,
)
from torchrec.distributed.mc_embeddingbag import (
    ManagedCollisionEmbeddingBagCollectionSharder,
    ShardedManagedCollisionEmbeddingBagCollection,
)
from torchrec.distributed.planner.types import ShardEstimator, ShardingOption, Storage, Topology
from torchrec.distributed.types import ParameterSharding, ShardingEnv
from torchrec.modules.mc_modules import MCHManagedCollisionModule
from torchrec.sparse.jagged_tensor import JaggedTensor

from fusionrec.sharding.planner import PooledTableSharder


class _HostEviction:
    """``_evict`` for CPU ranks (see the module docstring); CUDA keeps TorchRec's."""

    def _evict(self, evictions_per_table: dict[str, Optional[torch.Tensor]]) -> None:
        if self._device.type == "cuda":  # type: ignore[attr-defined]
            super()._evict(evictions_per_table)  # type: ignore[misc]
            return
        for table, rows in evictions_per_table.items():
            if rows is None or rows.numel() == 0:
                continue
            tbe, logical = self._table_to_tbe_and_index[table]  # type: ignore[attr-defined]
            t = int(logical[0])
            rows = rows.long()
            init_fn = self._embedding_module._table_name_to_config[table].init_fn  # type: ignore[attr-defined]
            with torch.no_grad():
                weight = tbe.split_embedding_weights()[t]  # a view of this shard's rows [R_local, D]
                weight[rows] = init_fn(torch.empty_like(weight[rows], dtype=torch.float32)).to(weight.dtype)
                states = tbe.split_optimizer_states()  # per table, views; row-wise Adagrad: [[R_local]]
                for state in states[t] if t < len(states) else []:  # none without a fused optimizer
                    state[rows] = 0


def _clear_empty_slots(module: MCHManagedCollisionModule, incompatible_keys=None) -> None:
    """After a load: zero the eviction counters (LFU counts, LRU access steps) [rows] of the
    slots that hold no id, but the last, as a fresh map has them (a no-op on the world size
    the checkpoint was saved on).

    TorchRec pins the counter of each map's last slot, the one kept for misses, to the largest
    int64 (LFU) or the current step (LRU) so that it is never filled. A checkpoint of N ranks
    loaded on fewer holds N such slots per merged map, re-sorted to the end among the empty
    ones; only the last is the merged map's miss slot, and LFU would never fill the others
    (their counts outrank every new id's forever)."""
    empty = module._mch_sorted_raw_ids == torch.iinfo(torch.int64).max
    empty[-1] = False
    with torch.no_grad():
        for name in module._mch_metadata:
            getattr(module, "_mch_" + name)[empty] = 0


def _on_load_clear_empty_slots(sharded: nn.Module) -> None:
    for module in sharded.modules():
        if isinstance(module, MCHManagedCollisionModule):
            module.register_load_state_dict_post_hook(_clear_empty_slots)


class ShardedManagedPooledTables(_HostEviction, ShardedManagedCollisionEmbeddingBagCollection):
    """TorchRec's sharded MC-EBC with the CPU admission reset and merged maps' empty slots freed on load."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _on_load_clear_empty_slots(self)


class ShardedManagedSequenceTables(_HostEviction, ShardedManagedCollisionEmbeddingCollection):
    """TorchRec's sharded MC-EC with the CPU admission reset and merged maps' empty slots freed on load."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _on_load_clear_empty_slots(self)


class _HostKernels:
    """Off CUDA, offer only the kernels the wrapped embedding sharder offers there."""

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> list[str]:
        kernels = super().compute_kernels(sharding_type, compute_device_type)  # type: ignore[misc]
        if compute_device_type == "cuda":
            return kernels
        allowed = set(self._e_sharder.compute_kernels(sharding_type, compute_device_type))  # type: ignore[attr-defined]
        return [k for k in kernels if k in allowed]


class ManagedPooledTableSharder(_HostKernels, ManagedCollisionEmbeddingBagCollectionSharder):
    """Shards ``ManagedCollisionEmbeddingBagCollection`` row_wise, over :class:`PooledTableSharder`."""

    def __init__(self) -> None:
        super().__init__(ebc_sharder=PooledTableSharder())

    def shard(
        self,
        module,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: Optional[torch.device] = None,
        module_fqn: Optional[str] = None,
    ) -> ShardedManagedPooledTables:
        return ShardedManagedPooledTables(
            module, params, ebc_sharder=self._e_sharder, mc_sharder=self._mc_sharder, env=env,
            device=device or torch.device("cuda"),
        )  # fmt: skip


class ManagedSequenceTableSharder(_HostKernels, ManagedCollisionEmbeddingCollectionSharder):
    """Shards ``ManagedCollisionEmbeddingCollection`` row_wise."""

    def shard(
        self,
        module,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: Optional[torch.device] = None,
        module_fqn: Optional[str] = None,
    ) -> ShardedManagedSequenceTables:
        return ShardedManagedSequenceTables(
            module, params, ec_sharder=self._e_sharder, mc_sharder=self._mc_sharder, env=env,
            device=device or torch.device("cuda"),
        )  # fmt: skip


def reserve_admission_history(model: nn.Module, max_ids_per_step: dict[str, int]) -> None:
    """Size every collision-managed table's admission history for the most ids one step can
    bring to one rank (``max_ids_per_step[table]``: the whole global batch's ids of the
    table, which row-wise routing may all send to one rank), before the first step.

    Without it TorchRec sizes the history from the first batch (x 1.25) and truncates later
    larger ones (see the module docstring). Memory: 2 int64 per id slot and eviction interval,
    e.g. 2 x 8 B x 4096 rows x 64 ranks x 41 ids = 172 MB per table per rank; the demo needs
    under 0.2 MB.
    """
    for module in model.modules():
        if not isinstance(module, MCHManagedCollisionModule) or module._name not in max_ids_per_step:
            continue
        n = max_ids_per_step[module._name]
        ids = torch.zeros(n, dtype=torch.int64, device=module.device)
        # TorchRec's own sizing, from a stand-in batch of the largest size: n x interval x 1.25.
        module._init_history_buffers({module._name: JaggedTensor(values=ids, lengths=torch.tensor([n]))})


# ----------------------------------------------------------------------------- world-size changes


def row_wise_blocks(size: int, world_size: int) -> list[int]:
    """The boundaries ``[0, b_1, ..., size]`` of TorchRec's row-wise split of ``size`` rows, or
    of an id space of ``size`` ids, over ``world_size`` ranks: blocks of ``ceil(size /
    world_size)``, the last one shorter. Rows: the planner's row-wise shard sizes (an MC table's
    bucket count equals the world size, so it splits as a plain table does); ids: the block size
    of the MC input dist (``RwSparseFeaturesDist``), whose block k goes to rank k."""
    block = -(-size // world_size)
    return [min(k * block, size) for k in range(world_size + 1)]


def maps_reload(rows: int, id_space: int, saved_world: int, world: int) -> bool:
    """Whether the id → row map of a collision-managed table of ``rows`` rows over ids in
    ``[0, id_space)``, saved by ``saved_world`` ranks, is still right on ``world`` ranks.

    Each rank's map holds the ids of its block of the id space, pointing at global rows of its
    block of rows, sorted by id, the unused slots last. DCP concatenates the blocks and TorchRec
    re-sorts what a rank loads (``MCHManagedCollisionModule.validate_state``), so a rank whose
    blocks of rows *and* of ids are unions of whole saved blocks gets exactly the saved pairs
    (merging, e.g. 2 ranks → 1). Any other change (splitting, e.g. 1 → 2) would hand a rank
    ids routed elsewhere and rows it does not hold; TorchRec then stops with an assertion."""
    return all(set(row_wise_blocks(size, world)) <= set(row_wise_blocks(size, saved_world)) for size in (rows, id_space))


def map_bytes(module: MCHManagedCollisionModule, rows: int, ids_per_step: int) -> int:
    """Bytes of one rank's id → row map for ``rows`` rows of a collision-managed table, with
    its admission history sized for ``ids_per_step`` ids (see :func:`reserve_admission_history`):
    per row the sorted raw ids, the row of each and one int64 per eviction-metadata field
    (LFU: counts; LRU: last access); per history slot the id and one int64 per history
    field, ``ids_per_step * eviction_interval * 1.25`` slots."""
    info = module._eviction_policy.metadata_info
    per_row = 8 * (2 + sum(1 for m in info if m.is_mch_metadata))
    per_slot = 8 * (1 + sum(1 for m in info if m.is_history_metadata))
    return rows * per_row + int(ids_per_step * module._eviction_interval * 1.25) * per_slot


class CollisionMapStorage(ShardEstimator):
    """A planner storage estimator that adds each collision-managed table's id → row map and
    admission history (:func:`map_bytes`) to the storage of its shards, in HBM on CUDA ranks
    and in host memory otherwise. TorchRec's own estimator counts the table's rows, optimizer
    state and I/O buffers, not the MCH module's, which are 24 B per row and more per id
    slot; run it after TorchRec's storage estimator.

    ``ids_per_step``: per collision-managed table, the most ids one step can bring to one
    rank (the global batch's, as :func:`reserve_admission_history` reserves)."""

    def __init__(self, topology: Topology, constraints=None, ids_per_step: Optional[dict[str, int]] = None) -> None:
        self._on_device = topology.compute_device in {"cuda", "mtia"}
        self._ids_per_step = ids_per_step or {}

    def estimate(self, sharding_options: list[ShardingOption], sharder_data_map=None) -> None:
        for option in sharding_options:
            collection = getattr(option.module[1], "_managed_collision_collection", None)
            if collection is None or option.name not in collection._managed_collision_modules:
                continue
            module = collection._managed_collision_modules[option.name]
            for shard in option.shards:
                if shard.storage is None:
                    continue
                extra = map_bytes(module, shard.size[0], self._ids_per_step.get(option.name, 0))
                s = shard.storage
                shard.storage = Storage(hbm=s.hbm + extra, ddr=s.ddr, ssd=s.ssd) if self._on_device else \
                    Storage(hbm=s.hbm, ddr=s.ddr + extra, ssd=s.ssd)  # fmt: skip
