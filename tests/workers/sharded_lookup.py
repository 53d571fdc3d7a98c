"""Worker: shard pooled and sequence tables with several plans; compare with unsharded lookups.

Run under torchrun with 2 ranks; writes ``OUT/rank{r}.json`` with the largest difference
per table between the sharded and the unsharded result.
"""

import json
import sys
from pathlib import Path

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from fusionrec.pipeline.job import process_group
from fusionrec.pipeline.logs import quiet_third_party
from fusionrec.sharding.config import ShardingConfig, TableConstraint
from fusionrec.sharding.planner import describe_plan, plan_and_shard

TYPES = ["table_wise", "row_wise", "column_wise"]
BAG_ONLY_TYPES = ["table_row_wise", "data_parallel"]  # the EmbeddingCollection sharder offers neither
ROWS, DIM = 100, 64


class Lookups(torch.nn.Module):
    def __init__(self, device):
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            [
                EmbeddingBagConfig(name=f"bag_{t}", num_embeddings=ROWS, embedding_dim=DIM, feature_names=[f"f_{t}"])
                for t in TYPES + BAG_ONLY_TYPES
            ],
            device=device,
        )
        self.ec = EmbeddingCollection(
            [EmbeddingConfig(name=f"seq_{t}", num_embeddings=ROWS, embedding_dim=DIM, feature_names=[f"s_{t}"]) for t in TYPES],
            device=device,
        )

    def forward(self, bags, seqs):
        return self.ebc(bags), self.ec(seqs)


def full_weight(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    return torch.randn(ROWS, DIM, generator=g)


def fill_shards(model: torch.nn.Module) -> None:
    """Write the known full weights into each rank's local shards (at their offsets)."""
    for key, value in model.state_dict().items():
        table = key.split(".")[-2]
        if not hasattr(value, "local_shards"):  # data_parallel: a full replica on every rank
            value.copy_(full_weight(table))
            continue
        for shard in value.local_shards():
            r, c = shard.metadata.shard_offsets
            h, w = shard.metadata.shard_sizes
            shard.tensor.copy_(full_weight(table)[r : r + h, c : c + w])


def inputs(keys, rank):
    g = torch.Generator().manual_seed(rank)
    lengths = torch.randint(0, 4, (len(keys) * 5,), generator=g)
    values = torch.randint(0, ROWS, (int(lengths.sum()),), generator=g)
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)


def check(info, out: Path) -> None:
    tables = [f"bag_{t}" for t in TYPES + BAG_ONLY_TYPES] + [f"seq_{t}" for t in TYPES]
    cfg = ShardingConfig(
        constraints={
            name: TableConstraint(sharding_types=[name.split("_", 1)[1]], min_partition=DIM // 2) for name in tables
        }
    )
    model = Lookups(torch.device("meta"))
    dmp, plan = plan_and_shard(model, cfg, tables, info.device, 5, info.local_world_size)
    with torch.no_grad():
        fill_shards(dmp)
    bags = inputs([f"f_{t}" for t in TYPES + BAG_ONLY_TYPES], info.rank)
    seqs = inputs([f"s_{t}" for t in TYPES], info.rank)
    pooled, sequences = dmp(bags, seqs)

    reference = Lookups(torch.device("cpu"))
    with torch.no_grad():
        for key, value in reference.state_dict().items():
            value.copy_(full_weight(key.split(".")[-2]))
    ref_pooled, ref_sequences = reference(bags, seqs)
    diffs = {}
    for t in TYPES + BAG_ONLY_TYPES:
        diffs[f"bag_{t}"] = (pooled[f"f_{t}"] - ref_pooled[f"f_{t}"]).abs().max().item()
    for t in TYPES:
        diffs[f"seq_{t}"] = (sequences[f"s_{t}"].values() - ref_sequences[f"s_{t}"].values()).abs().max().item()
    result = {"diffs": diffs, "plan": describe_plan(plan)}
    (out / f"rank{info.rank}.json").write_text(json.dumps(result))


def main(out: Path) -> None:
    quiet_third_party()
    with process_group("cpu") as info:  # ends the way every job does (pipeline.job)
        check(info, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
