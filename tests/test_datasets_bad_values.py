"""One test per bad-input case: the policy applied and the counter that records it; string
ids, weighted pooling, normalisation, group ids; empty and broken files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fusionrec.datasets.hashing import stable_hash
from fusionrec.datasets.reader import DataError, ParquetReader
from fusionrec.datasets.schema import (
    DenseNormalization,
    FeatureSchema,
    Schema,
    SequenceFeature,
    SparseFeature,
    TableConfig,
    TaskConfig,
)


def read_one(tmp_path: Path, table: pa.Table, schema: Schema):
    """(the single batch of ``table``, the reader's per-column counters)."""
    pq.write_table(table, tmp_path / "t.parquet")
    reader = ParquetReader(str(tmp_path), schema, table.num_rows, drop_last=False)
    (batch,) = list(reader)
    return batch, reader.data_stats(per_column=True)


def ids_schema(**features) -> Schema:
    tables = [TableConfig("t", 10, 2), TableConfig("s", 100, 2)]
    return Schema(FeatureSchema(tables=tables, **features), [TaskConfig("y")])


def test_dense_nulls_nan_inf_are_filled_and_normalised(tmp_path):
    norm = {
        "z": DenseNormalization(mean=2.0, std=4.0),
        "lg": DenseNormalization(log=True, mean=1.0, std=2.0, clip=0.5),
    }
    schema = ids_schema(dense=["raw", "z", "lg"], sparse=[SparseFeature("x", "t")], normalization=norm)
    table = pa.table(
        {
            "raw": pa.array([1.5, None, float("nan"), 4.0], pa.float64()),
            "z": pa.array([10, None, 2, -2], pa.int32()),
            "lg": pa.array([math.e - 1, -(math.e**3 - 1), None, float("inf")], pa.float32()),
            "x": pa.array([1, 2, 3, 4]),
            "y": pa.array([0.0, 1.0, 0.0, 1.0]),
        }
    )
    batch, stats = read_one(tmp_path, table, schema)
    assert batch.dense[:, 0].tolist() == [1.5, 0.0, 0.0, 4.0]
    assert batch.dense[:, 1].tolist() == [2.0, 0.0, 0.0, -1.0]  # (x - 2) / 4, null → mean → 0
    assert batch.dense[:, 2].tolist() == pytest.approx([0.0, -0.5, 0.0, 0.0], abs=1e-6)  # log1p, z, clip
    assert stats == {"null_dense_filled/raw": 2, "null_dense_filled/z": 1, "null_dense_filled/lg": 2}


def test_labels_null_nan_out_of_range_and_task_spaces(tmp_path):
    schema = Schema(
        FeatureSchema(tables=[TableConfig("t", 10, 2)], sparse=[SparseFeature("x", "t")]),
        [TaskConfig("click"), TaskConfig("convert", space="click"), TaskConfig("dwell", type="regression")],
    )
    table = pa.table(
        {
            "x": pa.array([1, 2, 3, 4, 5]),
            "click": pa.array([1.0, 0.0, None, 2.0, float("nan")]),
            "convert": pa.array([None, None, 1.0, -1.0, 0.0]),  # row 1: null outside the click space
            "dwell": pa.array([3.5, None, -2.0, 7.0, 0.0]),
        }
    )
    batch, stats = read_one(tmp_path, table, schema)
    assert batch.labels.tolist() == [[1, 0, 3.5], [0, 0, 0], [0, 1, -2], [1, 0, 7], [0, 0, 0]]
    assert stats == {
        "null_label_filled/click": 2,
        "null_label_filled/convert": 1,  # only row 0 is inside the click space
        "null_label_filled/dwell": 1,
        "label_out_of_range_clipped/click": 1,
        "label_out_of_range_clipped/convert": 1,
    }


def test_sample_weights(tmp_path):
    schema = ids_schema(sparse=[SparseFeature("x", "t")], weight_column="w")
    table = pa.table(
        {
            "x": pa.array([1, 2, 3, 4, 5]),
            "y": pa.array([0.0] * 5),
            "w": pa.array([2.0, None, -1.0, float("nan"), 0.5]),
        }
    )
    batch, stats = read_one(tmp_path, table, schema)
    assert batch.weights.tolist() == [2.0, 1.0, 0.0, 0.0, 0.5]
    assert stats == {"null_weight_filled/w": 1, "bad_weight_zeroed/w": 2}


def test_ids_nulls_empty_lists_negative_out_of_range_truncation(tmp_path):
    schema = ids_schema(
        sparse=[SparseFeature("x", "t"), SparseFeature("xs", "t", multi_valued=True, max_len=2)],
        sequences=[SequenceFeature("seq", "s", behavior="click", max_len=2)],
    )
    table = pa.table(
        {
            "x": pa.array([3, None, -1, 25], pa.int64()),
            "xs": pa.array([[1, None, 12], None, [], [4, 5, 6, -7]], pa.list_(pa.int32())),
            "seq": pa.array([[1, 2, 3], [], [150], None], pa.large_list(pa.uint64())),
            "y": pa.array([0.0] * 4),
        }
    )
    batch, stats = read_one(tmp_path, table, schema)
    x = batch.sparse["x"]
    assert x.lengths().tolist() == [1, 0, 1, 1] and x.values().tolist() == [3, 9, 5]
    xs = batch.sparse["xs"]
    assert xs.lengths().tolist() == [2, 0, 0, 2] and xs.values().tolist() == [1, 2, 4, 5]  # first ids kept
    seq = batch.sequence["seq"]
    assert seq.lengths().tolist() == [2, 0, 1, 0] and seq.values().tolist() == [2, 3, 50]  # most recent kept
    assert stats == {
        "null_ids_as_empty/x": 1,
        "ids_negative_wrapped/x": 1,
        "ids_out_of_range_wrapped/x": 1,
        "null_list_ids_dropped/xs": 1,
        "null_ids_as_empty/xs": 1,
        "empty_lists/xs": 1,
        "ids_out_of_range_wrapped/xs": 1,  # 12: wrapped (and counted) before truncation drops it
        "ids_negative_wrapped/xs": 1,
        "ids_truncated/xs": 2,
        "empty_lists/seq": 1,
        "null_ids_as_empty/seq": 1,
        "ids_out_of_range_wrapped/seq": 1,
        "ids_truncated/seq": 1,
    }


def test_a_newest_first_sequence_reads_as_the_same_oldest_first_one(tmp_path):
    """order: newest_first reverses each list on read; truncation then keeps the most recent."""
    oldest_first = [[1, 2, 3, 4, 5], [], [7], [8, 9]]
    batches = []
    for order, lists in (("oldest_first", oldest_first), ("newest_first", [row[::-1] for row in oldest_first])):
        schema = ids_schema(sequences=[SequenceFeature("seq", "s", behavior="click", max_len=3, order=order)])
        table = pa.table({"seq": pa.array(lists, pa.list_(pa.int64())), "y": pa.array([0.0] * 4)})
        (tmp_path / order).mkdir()
        batches.append(read_one(tmp_path / order, table, schema))
    for batch, stats in batches:
        seq = batch.sequence["seq"]
        assert seq.lengths().tolist() == [3, 0, 1, 2] and seq.values().tolist() == [3, 4, 5, 7, 8, 9]
        assert stats == {"ids_truncated/seq": 2, "empty_lists/seq": 1}


def test_string_ids_are_hashed_stably(tmp_path):
    schema = ids_schema(
        sparse=[SparseFeature("city", "s"), SparseFeature("tags", "s", multi_valued=True)],
        group_column="user",
    )
    cities = ["paris", "", None, "zürich"]
    table = pa.table(
        {
            "city": pa.array(cities).dictionary_encode(),
            "tags": pa.array([["a", "b"], [], ["b"], None], pa.list_(pa.large_string())),
            "user": pa.array(["u1", "u2", None, "u1"]),
            "y": pa.array([0.0] * 4),
        }
    )
    batch, stats = read_one(tmp_path, table, schema)
    assert batch.sparse["city"].values().tolist() == [stable_hash(c) % 100 for c in cities if c is not None]
    assert batch.sparse["tags"].values().tolist() == [stable_hash(t) % 100 for t in ("a", "b", "b")]
    u1 = np.uint64(stable_hash("u1")).astype(np.int64)
    assert batch.group_ids.tolist() == [u1, np.uint64(stable_hash("u2")).astype(np.int64), -1, u1]
    assert stats == {
        "null_ids_as_empty/city": 1,
        "null_ids_as_empty/tags": 1,
        "empty_lists/tags": 1,
        "null_group_ids/user": 1,
    }


def test_weighted_pooling_kjt(tmp_path):
    schema = ids_schema(
        sparse=[
            SparseFeature("x", "t"),
            SparseFeature("xs", "t", multi_valued=True, max_len=2, weight_column="xs_w"),
            SparseFeature("one", "s", weight_column="one_w"),
        ],
    )
    assert schema.features.weighted_pooling
    table = pa.table(
        {
            "x": pa.array([1, 2, 3]),
            "xs": pa.array([[1, None, 3], [4, 5], [6]]),
            "xs_w": pa.array([[0.5, 0.7, 0.25], [2.0], [None]], pa.list_(pa.float32())),
            "one": pa.array([7, 8, None]),
            "one_w": pa.array([3.0, None, 4.0]),
            "y": pa.array([0.0] * 3),
        }
    )
    batch, stats = read_one(tmp_path, table, schema)
    kjt = batch.sparse
    assert kjt.weights().dtype == torch.float32
    assert kjt["x"].weights().tolist() == [1.0, 1.0, 1.0]
    assert kjt["xs"].values().tolist() == [1, 3, 4, 5, 6]
    # row 0: the null id and its weight dropped; row 1: weight list too short → 1.0; row 2: null weight → 1.0
    assert kjt["xs"].weights().tolist() == [0.5, 0.25, 1.0, 1.0, 1.0]
    assert kjt["one"].weights().tolist() == [3.0, 1.0]
    assert batch.sequence.weights_or_none() is None
    assert stats == {
        "null_list_ids_dropped/xs": 1,
        "id_weights_mismatch_filled/xs_w": 1,
        "null_id_weights_filled/xs_w": 1,
        "null_id_weights_filled/one_w": 1,
        "null_ids_as_empty/one": 1,
    }


def test_weighted_truncation_keeps_weights_aligned(tmp_path):
    schema = ids_schema(sparse=[SparseFeature("xs", "s", multi_valued=True, max_len=2, weight_column="w")])
    table = pa.table(
        {
            "xs": pa.array([[10, 11, 12], [13]]),
            "w": pa.array([[0.1, 0.2, 0.3], [0.4]], pa.list_(pa.float64())),
            "y": pa.array([0.0, 1.0]),
        }
    )
    batch, stats = read_one(tmp_path, table, schema)
    assert batch.sparse["xs"].values().tolist() == [10, 11, 13]
    assert batch.sparse["xs"].weights().tolist() == pytest.approx([0.1, 0.2, 0.4])
    assert stats == {"ids_truncated/xs": 1}


def test_empty_files_are_skipped_and_counted(tmp_path):
    schema = ids_schema(sparse=[SparseFeature("x", "t")])
    empty = pa.table({"x": pa.array([], pa.int64()), "y": pa.array([], pa.float64())})
    pq.write_table(empty, tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": [1, 2, 3], "y": [0.0, 1.0, 0.0]}), tmp_path / "b.parquet")
    reader = ParquetReader(str(tmp_path), schema, 2, drop_last=False)
    assert reader.total_rows == 3 and [b.batch_size for b in reader] == [2, 1]
    assert reader.data_stats()["empty_files_skipped"] == 1
    only_empty = ParquetReader([str(tmp_path / "a.parquet")], schema, 2)
    assert only_empty.num_batches == 0 and list(only_empty) == []


def test_zero_byte_file_stops_naming_it(tmp_path):
    schema = ids_schema(sparse=[SparseFeature("x", "t")])
    pq.write_table(pa.table({"x": [1], "y": [0.0]}), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"b\.parquet: not a readable Parquet file \(0 bytes"):
        ParquetReader(str(tmp_path), schema, 1)


def test_schema_errors_for_new_columns(tmp_path):
    schema = ids_schema(sparse=[SparseFeature("xs", "t", multi_valued=True, weight_column="xs_w")], group_column="g")
    base = {"xs": pa.array([[1]]), "y": pa.array([0.0]), "g": pa.array([1])}
    pq.write_table(pa.table({**base, "xs_w": pa.array([0.5])}), tmp_path / "w.parquet")
    with pytest.raises(DataError, match=r"w\.parquet: column 'xs_w' \(id weights of 'xs'\).*list<float>"):
        ParquetReader([str(tmp_path / "w.parquet")], schema, 1)
    pq.write_table(pa.table({**base, "xs_w": pa.array([[0.5]]), "g": pa.array([1.5])}), tmp_path / "g.parquet")
    with pytest.raises(DataError, match=r"g\.parquet: column 'g' \(group column\)"):
        ParquetReader([str(tmp_path / "g.parquet")], schema, 1)


def test_files_may_differ_in_dictionary_encoding_only(tmp_path):
    schema = ids_schema(sparse=[SparseFeature("c", "t")])
    pq.write_table(pa.table({"c": pa.array(["a", "b"]), "y": [0.0, 1.0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"c": pa.array(["b", "a"]).dictionary_encode(), "y": [1.0, 0.0]}), tmp_path / "b.parquet")
    (batch,) = ParquetReader(str(tmp_path), schema, 4, drop_last=False)
    a, b = stable_hash("a") % 10, stable_hash("b") % 10
    assert batch.sparse["c"].values().tolist() == [a, b, b, a]
    pq.write_table(pa.table({"c": pa.array([1, 2]), "y": [0.0, 1.0]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet: column 'c' has type int64 but .*a\.parquet has type string"):
        ParquetReader(str(tmp_path), schema, 4)


def test_schema_declaration_checks():
    with pytest.raises(ValueError, match="normalization names"):
        ids_schema(sparse=[SparseFeature("x", "t")], normalization={"nope": DenseNormalization()})
    with pytest.raises(ValueError, match="declared more than once"):
        ids_schema(sparse=[SparseFeature("x", "t", weight_column="x")])
    with pytest.raises(ValueError, match="also declared as inputs"):
        Schema(FeatureSchema(tables=[TableConfig("t", 3, 2)], sparse=[SparseFeature("y", "t")]), [TaskConfig("y")])
    with pytest.raises(ValueError, match="std must be positive"):
        DenseNormalization(std=0.0)
