"""Real 2-rank sharding on CPU (gloo): sharded lookups equal unsharded ones for every plan."""

import json

import pytest

from tests.launch import REPO, torchrun

pytestmark = pytest.mark.slow


def test_table_row_column_wise_lookups_match_unsharded(tmp_path):
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
        for table, diff in result["diffs"].items():
            assert diff < 1e-5, f"rank {rank}: table {table} differs from the unsharded lookup by {diff}"
