"""Worker: collision-managed tables (TorchRec's MC-EBC and MC-EC, built by fusionrec from a
schema) sharded row-wise over 2 gloo ranks.

Run under torchrun with 2 ranks; writes ``OUT/rank{r}.json``:

* ``admitted``: every id seen in training got a row: the eval-mode lookups of the training ids
  hit (no id reads the miss row), and distinct ids read distinct rows.
* ``vs_unsharded``: largest difference between the sharded lookups and an unsharded module
  that loaded the same DCP checkpoint in one process (rows and weights resharded to 1 rank).
* ``round_trip``: a fresh sharded model loaded from the checkpoint gives the same lookups
  (each id reads the same row) and the same id → row maps.
* ``eviction``: which ids hold rows after more distinct ids than rows went through an LFU
  (bag) and an LRU (sequence) table.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec import KeyedJaggedTensor

from fusionrec.datasets.hashing import mc_ids
from fusionrec.datasets.schema import CollisionConfig, FeatureSchema, SequenceFeature, SparseFeature, TableConfig
from fusionrec.models.embeddings import build_mc_embedding_bag_collection, build_mc_embedding_collection
from fusionrec.pipeline.job import process_group
from fusionrec.pipeline.logs import quiet_third_party
from fusionrec.sharding.collisions import reserve_admission_history
from fusionrec.sharding.config import ShardingConfig
from fusionrec.sharding.planner import describe_plan, plan_and_shard

ROWS, DIM, B = 64, 8, 4


def schema(bag_policy: str, seq_policy: str, rows: int = ROWS) -> FeatureSchema:
    return FeatureSchema(
        tables=[
            TableConfig("bag", rows, DIM, collision=CollisionConfig(eviction=bag_policy)),
            TableConfig("seq", rows, DIM, collision=CollisionConfig(eviction=seq_policy)),
        ],
        sparse=[SparseFeature("b", "bag")],
        sequences=[SequenceFeature("s", "seq", "click", max_len=3)],
    )


class Lookups(torch.nn.Module):
    def __init__(self, features: FeatureSchema, device, buckets: int):
        super().__init__()
        self.mc_ebc = build_mc_embedding_bag_collection(features, device, buckets)
        self.mc_ec = build_mc_embedding_collection(features, device, buckets)

    def forward(self, bags: KeyedJaggedTensor, seqs: KeyedJaggedTensor):
        return self.mc_ebc(bags)[0], self.mc_ec(seqs)[0]


def shard(features: FeatureSchema, world: int):
    model = Lookups(features, torch.device("meta"), world)
    tables = [t.name for t in features.tables]
    dmp, plan = plan_and_shard(model, ShardingConfig(), tables, torch.device("cpu"), B, world)
    reserve_admission_history(dmp, {"bag": B * world, "seq": 3 * B * world})
    return dmp, plan


def kjt(key: str, raw: list[list[int]]) -> KeyedJaggedTensor:
    """One key; row i holds ids raw[i] (spread by mc_ids as the reader does)."""
    flat = [i for row in raw for i in row]
    values = torch.from_numpy(mc_ids(torch.tensor(flat, dtype=torch.int64).numpy()))
    return KeyedJaggedTensor(keys=[key], values=values, lengths=torch.tensor([len(r) for r in raw]))


def train_rows(rank: int, steps: int, distinct: int) -> list[tuple[list[list[int]], list[list[int]]]]:
    """Per step this rank's (bag rows, sequence rows) of raw ids, from pools of ``distinct``
    ids per table and rank."""
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for _ in range(steps):
        bag_ids = (torch.randint(0, distinct, (B,), generator=g) + 1000 * rank).tolist()
        seq_ids = (torch.randint(0, distinct, (B, 3), generator=g) + 1000 * rank + 500).tolist()
        out.append(([[i] for i in bag_ids], seq_ids))
    return out


def lookups(model, bags, seqs) -> tuple[torch.Tensor, torch.Tensor]:
    pooled, seq = model(bags, seqs)
    return pooled["b"].detach().clone(), seq["s"].values().detach().clone()


def mc_state(model) -> dict[str, torch.Tensor]:
    """The id → row maps and counters of this rank's shards (local tensors)."""
    out = {}
    for key, value in model.state_dict().items():
        if "_managed_collision_modules" in key:
            local = value.local_shards()[0].tensor if hasattr(value, "local_shards") else value
            out[key] = local.clone()
    return out


def resident(model, table: str) -> list[int]:
    """Raw ids holding a row in ``table`` on this rank (its shard's map, empty slots left out)."""
    for key, value in model.state_dict().items():
        if key.endswith(f"{table}._mch_sorted_raw_ids"):
            ids = value.local_shards()[0].tensor
            return sorted(int(i) for i in ids[ids != torch.iinfo(torch.int64).max])
    raise KeyError(table)


