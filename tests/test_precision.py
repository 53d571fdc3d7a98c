"""Table precision (``features.tables[].data_type``): fp16 tables reach TorchRec's configs and
its planner (half the bytes), train on 2 gloo ranks with fp32 lookups, and checkpoint and
resume exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torchrec.modules.embedding_configs import DataType

from fusionrec.errors import ConfigError
from fusionrec.models.embeddings import bag_table_configs, sequence_table_configs
from fusionrec.pipeline import plan as plan_cli
from fusionrec.pipeline.config import load_config
from fusionrec.pipeline.job import build_meta_model
from tests.jobs import assert_same_training, checkpoint_tensors, meta, read_log, train
from tests.launch import REPO

DEMO = REPO / "configs/demo.yaml"
PRODUCTION = REPO / "configs/production.yaml"
FP16 = ["--set", "features.tables.user.data_type=fp16", "--set", "features.tables.item.data_type=fp16"]


def test_data_type_reaches_torchrec_configs_and_meta_tables():
    cfg = load_config(DEMO, ["features.tables.user.data_type=fp16", "features.tables.item.data_type=fp16"])
    bags = {c.name: c.data_type for c in bag_table_configs(cfg.features)}
    seqs = {c.name: c.data_type for c in sequence_table_configs(cfg.features)}
    assert bags == {"user": DataType.FP16, "category": DataType.FP32, "tag": DataType.FP32}
    assert seqs == {"item": DataType.FP16}
    model = build_meta_model(cfg, cfg.train.sparse_optimizer)
    dtypes = {name.split(".")[-2]: p.dtype for name, p in [*model.ebc.named_parameters(), *model.ec.named_parameters()]}
    assert dtypes == {"user": torch.float16, "item": torch.float16, "category": torch.float32, "tag": torch.float32}


def test_unsupported_data_type_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"features\.tables.*data_type"):
        load_config(DEMO, ["features.tables.user.data_type=int8"])


def test_unsharded_fp16_lookups_reach_the_dense_part_as_fp32():
    """Without DMP (an unsharded table computes in its own dtype) the model still hands fp32
    fields and sequences to the bottom."""
    from fusionrec.models import build_model
    from torchrec import KeyedJaggedTensor

    from fusionrec.datasets.batch import Batch

    cfg = load_config(DEMO, ["features.tables.user.data_type=fp16", "features.tables.item.data_type=fp16"])
    model = build_model(cfg.schema, cfg.model)
    f = cfg.features
    b = 4

    def kjt(keys):
        lengths = torch.ones(len(keys) * b, dtype=torch.long)
        return KeyedJaggedTensor(keys=keys, values=torch.arange(len(keys) * b) % 100, lengths=lengths)

    batch = Batch(
        dense=torch.randn(b, len(f.dense)),
        sparse=kjt([s.name for s in f.pooled_features]),
        sequence=kjt([s.name for s in f.sequence_table_features]),
        labels=torch.ones(b, len(cfg.tasks)),
        weights=torch.ones(b),
    )
    fields, sequences, _ = model.embed(batch)
    assert {t.dtype for t in [*fields, *sequences]} == {torch.float32}
    loss, _ = model(batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_plan_counts_fp16_bytes_and_fits_production_on_fewer_gpus(tmp_path, capsys):
    """24 H100s cannot hold the production tables in fp32 (the plan job says so and suggests
    fp16); with --data-type fp16 the planner counts half the bytes and they fit."""
    args = ["--config", str(PRODUCTION), "--world-size", "24", "--hbm-gb", "80", "--ddr-gb", "2048"]
    fp32, fp16 = tmp_path / "fp32.json", tmp_path / "fp16.json"
    assert plan_cli.main([*args, "--json", str(fp32)]) == 1
    err = capsys.readouterr().err
    assert "do not fit on 24 GPU(s)" in err and "--data-type fp16" in err
    assert plan_cli.main([*args, "--data-type", "fp16", "--json", str(fp16)]) == 0
    printed = capsys.readouterr().out
    assert "user" in printed and "planner perf estimate" in printed
    r32, r16 = json.loads(fp32.read_text()), json.loads(fp16.read_text())
    assert r32["fits"] is False and r16["fits"] is True
    cfg = load_config(PRODUCTION)
    assert r32["total_embedding_bytes"] == sum(t.num_embeddings * t.dim * 4 for t in cfg.features.tables)
    assert r16["total_embedding_bytes"] == r32["total_embedding_bytes"] // 2
    assert r16["tables"]["user"]["weight_bytes"] == 1_300_000_000 * 128 * 2
    assert max(r16["per_rank_hbm_bytes"]) <= r16["hbm_usable_bytes_per_rank"]


@pytest.mark.slow
def test_fp16_tables_train_on_two_ranks_checkpoint_and_resume_exactly(demo_logs, tmp_path):
    """fp16 user and item tables (row-, column- or table-wise as the planner likes), 2 gloo
    ranks: the loss falls, the checkpoint holds fp16 table shards, and 10 + 10 resumed steps
    give the same weights and optimizer state as 20 straight ones."""
    every = ["--set", "checkpoint.every_n_steps=10", *FP16]
    straight = tmp_path / "straight"
    train(demo_logs, straight, 20, *every)
    losses = [r["loss"] for r in read_log(straight) if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    tensors = checkpoint_tensors(straight / "checkpoints" / "step_00000020", tmp_path)
    assert tensors["model.ebc.embedding_bags.user.weight"].dtype == torch.float16
    assert tensors["model.ec.embeddings.item.weight"].dtype == torch.float16
    assert tensors["model.ebc.embedding_bags.tag.weight"].dtype == torch.float32
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoints" / "step_00000010", resumed / "checkpoints" / "step_00000010")
    proc = train(demo_logs, resumed, 20, "--resume", *every)
    assert "resumed from" in proc.stdout
    assert meta(resumed / "checkpoints" / "step_00000020")["step"] == 20
    assert_same_training(straight / "checkpoints" / "step_00000020", resumed / "checkpoints" / "step_00000020", tmp_path)

