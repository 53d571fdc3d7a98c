"""Hive-partitioned logs (datasets.partitions) and the follow-mode config rules, in-process:
listing order, windows, completion markers, misplaced files, and the config errors."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusionrec.datasets.partitions import list_partitions, parse_partition_name, partition_order, window
from fusionrec.errors import DataError
from fusionrec.pipeline.config import load_config
from fusionrec.typedconfig import ConfigError
from tests.launch import REPO

KEYS = ["dt", "hour"]
STREAM = REPO / "configs/stream.yaml"


def put(root, name: str, files: int = 1, marker: bool = True) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for j in range(files):
        pq.write_table(pa.table({"x": [j]}), folder / f"part-{j}.parquet")
    if marker:
        (folder / "_SUCCESS").touch()


def test_partitions_are_ordered_by_their_keys_with_integers_as_numbers(tmp_path):
    for name in ["dt=2026-12-02/hour=0", "dt=2026-12-01/hour=10", "dt=2026-12-01/hour=9", "dt=2026-12-01/hour=23"]:
        put(tmp_path, name, files=2)
    found = list_partitions(str(tmp_path), KEYS, "_SUCCESS")
    assert [p.name for p in found] == ["dt=2026-12-01/hour=9", "dt=2026-12-01/hour=10", "dt=2026-12-01/hour=23",
                                       "dt=2026-12-02/hour=0"]  # fmt: skip
    assert found[0].values == ("2026-12-01", "9")
    assert [f.rsplit("/", 1)[1] for f in found[1].files] == ["part-0.parquet", "part-1.parquet"]
    assert all(f.startswith(str(tmp_path / found[1].name)) for f in found[1].files)
    # An integer value sorts before a text value of the same key, so every pair compares.
    assert partition_order(["7"]) < partition_order(["10"]) < partition_order(["07a"])


def test_only_a_partition_with_its_marker_is_complete(tmp_path):
    put(tmp_path, "dt=2026-12-01/hour=1")
    put(tmp_path, "dt=2026-12-01/hour=2", marker=False)  # still being written
    found = list_partitions(str(tmp_path), KEYS, "_SUCCESS")
    assert [(p.name, p.complete) for p in found] == [("dt=2026-12-01/hour=1", True), ("dt=2026-12-01/hour=2", False)]
    assert all(p.complete for p in list_partitions(str(tmp_path), KEYS, None))
    # A custom marker name: neither partition has it.
    assert not any(p.complete for p in list_partitions(str(tmp_path), KEYS, "READY"))


def test_a_directory_without_a_parquet_file_is_no_partition_yet(tmp_path):
    (tmp_path / "dt=2026-12-01/hour=3").mkdir(parents=True)
    (tmp_path / "dt=2026-12-01/hour=3/_SUCCESS").touch()
    put(tmp_path, "dt=2026-12-01/hour=4")
    assert [p.name for p in list_partitions(str(tmp_path), KEYS, "_SUCCESS")] == ["dt=2026-12-01/hour=4"]


def test_a_window_is_inclusive_at_both_ends_in_key_order(tmp_path):
    for hour in (8, 9, 10, 11):
        put(tmp_path, f"dt=2026-12-01/hour={hour}")
    found = list_partitions(str(tmp_path), KEYS, "_SUCCESS")
    assert [p.values[1] for p in window(found, "dt=2026-12-01/hour=9", "dt=2026-12-01/hour=10", KEYS)] == ["9", "10"]
    assert [p.values[1] for p in window(found, "dt=2026-12-01/hour=10", None, KEYS)] == ["10", "11"]
    assert [p.values[1] for p in window(found, None, "dt=2026-12-01/hour=8", KEYS)] == ["8"]
    form = r"dt=\.\.\./hour=\.\.\."
    with pytest.raises(DataError, match=rf"data\.partitioning\.first: 'hour=9' is not a partition of the form {form}"):
        window(found, "hour=9", None, KEYS)
    assert parse_partition_name("dt=2026-12-01/hour=9/", KEYS, "x") == ("2026-12-01", "9")


def test_a_file_outside_the_partition_directories_is_named(tmp_path):
    put(tmp_path, "dt=2026-12-01/hour=1")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "dt=2026-12-01" / "stray.parquet")  # one level short
    with pytest.raises(DataError, match=r"dt=2026-12-01/stray\.parquet: not inside a partition directory dt=\.\.\./hour=\.\.\."):
        list_partitions(str(tmp_path), KEYS, "_SUCCESS")


def test_a_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such directory \(the root of the partitioned log\)"):
        list_partitions(str(tmp_path / "nowhere"), KEYS, "_SUCCESS")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.partitioning=null"], r"train\.follow needs data\.partitioning"),
        (["train.max_steps=100"], r"leave train\.epochs at 1 and train\.max_steps null"),
        (["train.lr_schedule.decay=cosine"], r"train\.lr_schedule\.decay: a followed log has no last step"),
        (["train.eval_every_n_steps=10", "data.eval=data/stream-eval"],
         r"train\.eval_every_n_steps: follow mode scores each partition"),
        (["train.follow.pol_interval_s=3"], r"pol_interval_s"),
    ],
)
def test_follow_config_errors_name_the_key(overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        load_config(STREAM, overrides)


def test_the_stream_config_loads():
    cfg = load_config(STREAM)
    assert cfg.train.follow.enabled and cfg.data.partitioning.keys == KEYS and cfg.data.partitioning.marker == "_SUCCESS"
