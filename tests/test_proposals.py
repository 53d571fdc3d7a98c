"""``sharding.proposals``: which plans the planner weighs (sharding.planner.make_proposers),
planned with TorchRec's planner on meta-device models (no process group)."""

from __future__ import annotations

import pytest
from torchrec.distributed.planner.proposers import GreedyProposer, GridSearchProposer, UniformProposer

from fusionrec.pipeline.config import load_config
from fusionrec.pipeline.job import build_meta_model
from fusionrec.sharding.planner import (
    GIB,
    MachineMemory,
    SequenceTableSharder,
    StagedProposer,
    default_sharders,
    make_planner,
    make_proposers,
)
from fusionrec.sharding.report import PlanRecorder
from tests.launch import REPO

DEMO = REPO / "configs/demo.yaml"
CENSUS = REPO / "configs/census.yaml"
MIB = 2**20


def planned_types(config, sets: list[str], ddr_bytes: int = 8 * GIB, world: int = 2) -> dict[str, str]:
    """table → sharding type of the plan for ``world`` CPU ranks."""
    cfg = load_config(config, sets)
    model = build_meta_model(cfg, cfg.train.sparse_optimizer, world)
    recorder = PlanRecorder()
    planner = make_planner(cfg.sharding, [t.name for t in cfg.features.tables], world, world, "cpu", 256,
                           MachineMemory(hbm_bytes=0, ddr_bytes=ddr_bytes), stats=[recorder])  # fmt: skip
    planner.plan(model, default_sharders())
    return {t.name: t.sharding_type for t in recorder.summary().tables}


def test_auto_on_cpu_puts_every_table_table_wise_when_they_fit():
    assert set(planned_types(DEMO, ["sharding.constraints={}"]).values()) == {"table_wise"}


def test_auto_on_cpu_replicates_tables_too_small_to_be_worth_a_dist():
    """Census: 31 bag tables of at most 52 rows, no sequences; the cost model rates
    replication above a table-wise split, and data_parallel is one of the first stage's types."""
    assert set(planned_types(CENSUS, []).values()) == {"data_parallel"}


def test_auto_on_cpu_falls_back_to_one_type_the_cost_model_picks_when_table_wise_does_not_fit():
    """With 5.75 MiB per rank (less the planner's reservations for the dense part and 15%),
    item's whole shard (50,000 x 16 fp32 with its row-wise Adagrad state) fits no rank, and the
    row-wise halves of every table do; with 7 MiB the whole tables fit."""
    types = planned_types(DEMO, ["sharding.constraints={}"], ddr_bytes=int(5.75 * MIB))
    assert len(set(types.values())) == 1 and types["item"] != "table_wise"
    assert set(planned_types(DEMO, ["sharding.constraints={}"], ddr_bytes=7 * MIB).values()) == {"table_wise"}


def test_auto_keeps_the_configs_constraints_with_torchrecs_default_proposers():
    """The demo's constraints name three sharding types: no uniform plan exists, so the
    planner weighs mixed ones, as with ``proposals: mixed``."""
    want = {"user": "row_wise", "item": "column_wise", "category": "table_wise", "tag": "table_wise"}
    assert planned_types(DEMO, []) == want
    assert planned_types(DEMO, ["sharding.proposals=mixed"]) == want


def test_uniform_gives_every_table_one_type():
    assert len(set(planned_types(DEMO, ["sharding.constraints={}", "sharding.proposals=uniform"]).values())) == 1


@pytest.mark.parametrize("sets, tables", [
    ([], "user: row_wise; item: column_wise; category: table_wise; tag: table_wise"),
    # collision-managed tables are row_wise only; sequence tables never data_parallel
    (["sharding.constraints={}", "features.tables.user.collision.eviction=lru",
      "sharding.constraints.item.sharding_types=[table_wise]"], "user: row_wise; item: table_wise"),
    (["sharding.constraints={}", *[f"sharding.constraints.{t}.sharding_types=[data_parallel]"
                                   for t in ("user", "category", "tag")]],
     "user: data_parallel; item: table_wise, row_wise, column_wise; category: data_parallel; tag: data_parallel"),
])  # fmt: skip
def test_uniform_with_constraints_that_leave_no_common_type_is_a_config_error(sets, tables):
    with pytest.raises(ValueError) as err:
        load_config(DEMO, [*sets, "sharding.proposals=uniform"])
    assert str(err.value).endswith(f"sharding.proposals: uniform needs a sharding type that every table allows; "
                                   f"none is common to {tables}")  # fmt: skip


def test_proposers_per_device():
    assert [type(p) for p in make_proposers("auto", "cuda")] == [
        GridSearchProposer, GreedyProposer, GreedyProposer, UniformProposer]  # fmt: skip
    assert [type(p) for p in make_proposers("mixed", "cpu")] == [type(p) for p in make_proposers("auto", "cuda")]
    assert [type(p) for p in make_proposers("uniform", "cuda")] == [UniformProposer]
    assert [type(p) for p in make_proposers("auto", "cpu")] == [StagedProposer]


def test_sequence_tables_are_never_data_parallel():
    """TorchRec 1.8's data-parallel EmbeddingCollection fails in the forward; tables of 10 rows
    would otherwise be replicated like census's."""
    assert "data_parallel" not in SequenceTableSharder().sharding_types("cpu")
    tiny = [f"features.tables.{t}.num_embeddings=10" for t in ("user", "item", "category", "tag")]
    types = planned_types(DEMO, ["sharding.constraints={}", *tiny])
    assert types["item"] != "data_parallel" and len(set(types.values())) == 1