def check(info, out: Path) -> None:
    rank, world = info.rank, info.world_size
    result: dict = {}

    # 1. Training-mode forwards admit ids; then eval-mode lookups (no admission).
    features = schema("lfu", "lru")
    dmp, plan = shard(features, world)
    result["plan"] = describe_plan(plan)
    rows = train_rows(rank, steps=6, distinct=8)  # at most 8 distinct ids per table and rank: fewer than the rows
    for bag_rows, seq_rows in rows:
        dmp(kjt("b", bag_rows), kjt("s", seq_rows))
    dmp.eval()
    probe_bags = kjt("b", [r for bag_rows, _ in rows for r in bag_rows])
    probe_seqs = kjt("s", [r for _, seq_rows in rows for r in seq_rows])
    pooled, seq = lookups(dmp, probe_bags, probe_seqs)
    raw_bag, raw_seq = probe_bags.values(), probe_seqs.values()
    # Rows are told apart by their (randomly initialised) weights: same id ⇔ same vector.
    distinct_ids = len(set(raw_bag.tolist())), len(set(raw_seq.tolist()))
    distinct_rows = len({tuple(r.tolist()) for r in pooled}), len({tuple(r.tolist()) for r in seq})
    result["admitted"] = {"distinct_ids": distinct_ids, "distinct_rows": distinct_rows}

    ckpt = out / "ckpt"
    dcp.save({"model": dmp.state_dict()}, checkpoint_id=str(ckpt))
    dist.barrier()

    # 2. A fresh sharded model from the checkpoint: same rows for the same ids.
    fresh, _ = shard(schema("lfu", "lru"), world)
    state = {"model": fresh.state_dict()}
    dcp.load(state, checkpoint_id=str(ckpt))
    fresh.load_state_dict(state["model"])
    fresh.eval()
    pooled2, seq2 = lookups(fresh, probe_bags, probe_seqs)
    before, after = mc_state(dmp), mc_state(fresh)
    result["round_trip"] = {
        "lookup_diff": max((pooled2 - pooled).abs().max().item(), (seq2 - seq).abs().max().item()),
        "maps_equal": sorted(before) == sorted(after) and all(torch.equal(before[k], after[k]) for k in before),
    }

    # 3. The same checkpoint in one unsharded module (as a world-of-one evaluation loads it).
    reference = Lookups(schema("lfu", "lru"), torch.device("cpu"), 1)
    ref_state = {"model": reference.state_dict()}
    dcp.load(ref_state, checkpoint_id=str(ckpt), no_dist=True)
    reference.load_state_dict(ref_state["model"])
    reference.eval()
    ref_pooled, ref_seq = lookups(reference, probe_bags, probe_seqs)
    result["vs_unsharded"] = max((ref_pooled - pooled).abs().max().item(), (ref_seq - seq).abs().max().item())
    dist.barrier()

    # 4. Eviction: 16 rows per table (8 per rank, 7 usable: TorchRec keeps one per shard for
    # misses). Bag table (LFU): 3 hot ids every step and one new cold id. Sequence table (LRU):
    # 3 new ids every step, then 2 recent ids in the last step. 8 steps exceed the capacity.
    model, _ = shard(schema("lfu", "lru", rows=16), world)
    hot = [10 * rank + i for i in range(3)]
    cold_bag = [100 * (rank + 1) + s for s in range(8)]
    cold_seq = [5000 + 1000 * rank + k for k in range(24)]
    recent = [9000 + 10 * rank, 9001 + 10 * rank]
    for s in range(8):
        model(kjt("b", [[hot[0]], [hot[1]], [hot[2]], [cold_bag[s]]]), kjt("s", [cold_seq[3 * s : 3 * s + 3]] * B))
    model(kjt("b", [[hot[0]], [hot[1]], [hot[2]], [hot[0]]]), kjt("s", [[recent[0], recent[1], recent[0]]] * B))

    def spread(ids: list[int]) -> list[int]:
        return mc_ids(torch.tensor(ids, dtype=torch.int64).numpy()).tolist()

    result["eviction"] = {
        "bag": resident(model, "bag"),
        "seq": resident(model, "seq"),
        "hot": spread(hot),
        "cold_bag": spread(cold_bag),
        "first_seq": spread(cold_seq[:3]),
        "recent": spread(recent),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def main(out: Path) -> None:
    quiet_third_party()
    with process_group("cpu") as info:  # ends the way every job does (pipeline.job)
        check(info, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
