"""The Census-Income (KDD) converter on the real file, and configs/census.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from fusionrec.datasets.census import CATEGORICAL, DENSE, TASKS, WEIGHT, convert, features_config, main

REPO = Path(__file__).resolve().parents[1]
SOURCE = Path(__file__).resolve().parents[2] / "shared/data/census-income-kdd/census-income.test.gz"

pytestmark = pytest.mark.skipif(
    not SOURCE.exists(),
    reason=f"the real Census-Income file is not at {SOURCE} (CI puts ../shared beside the clone)",
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("census")
    return out, convert(SOURCE, out)


def read(folder: Path):
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))])


def test_split_labels_and_columns(converted):
    out, stats = converted
    assert stats["rows"] == {"train": 79810, "valid": 9976, "test": 9976}
    assert len(list((out / "train").glob("*.parquet"))) == 4
    train = read(out / "train")
    # label-defining columns are not inputs; the survey weight is carried but not a feature
    assert set(train.column_names) == set(DENSE) | set(CATEGORICAL) | set(TASKS) | {WEIGHT}
    for gone in ("income_raw", "marital_status", "education"):
        assert gone not in train.column_names
    assert len(CATEGORICAL) == 31 and len(DENSE) == 7
    rates = {t: float(np.mean(train.column(t).to_numpy())) for t in TASKS}
    assert 0.05 < rates["income"] < 0.08 and 0.40 < rates["never_married"] < 0.46
    assert 0.30 < rates["college"] < 0.37
    assert rates == pytest.approx(stats["positive_rate"]["train"], abs=1e-6)
    for c in CATEGORICAL:
        codes = train.column(c).to_numpy()
        assert codes.min() >= 0 and codes.max() < stats["vocab_sizes"][c]
    # the three splits partition the file
    total = sum(read(out / s).num_rows for s in ("train", "valid", "test"))
    assert total == 99762


def test_labels_follow_the_rules_on_known_rows(converted):
    """Children: (almost all) never married, never college, never over 50k."""
    import pyarrow as pa

    out, _ = converted
    rows = pa.concat_tables([read(out / s) for s in ("train", "valid", "test")])
    vocab = json.loads((out / "vocab.json").read_text())
    age = rows.column("age").to_numpy()
    young = age < 14
    assert young.sum() > 1000
    assert rows.column("never_married").to_numpy()[young].mean() > 0.99
    assert (rows.column("college").to_numpy()[young] == 0).all()
    assert (rows.column("income").to_numpy()[young] == 0).all()
    assert "Not in universe" in vocab["class_of_worker"] and "?" in vocab["migration_code_change_in_msa"]


def test_deterministic_by_seed(converted, tmp_path):
    out, stats = converted
    again = convert(SOURCE, tmp_path / "same")
    assert again["normalization"] == stats["normalization"]
    assert read(tmp_path / "same" / "test").equals(read(out / "test"))
    other = convert(SOURCE, tmp_path / "other", seed=1)
    assert not read(tmp_path / "other" / "test").equals(read(out / "test"))
    assert other["vocab_sizes"] == stats["vocab_sizes"]


def test_census_yaml_matches_the_converter_and_loads(converted):
    from fusionrec.pipeline.config import load_config

    _, stats = converted
    cfg = load_config(REPO / "configs" / "census.yaml")
    expected = features_config(stats, dim=cfg.features.tables[0].dim)
    declared = yaml.safe_load((REPO / "configs" / "census.yaml").read_text())
    assert declared["features"] == expected["features"]
    assert declared["tasks"] == expected["tasks"]
    assert cfg.features.weight_column is None  # the survey weight is opt-in
    assert cfg.model.bottom.type == "shared" and cfg.model.fusion.expert_dims == [128, 64]


def test_reader_reads_the_converted_logs(converted):
    from fusionrec.datasets.reader import ParquetReader
    from fusionrec.pipeline.config import load_config

    out, _ = converted
    cfg = load_config(REPO / "configs" / "census.yaml")
    reader = ParquetReader(
        str(out / "valid"), cfg.schema, 1000, drop_last=False, shuffle=True, shuffle_buffer_rows=4000
    )
    batches = list(reader)
    assert sum(b.batch_size for b in batches) == 9976
    dense = np.concatenate([b.dense.numpy() for b in batches])
    assert np.abs(dense.mean(0)).max() < 0.1 and np.abs(dense.std(0) - 1).max() < 0.1  # normalised
    assert batches[0].sparse.keys() == CATEGORICAL
    stats = reader.data_stats()
    assert stats["ids_out_of_range_wrapped"] == stats["null_dense_filled"] == stats["null_label_filled"] == 0


def test_cli(tmp_path, capsys):
    assert main(["--src", str(SOURCE), "--out", str(tmp_path), "--files", "2", "--row-group-size", "5000"]) == 0
    printed = capsys.readouterr().out
    assert "99762 rows" in printed and "income: positive rate" in printed
    assert pq.ParquetFile(next((tmp_path / "train").glob("*.parquet"))).metadata.row_group(0).num_rows == 5000
    assert main(["--src", str(tmp_path / "missing.gz"), "--out", str(tmp_path)]) == 2
    assert "missing.gz" in capsys.readouterr().err
