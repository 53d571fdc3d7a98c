"""Real 2-rank sharding on CPU (gloo): sharded lookups equal unsharded ones for every plan."""

import json

import pytest
import torch

from tests.launch import REPO, torchrun

pytestmark = pytest.mark.slow


def test_every_sharding_type_matches_unsharded_lookups(tmp_path):
    """table/row/column-wise for pooled and sequence tables, table-row-wise and data-parallel
    for pooled tables: each rank's sharded lookups equal an unsharded table's."""
    torchrun([str(REPO / "tests/workers/sharded_lookup.py"), str(tmp_path)], nproc=2)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        plan = {row["table"]: row for row in result["plan"]}
        for kind in ("bag", "seq"):
            assert plan[f"{kind}_table_wise"]["sharding_type"] == "table_wise"
            assert len(plan[f"{kind}_table_wise"]["ranks"]) == 1
            for split in ("row_wise", "column_wise"):
                assert plan[f"{kind}_{split}"]["sharding_type"] == split
                assert plan[f"{kind}_{split}"]["ranks"] == [0, 1], f"{kind}_{split} not split across both ranks"
        assert plan["bag_table_row_wise"]["sharding_type"] == "table_row_wise"
        assert plan["bag_table_row_wise"]["ranks"] == [0, 1]  # one host: its 2 ranks split the rows
        assert plan["bag_data_parallel"]["sharding_type"] == "data_parallel"
        assert len(result["diffs"]) == 8
        for table, diff in result["diffs"].items():
            assert diff < 1e-5, f"rank {rank}: table {table} differs from the unsharded lookup by {diff}"


def test_replicated_tables_stay_equal_on_every_rank_while_training(tmp_path, small_logs):
    """data_parallel tables train on each rank's own rows: their gradients must be all-reduced
    (and the fused row-wise Adagrad applied alike), or the replicas drift apart unnoticed."""
    torchrun([str(REPO / "tests/workers/replicated_tables.py"), str(tmp_path), str(small_logs), str(tmp_path / "run")],
             nproc=2)  # fmt: skip
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for table in ("category", "tag"):
        assert all(r["plan"][table] == "data_parallel" for r in ranks)
        before = [torch.tensor(r["before"][table]) for r in ranks]
        after = [torch.tensor(r["after"][table]) for r in ranks]
        assert torch.equal(before[0], before[1]), f"{table}: the replicas start apart"
        assert (after[0] - before[0]).abs().max() > 1e-4, f"{table}: training did not change it"
        assert (after[0] - after[1]).abs().max() < 1e-6, f"{table}: the replicas drifted apart"
