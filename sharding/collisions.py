"""Sharders for collision-managed tables: TorchRec's managed-collision sharders, made to run on
CPU ranks too.

TorchRec shards a ``ManagedCollisionEmbeddingBagCollection`` / ``ManagedCollisionEmbeddingCollection``
row_wise only: the id → row map of each table is split into blocks of the id range, each rank
keeping the map (``_mch_sorted_raw_ids``, ``_mch_remapped_ids_mapping``, the eviction
counters) of the rows it owns, and the input dist sends every raw id to the rank owning its
block. Three gaps stop that on CPU ranks with TorchRec 1.8 / fbgemm-gpu-cpu 1.8, filled here:

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


class ShardedManagedPooledTables(_HostEviction, ShardedManagedCollisionEmbeddingBagCollection):
    """TorchRec's sharded MC-EBC with the CPU admission reset."""


class ShardedManagedSequenceTables(_HostEviction, ShardedManagedCollisionEmbeddingCollection):
    """TorchRec's sharded MC-EC with the CPU admission reset."""


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
