"""Managed collisions (``features.tables[].collision``): TorchRec's MCH modules over raw ids.

The reader passes raw ids for collision-managed tables (no modulo); the tables are sharded
row-wise with their id → row maps on 2 gloo ranks, where sharded lookups equal an unsharded
module's, maps survive a DCP round trip, eviction follows the policy, and a demo training
run resumes exactly. The export refuses such models with one line.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fusionrec.datasets.hashing import hash_strings, mc_ids, stable_hash
from fusionrec.datasets.reader import ParquetReader
from fusionrec.datasets.schema import MC_ID_SPACE
from fusionrec.errors import ConfigError
from fusionrec.pipeline import export as export_cli
from fusionrec.pipeline.config import load_config
from fusionrec.pipeline.job import build_meta_model
from tests.jobs import assert_same_training, checkpoint_tensors, meta, train
from tests.launch import REPO, torchrun

DEMO = REPO / "configs/demo.yaml"
# item: LFU (sequence table, MC-EC); user: LRU (bag table, MC-EBC); both row_wise.
MC = ["features.tables.item.collision.eviction=lfu", "features.tables.user.collision.eviction=lru",
      "sharding.constraints.item.sharding_types=[row_wise]"]  # fmt: skip


def test_mc_ids_spread_raw_ids_without_modulo():
    raw = np.array([0, 1, 2, 50_000, -1, 2**62, -(2**63)], dtype=np.int64)
    out = mc_ids(raw)
    assert out.dtype == np.int64 and (out >= 0).all() and (out < MC_ID_SPACE).all()
    assert len(set(out.tolist())) == len(raw)  # distinct ids stay distinct
    assert mc_ids(np.array([2**64 - 1], dtype=np.uint64))[0] == mc_ids(np.array([-1], dtype=np.int64))[0]
    # Consecutive small ids are spread over the whole range (both row-wise halves get some).
    spread = mc_ids(np.arange(1000, dtype=np.int64))
    assert 0.4 < (spread < MC_ID_SPACE // 2).mean() < 0.6
    strings = hash_strings(pa.array(["a", "b"]))
    assert mc_ids(strings, hashed=True)[0] == stable_hash("a") % MC_ID_SPACE


def test_schema_routes_collision_tables_to_their_own_kjts_and_modules():
    cfg = load_config(DEMO, MC)
    groups = {k: [f.name for f in v] for k, v in cfg.features.batch_features().items()}
    assert groups == {
        "sparse": ["item_category", "user_tags"],
        "sequence": [],
        "mc_sparse": ["user_id"],
        "mc_sequence": ["click_seq", "like_seq", "buy_seq", "item_id"],
    }
    model = build_meta_model(cfg, cfg.train.sparse_optimizer, world_size=2)
    assert type(model.mc_ebc).__name__ == "ManagedCollisionEmbeddingBagCollection"
    assert type(model.mc_ec).__name__ == "ManagedCollisionEmbeddingCollection"
    assert model.ec is None and [c.name for c in model.ebc.embedding_bag_configs()] == ["category", "tag"]
    mch = model.mc_ebc._managed_collision_collection._managed_collision_modules["user"]
    assert mch.output_size() == 20000 and mch.input_size() == MC_ID_SPACE and mch.buckets() == 2


def test_reader_passes_raw_ids_for_collision_tables(tmp_path):
    """Ids far beyond the table size reach an MC table as mc_ids(raw), never wrapped or counted;
    a table without collision still takes them modulo."""
    cfg = load_config(DEMO, MC)
    n = 8
    big = np.arange(n, dtype=np.int64) * 10_000_019 + 123_456_789_012  # >> 20000 / 50000 rows
    cols = {
        "user_id": pa.array(big), "item_id": pa.array(big + 1), "item_category": pa.array(big + 2),
        "user_tags": pa.array([[int(x), int(x) + 1] for x in big]),
        **{s.name: pa.array([[int(x) + 3, int(x) + 4] for x in big]) for s in cfg.features.sequences},
        **{d: pa.array(np.zeros(n, dtype=np.float32)) for d in cfg.features.dense},
        **{t.name: pa.array(np.zeros(n, dtype=np.float32)) for t in cfg.tasks},
        "group_id": pa.array(np.arange(n)),
    }  # fmt: skip
    pq.write_table(pa.table(cols), tmp_path / "part.parquet")
    reader = ParquetReader([str(tmp_path / "part.parquet")], cfg.schema, n, drop_last=False)
    batch = next(iter(reader))
    assert batch.mc_sparse.keys() == ["user_id"]
    assert torch.equal(batch.mc_sparse["user_id"].values(), torch.from_numpy(mc_ids(big)))
    assert torch.equal(batch.mc_sequence["item_id"].values(), torch.from_numpy(mc_ids(big + 1)))
    assert torch.equal(batch.sparse["item_category"].values(), torch.from_numpy((big + 2) % 500))
    stats = reader.data_stats(per_column=True)
    assert stats.get("ids_out_of_range_wrapped/item_category") == n
    assert not any(k.endswith(("/user_id", "/item_id", "_seq")) and "wrapped" in k for k in stats), stats


def test_collision_table_needs_row_wise_and_bounded_lists():
    with pytest.raises(ConfigError, match=r"sharding\.constraints\.item\.sharding_types: .*row_wise only"):
        load_config(DEMO, ["features.tables.item.collision.eviction=lfu"])  # the demo pins item to column_wise
    with pytest.raises(ConfigError, match=r"user_tags.*collision-managed table 'tag' needs max_len"):
        load_config(DEMO, ["features.tables.tag.collision.eviction=lru", "features.sparse.user_tags.max_len=null"])


def test_export_refuses_collision_tables_in_one_line(tmp_path, capsys):
    args = ["--config", str(DEMO), *[a for s in MC for a in ("--set", s)], "--checkpoint", str(tmp_path / "none"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert "user, item use collision management" in lines[0] and "cannot be exported" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sharded_collision_tables_on_two_ranks(tmp_path):
    """Row-wise MC-EBC and MC-EC over 2 gloo ranks (tests/workers/managed_collisions.py)."""
    torchrun([str(REPO / "tests/workers/managed_collisions.py"), str(tmp_path)], nproc=2)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, r in enumerate(results):
        assert {row["table"]: row["sharding_type"] for row in r["plan"]} == {"bag": "row_wise", "seq": "row_wise"}
        assert all(row["ranks"] == [0, 1] for row in r["plan"])
        ids, rows = r["admitted"]["distinct_ids"], r["admitted"]["distinct_rows"]
        assert ids == rows and min(ids) > 1, f"rank {rank}: distinct ids {ids} read {rows} distinct rows"
        assert r["vs_unsharded"] == 0.0, f"rank {rank}: sharded lookups differ from unsharded by {r['vs_unsharded']}"
        assert r["round_trip"] == {"lookup_diff": 0.0, "maps_equal": True}, (rank, r["round_trip"])
    ev = [r["eviction"] for r in results]
    bag = set(ev[0]["bag"]) | set(ev[1]["bag"])
    seq = set(ev[0]["seq"]) | set(ev[1]["seq"])
    # 16 rows, 8 per rank, one of them kept for misses: 14 ids hold rows in each table.
    assert len(bag) == len(seq) == 14
    hot = ev[0]["hot"] + ev[1]["hot"]
    cold = set(ev[0]["cold_bag"] + ev[1]["cold_bag"])
    assert set(hot) <= bag, "LFU evicted an id seen every step"
    assert bag - set(hot) <= cold and len(bag & cold) == 8  # the rest: cold ids, first come (ties keep residents)
    assert set(ev[0]["recent"] + ev[1]["recent"]) <= seq, "LRU did not admit the most recent ids"
    assert not set(ev[0]["first_seq"] + ev[1]["first_seq"]) & seq, "LRU kept the least recently seen ids"


@pytest.mark.slow
def test_demo_with_collision_tables_trains_and_resumes_exactly(demo_logs, tmp_path):
    """The demo with MC user (LRU, fp16 weights) and item (LFU) tables on 2 ranks: 10 + 10
    resumed steps give the same weights, optimizer state and id → row maps as 20 straight steps."""
    sets = [*MC, "features.tables.user.data_type=fp16"]
    every = ["--set", "checkpoint.every_n_steps=10", *[a for s in sets for a in ("--set", s)]]
    straight = tmp_path / "straight"
    proc = train(demo_logs, straight, 20, *every)
    assert "user                 row_wise" in proc.stdout and "item                 row_wise" in proc.stdout
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoints" / "step_00000010", resumed / "checkpoints" / "step_00000010")
    proc = train(demo_logs, resumed, 20, "--resume", *every)
    assert "resumed from" in proc.stdout and meta(resumed / "checkpoints" / "step_00000020")["step"] == 20
    a, b = straight / "checkpoints" / "step_00000020", resumed / "checkpoints" / "step_00000020"
    assert_same_training(a, b, tmp_path)
    tensors = checkpoint_tensors(a, tmp_path)
    maps = [k for k in tensors if k.endswith("_mch_sorted_raw_ids")]
    assert len(maps) == 2  # both tables' maps are in the checkpoint (and compared above)
    assert tensors["model.mc_ebc._embedding_module.embedding_bags.user.weight"].dtype == torch.float16
