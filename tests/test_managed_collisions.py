"""Managed collisions (``features.tables[].collision``): TorchRec's MCH modules over raw ids.

The reader passes raw ids for collision-managed tables (no modulo); the tables are sharded
row-wise with their id → row maps on 2 gloo ranks, where sharded lookups equal an unsharded
module's, maps survive a DCP round trip, eviction follows the policy, and a demo training
run resumes exactly. Across a world-size change the maps merge (2 ranks → 1: every admitted id
keeps its row, vector and optimizer state) and never split (1 → 2 stops every loading job with
one line). The export refuses such models with one line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fusionrec.datasets.hashing import hash_strings, mc_ids, stable_hash
from fusionrec.datasets.reader import ParquetReader
from fusionrec.datasets.schema import MC_ID_SPACE
from fusionrec.errors import CheckpointMismatchError, ConfigError
from fusionrec.pipeline import export as export_cli
from fusionrec.pipeline.binding import check_collision_world_size
from fusionrec.pipeline.config import load_config
from fusionrec.pipeline.job import build_meta_model
from fusionrec.sharding.collisions import maps_reload, row_wise_blocks
from tests.jobs import assert_same_training, checkpoint_tensors, evaluate, meta, train, train_args
from tests.launch import REPO, TORCHRUN, child_env, free_port, run, torchrun

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
    resumed steps give the same weights, optimizer state and id → row maps as 20 straight steps;
    the 2-rank checkpoints evaluate in one process and resume training on 1 rank (maps merged)."""
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
    # The 2-rank checkpoint evaluates in one process: the two blocks of each map merge.
    result = evaluate(demo_logs, a, tmp_path / "eval.json", *[x for s in sets for x in ("--set", s)])
    assert result["world_size"] == 1 and result["step"] == 20 and result["samples"] == 8000
    # ... and resumes training on 1 rank: every id the 2 ranks had admitted keeps its row.
    merged = tmp_path / "merged"
    shutil.copytree(straight / "checkpoints" / "step_00000010", merged / "checkpoints" / "step_00000010")
    proc = train(demo_logs, merged, 20, "--resume", *every, nproc=1)
    assert "resumed from" in proc.stdout
    before = checkpoint_tensors(straight / "checkpoints" / "step_00000010", tmp_path)
    after = checkpoint_tensors(merged / "checkpoints" / "step_00000020", tmp_path)
    empty = torch.iinfo(torch.int64).max
    for table, rows, counter in (("user", 20000, "_mch_last_access_iter"), ("item", 50000, "_mch_counts")):
        key = next(k for k in before if k.endswith(f"modules.{table}._mch_sorted_raw_ids"))
        mapping = key.replace("_mch_sorted_raw_ids", "_mch_remapped_ids_mapping")
        ids, row = after[key], after[mapping]
        admitted = ids[ids != empty]
        assert torch.equal(torch.sort(row).values, torch.arange(rows)) and len(set(admitted.tolist())) == len(admitted)
        assert len(admitted) < rows - 1, len(admitted)  # never full, so nothing was evicted ...
        now = dict(zip(ids.tolist(), row.tolist()))
        was = before[key] != empty
        assert all(now[i] == r for i, r in zip(before[key][was].tolist(), before[mapping][was].tolist()))  # ... nor moved
        # The 2-rank map's pinned miss slot of block 0 is an empty slot like any other after the merge.
        assert (after[key.replace("_mch_sorted_raw_ids", counter)][:-1][ids[:-1] == empty] == 0).all(), table


def test_collision_maps_reload_only_by_merging_whole_blocks():
    """TorchRec's row-wise blocks (ceil-sized, the last shorter) of rows and of the id space;
    a map reloads on a world size whose blocks of both are unions of the saved ones."""
    assert row_wise_blocks(16, 2) == [0, 8, 16] and row_wise_blocks(20000, 3) == [0, 6667, 13334, 20000]
    assert row_wise_blocks(MC_ID_SPACE, 2) == [0, 2**62, MC_ID_SPACE]
    assert maps_reload(16, MC_ID_SPACE, 2, 1) and maps_reload(16, MC_ID_SPACE, 4, 2) and maps_reload(16, MC_ID_SPACE, 2, 2)
    assert not maps_reload(16, MC_ID_SPACE, 1, 2) and not maps_reload(16, MC_ID_SPACE, 2, 4)
    # 24 rows: blocks of 4 on 6 ranks, of 8 on 3 (aligned). Ids 0..63: blocks of 11 on 6 ranks,
    # of 22 on 3 (aligned); of the odd 2**63 - 1 ids: 1537228672809129302 on 6, 3074457345618258603
    # on 3, not twice the first: one id would land on a rank whose map does not hold it.
    assert maps_reload(24, 64, 6, 3) and not maps_reload(24, MC_ID_SPACE, 6, 3)
    assert not maps_reload(20000, 64, 6, 2)  # rows: 3 x 3334 = 10002, not 10000
    check_collision_world_size("ck", {"user": 20000, "item": 50000}, 2, 1)  # merging: fine
    check_collision_world_size("ck", {"user": 20000}, None, 2)  # no saved world size: not checked
    with pytest.raises(CheckpointMismatchError) as err:
        check_collision_world_size("ck", {"user": 20000, "item": 50000}, 1, 2)
    assert str(err.value) == (
        "ck: collision-managed tables user, item were saved by 1 rank and cannot be loaded on 2 ranks: each rank "
        "holds one row-wise block of their id -> row maps, and TorchRec can merge blocks onto fewer ranks but not "
        "split them (features.tables.<name>.collision); load it on 1 rank"
    )
    with pytest.raises(CheckpointMismatchError, match=r"table user was saved by 8 ranks and cannot be loaded on 3 ranks: .*"
                                                      r"load it on 1, 2, 4 or 8 ranks$"):  # fmt: skip
        check_collision_world_size("ck", {"user": 20000}, 8, 3)


