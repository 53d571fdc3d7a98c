"""The plan job and plan reports: cluster plans for production-sized tables, made on this CPU-only machine
(meta tensors, no GPU, no process group), and the per-rank memory summary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from fusionrec.models import build_model
from fusionrec.pipeline.config import load_config
from fusionrec.pipeline import plan as plan_cli
from fusionrec.pipeline.job import build_meta_model, collision_ids_per_step
from fusionrec.sharding.config import ShardingConfig
from fusionrec.sharding.report import (
    PlanRecorder,
    TableSize,
    fit_report,
    format_fit_report,
    format_memory_summary,
    format_table_plan,
    rank_ranges,
)
from fusionrec.sharding.planner import GIB, MachineMemory, default_sharders, make_planner, plan_and_shard
from tests.launch import REPO, child_env

PRODUCTION = REPO / "configs/production.yaml"
DEMO = REPO / "configs/demo.yaml"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_production_config_is_industrial_sized():
    cfg = load_config(PRODUCTION)
    tables = cfg.features.tables
    rows = [t.num_embeddings for t in tables]
    assert len(tables) >= 40
    assert sum(rows) >= 5_000_000_000
    assert sum(r > 100_000_000 for r in rows) >= 3
    assert all(64 <= t.dim <= 256 for t in tables)
    assert cfg.model.bottom.type == "dtrn" and cfg.model.fusion.type == "adatt"
    assert len({s.behavior for s in cfg.features.sequences}) >= 3
    # Every table is read by some feature, so every one is built and planned.
    used = {f.table for f in cfg.features.sparse} | {s.table for s in cfg.features.sequences}
    assert used == {t.name for t in tables}


def test_meta_build_of_production_model_allocates_no_table_memory():
    cfg = load_config(PRODUCTION)
    before = _rss_bytes()
    model = build_model(cfg.schema, cfg.model, device=torch.device("meta"))
    grown = _rss_bytes() - before
    tables = [p for m in (model.ebc, model.ec) for p in m.parameters()]
    table_bytes = sum(p.numel() * p.element_size() for p in tables)
    assert table_bytes > 2 * 1024 * GIB  # 2.4 TiB of fp32 weights ...
    assert all(p.is_meta for p in tables)
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if not p.is_meta)
    assert grown < dense_bytes + GIB, f"building on meta grew RSS by {grown / GIB:.2f} GiB"  # ... none allocated


@pytest.mark.parametrize("world_size", [64, 128])
def test_production_config_plans_onto_h100_cluster(world_size, tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = plan_cli.main(
        ["--config", str(PRODUCTION), "--world-size", str(world_size), "--device", "cuda", "--hbm-gb", "80",
         "--ddr-gb", "2048", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    result = json.loads(out.read_text())
    assert result["world_size"] == world_size and result["fits"] is True
    assert len(result["per_rank_hbm_bytes"]) == world_size == len(result["per_rank_ddr_bytes"])
    cfg = load_config(PRODUCTION)
    expected = sum(t.num_embeddings * t.dim * 4 for t in cfg.features.tables)
    assert result["total_embedding_bytes"] == expected
    assert sum(result["per_rank_hbm_bytes"]) + sum(result["per_rank_ddr_bytes"]) >= expected
    # Every rank stays within the HBM left after the reservation.
    assert max(result["per_rank_hbm_bytes"]) <= result["hbm_usable_bytes_per_rank"]
    assert result["hbm_cap_bytes_per_rank"] == 80 * GIB
    assert result["ddr_cap_bytes_per_rank"] == 2048 * GIB // 8
    assert set(result["tables"]) == {t.name for t in cfg.features.tables}
    for name, table in result["tables"].items():
        assert table["ranks"] and set(table["ranks"]) <= set(range(world_size)), name
        assert table["sharding_type"] in {"table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel"}
        assert table["hbm_bytes"] + table["ddr_bytes"] >= table["weight_bytes"], name
    assert len(result["tables"]["user"]["ranks"]) > 1  # the 1.3 B-row table is split
    assert result["perf_estimate_ms"] > 0
    assert "planner perf estimate" in printed and "user" in printed and f"{world_size - 1:>5} " in printed


def test_too_small_cluster_exits_nonzero_and_says_what_is_missing(tmp_path):
    out = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "fusionrec.pipeline.plan", "--config", str(PRODUCTION), "--world-size", "2",
           "--hbm-gb", "80", "--ddr-gb", "2048", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "do not fit on 2 GPU(s)" in proc.stderr
    assert "missing:" in proc.stderr
    for hint in ("more GPUs", "UVM caching", "fp16"):
        assert hint in proc.stderr, hint
    result = json.loads(out.read_text())
    assert result["fits"] is False and result["world_size"] == 2
    usable = 2 * result["hbm_usable_bytes_per_rank"]
    # The production constraints pin the big tables to HBM kernels: they must fit in HBM.
    assert result["needed_bytes"] >= result["hbm_only_bytes"] > 0.99 * result["needed_bytes"]
    assert result["missing_bytes"] == result["hbm_only_bytes"] - usable > 2000 * GIB
    assert result["ranks_needed_at_least"] > 2 and result["ranks_needed_at_least"] % 8 == 0


def test_cli_rejects_partial_hosts_and_missing_memory(capsys):
    assert plan_cli.main(["--config", str(PRODUCTION), "--world-size", "12", "--ddr-gb", "1024"]) == 2
    assert "whole number of hosts" in capsys.readouterr().err
    assert plan_cli.main(["--config", str(DEMO), "--world-size", "8", "--ddr-gb", "64"]) == 2
    assert "--hbm-gb" in capsys.readouterr().err


def test_rank_ranges():
    assert rank_ranges([3, 0, 1, 2, 8, 10, 9]) == "0-3,8-10"
    assert rank_ranges([5]) == "5"
    assert rank_ranges([]) == "-"


def test_fit_report_counts_pinned_tables_against_hbm_and_others_against_host_memory():
    big = TableSize("big", 1_000_000, 128, 1_000_000 * 128 * 4, ["fused"])
    free = TableSize("free", 1_000_000, 128, 1_000_000 * 128 * 4, None)
    # 2 ranks x 0.2 GiB HBM: the pinned table (0.48 GiB + row-wise Adagrad state) does not fit.
    r = fit_report([big, free], "rowwise_adagrad", 2, 8, "cuda", hbm_usable_per_rank=GIB // 5, ddr_per_rank=4 * GIB)
    assert r.optimizer_bytes == 2 * 1_000_000 * 4
    assert r.missing_bytes == big.weight_bytes + 4_000_000 - 2 * (GIB // 5)
    text = format_fit_report(r)
    assert "missing:" in text and "pin" in text and "UVM caching" in text
    # Unpinned, both may spill to host memory: nothing is missing in total.
    r = fit_report([free], "adam", 2, 8, "cuda", hbm_usable_per_rank=GIB // 5, ddr_per_rank=4 * GIB)
    assert r.missing_bytes == 0 and r.optimizer_bytes == 2 * free.weight_bytes
    assert "no placement" in format_fit_report(r)
    # CPU ranks: everything lives in host memory.
    r = fit_report([big], "sgd", 4, 8, "cpu", hbm_usable_per_rank=0, ddr_per_rank=GIB // 10)
    assert r.missing_bytes == big.weight_bytes - 4 * (GIB // 10) and r.ranks_needed == 5


def test_recorder_summary_from_a_cpu_plan():
    cfg = load_config(DEMO)
    model = build_model(cfg.schema, cfg.model, device=torch.device("meta"))
    recorder = PlanRecorder()
    planner = make_planner(
        cfg.sharding, [t.name for t in cfg.features.tables], 2, 2, "cpu", 256,
        MachineMemory(hbm_bytes=0, ddr_bytes=8 * GIB), stats=[recorder],
    )  # fmt: skip
    planner.plan(model, default_sharders())
    summary = recorder.summary()
    assert summary is not None and summary.world_size == 2 and summary.compute_device == "cpu"
    assert summary.total_embedding_bytes == sum(t.num_embeddings * t.dim * 4 for t in cfg.features.tables)
    assert sum(summary.per_rank_ddr_bytes) >= summary.total_embedding_bytes
    assert sum(summary.per_rank_hbm_bytes) == 0
    by_name = {t.name: t for t in summary.tables}
    assert by_name["user"].sharding_type == "row_wise" and by_name["user"].ranks == [0, 1]
    text = format_memory_summary(summary)
    assert "host memory" in text and "planner perf estimate" in text
    assert "user" in format_table_plan(summary)


def test_plan_and_shard_passes_stats_to_the_planner(tmp_path):
    """The call pipeline/train.py makes: a one-rank gloo group plans (rank 0) and fills the recorder."""
    cfg = load_config(DEMO)
    model = build_model(cfg.schema, cfg.model, device=torch.device("meta"))
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        recorder = PlanRecorder()
        sharding = ShardingConfig(ddr_gb=4.0)  # the demo constraints name two-rank splits
        plan_and_shard(
            model, sharding, [t.name for t in cfg.features.tables], torch.device("cpu"), 64, 1, stats=[recorder]
        )
        summary = recorder.summary()
        assert summary is not None and summary.world_size == 1
        assert {t.name for t in summary.tables} == {t.name for t in cfg.features.tables}
        assert summary.per_rank_ddr_bytes[0] >= summary.total_embedding_bytes
    finally:
        dist.destroy_process_group()


def test_planner_counts_the_collision_maps():
    """The demo with user (20,000 rows, LRU) and item (50,000 rows, LFU) collision-managed,
    both row_wise over 2 CPU ranks, batch 256: TorchRec counts the tables; the maps add, per
    rank, 24 B per row (sorted ids, rows, one eviction field) and the admission history,
    ids x interval 1 x 1.25 slots of 16 B (LRU: id, last access) or 8 B (LFU: id). user:
    10,000 x 24 + 1 x 512 x 1.25 x 16 = 250,240; item: 25,000 x 24 + 41 x 512 x 1.25 x 8 =
    809,920 (41 item ids per row: the id and three sequences of 20, 10 and 10)."""
    totals = []
    for collision in ([], ["features.tables.user.collision.eviction=lru", "features.tables.item.collision.eviction=lfu"]):
        cfg = load_config(DEMO, ["sharding.constraints.item.sharding_types=[row_wise]", *collision])
        model = build_meta_model(cfg, cfg.train.sparse_optimizer, 2)
        recorder = PlanRecorder()
        planner = make_planner(
            cfg.sharding, [t.name for t in cfg.features.tables], 2, 2, "cpu", 256,
            MachineMemory(hbm_bytes=0, ddr_bytes=8 * GIB), stats=[recorder],
            collision_ids_per_step=collision_ids_per_step(cfg, 256, 2),
        )  # fmt: skip
        planner.plan(model, default_sharders())
        totals.append(sum(recorder.summary().per_rank_ddr_bytes))
    assert totals[1] - totals[0] == 2 * (250_240 + 809_920)