@pytest.mark.slow
def test_collision_maps_merge_from_two_ranks_to_one_and_never_split(tmp_path):
    """tests/workers/mc_world_size.py: 16-row LFU (bag) and LRU (seq) tables trained full on 1
    rank, loaded on 2 (refused), trained full on 2 ranks, loaded on 1 (every admitted id keeps
    its row, vector and Adagrad state)."""
    worker = str(REPO / "tests/workers/mc_world_size.py")
    one, two, back = tmp_path / "one", tmp_path / "two", tmp_path / "back"
    for d in (one, two, back):
        d.mkdir()
    run([sys.executable, worker, str(one), "--save"])
    torchrun([worker, str(two), "--load", str(one / "ckpt"), "--save"], nproc=2)
    run([sys.executable, worker, str(back), "--load", str(two / "ckpt")])
    saved1, saved2 = (json.loads((d / "result.json").read_text()) for d in (one, two))
    sound = {"rows_are_blocks": True, "ids_in_own_block": True, "unique_ids": True}
    # Full tables: 16 rows less the miss row per rank.
    assert saved1["saved_map"] == {t: {**sound, "admitted": 15} for t in ("bag", "seq")}
    assert saved2["saved_map"] == {t: {**sound, "admitted": 14} for t in ("bag", "seq")}

    # 1 → 2: fusionrec refuses in one line; TorchRec alone would copy the 1-rank map's halves
    # into the 2 shards (rows of the other shard, ids routed to the other rank), then assert.
    split = saved2["load"]
    assert split["guard"] == (
        f"{one / 'ckpt'}: collision-managed tables bag, seq were saved by 1 rank and cannot be loaded on 2 ranks: "
        "each rank holds one row-wise block of their id -> row maps, and TorchRec can merge blocks onto fewer ranks "
        "but not split them (features.tables.<name>.collision); load it on 1 rank"
    )
    assert all(not m["rows_are_blocks"] for m in split["map_as_loaded"].values()), split["map_as_loaded"]
    assert re.match(r"AssertionError: shard within range \[0, 8\] cannot be built out of segements", split["load_error"])

    # 2 → 1: the two blocks of each map merge.
    merged = json.loads((back / "result.json").read_text())["load"]
    assert merged["guard"] is None and merged["load_error"] is None
    for table, a in merged["after"].items():
        assert a["admitted_saved"] == 14 and a["same_ids"] and a["same_rows"], (table, a)
        assert a["vector_diff"] == 0.0 and a["momentum_diff"] == 0.0, (table, a)
        # Misses read the last row (15): the saved high block's miss row; the low block's (7) is freed.
        assert a["miss_vs_saved_last_row"] == [0.0, 0.0] and a["miss_vs_saved_miss"][1] == 0.0, (table, a)
        assert a["miss_vs_saved_miss"][0] > 0.0, (table, a)
    assert merged["unsharded_diff"] == 0.0
    # Training goes on, and the freed slot is filled (LFU too): 16 rows less one miss row.
    assert merged["map_after_training"] == {t: {**sound, "admitted": 15} for t in ("bag", "seq")}


@pytest.mark.slow
def test_one_rank_collision_checkpoint_does_not_resume_on_two(demo_logs, tmp_path):
    """A 1-rank checkpoint with MC tables: ``fusionrec train --nproc-per-node 2 --resume`` stops
    in its own process (exit 2), and a resume under torchrun in its workers, with the same line."""
    sets = [a for s in MC for a in ("--set", s)]
    run_dir = tmp_path / "run"
    run([sys.executable, *train_args(demo_logs, run_dir, 3, *sets)])
    checkpoint = run_dir / "checkpoints" / "step_00000003"
    assert meta(checkpoint)["world_size"] == 1
    line = (
        f"{checkpoint}: collision-managed tables user, item were saved by 1 rank and cannot be loaded on 2 ranks: "
        "each rank holds one row-wise block of their id -> row maps, and TorchRec can merge blocks onto fewer ranks "
        "but not split them (features.tables.<name>.collision); load it on 1 rank"
    )
    resume = train_args(demo_logs, run_dir, 6, *sets, "--resume")
    launcher = [sys.executable, "-m", "fusionrec", "train", "--nproc-per-node", "2", *resume[2:]]
    proc = subprocess.run(launcher, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {line}", proc.stderr[-3000:]
    workers = [*TORCHRUN, "--nnodes", "1", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), *resume]  # fmt: skip
    proc = subprocess.run(workers, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0  # torchrun's own code; it stops the other rank once one has failed
    assert any(re.fullmatch(rf"error: rank [01]/2: {re.escape(line)}", x) for x in proc.stderr.splitlines()), proc.stderr[-3000:]
    assert "AssertionError" not in proc.stderr and not (run_dir / "checkpoints" / "step_00000006").exists()
