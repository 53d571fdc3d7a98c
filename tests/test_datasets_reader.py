"""Parquet reader: path resolution, rank splitting, Arrow → tensor conversion, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from fusionrec.datasets.reader import DataError, ParquetReader, _list_fs, _uri_prefix, read_batches, resolve_paths
from fusionrec.datasets.schema import FeatureSchema, Schema, SequenceFeature, SparseFeature, TableConfig, TaskConfig

SCHEMA = Schema(
    features=FeatureSchema(
        tables=[
            TableConfig("rows", 10**12, 4),  # big enough that row ids map to themselves
            TableConfig("small", 10, 4),  # ids wrap around: id mod 10
            TableConfig("item", 1000, 4),  # shared by item_id and the sequence
        ],
        dense=["d0", "d1"],
        sparse=[
            SparseFeature("row_id", "rows"),
            SparseFeature("tag", "small"),
            SparseFeature("tags", "small", multi_valued=True, max_len=3),
            SparseFeature("item_id", "item"),
        ],
        sequences=[SequenceFeature("hist", "item", behavior="click", max_len=4)],
        weight_column="w",
    ),
    tasks=[TaskConfig("y0"), TaskConfig("y1", space="y0")],
)
SIZES = [37, 0, 101, 5, 64]  # uneven files, one empty
GROUPS = [10, 7, 30, 2, 64]  # row group size per file


def make_rows(start: int, n: int, rng: np.random.Generator, nulls: bool = True) -> dict[str, list]:
    """Python rows with ids beyond the table sizes, negative ids, long lists and some nulls."""

    def maybe(value, p=0.1):
        return None if nulls and rng.random() < p else value

    def ids(k: int) -> list:
        return [int(v) for v in rng.integers(-50, 5000, k)]

    return {
        "row_id": list(range(start, start + n)),
        "d0": [float(rng.normal()) for _ in range(n)],
        "d1": [maybe(float(rng.normal())) for _ in range(n)],
        "tag": [maybe(int(rng.integers(-30, 30))) for _ in range(n)],
        "tags": [maybe(ids(int(rng.integers(0, 7)))) for _ in range(n)],
        "item_id": [int(rng.integers(0, 3000)) for _ in range(n)],
        "hist": [
            [v if not nulls or rng.random() > 0.1 else None for v in ids(int(rng.integers(0, 9)))] for _ in range(n)
        ],
        "y0": [float(rng.integers(0, 2)) for _ in range(n)],
        "y1": [float(rng.integers(0, 2)) for _ in range(n)],
        "w": [maybe(float(rng.uniform(0.5, 2.0))) for _ in range(n)],
    }


ARROW = pa.schema(
    [
        ("row_id", pa.int64()),
        ("d0", pa.float32()),
        ("d1", pa.float64()),
        ("tag", pa.int32()),
        ("tags", pa.list_(pa.int64())),
        ("item_id", pa.int64()),
        ("hist", pa.large_list(pa.int64())),
        ("y0", pa.float32()),
        ("y1", pa.float32()),
        ("w", pa.float32()),
        ("unused", pa.string()),
    ]
)


def write(path: Path, rows: dict[str, list], row_group_size: int, schema: pa.Schema = ARROW) -> Path:
    n = len(rows["row_id"])
    data = {**rows, "unused": ["x"] * n}
    table = pa.table({f.name: pa.array(data[f.name], type=f.type) for f in schema}, schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[list[str], dict[int, dict]]:
    """Files of uneven sizes and row groups; every row by row id."""
    folder = tmp_path_factory.mktemp("reader")
    rng = np.random.default_rng(0)
    paths, rows_by_id, start = [], {}, 0
    for i, (n, g) in enumerate(zip(SIZES, GROUPS)):
        rows = make_rows(start, n, rng)
        paths.append(str(write(folder / f"part-{i:05d}.parquet", rows, g)))
        for j in range(n):
            rows_by_id[start + j] = {k: v[j] for k, v in rows.items()}
        start += n
    return paths, rows_by_id


def row_ids(batch) -> list[int]:
    jt = batch.sparse["row_id"]
    assert (jt.lengths() == 1).all()
    return jt.values().tolist()


# ----------------------------------------------------------------------------- splitting


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 8, 25])
def test_ranks_read_contiguous_disjoint_slices(dataset, world_size, batch_size):
    paths, rows = dataset
    n = len(rows)
    steps = (n // world_size) // batch_size
    seen = []
    for rank in range(world_size):
        reader = ParquetReader(paths[::-1], SCHEMA, batch_size, rank, world_size)  # order given does not matter
        batches = list(reader)
        assert len(batches) == reader.num_batches == len(reader) == steps
        assert all(b.batch_size == batch_size for b in batches)
        ids = [i for b in batches for i in row_ids(b)]
        start = rank * n // world_size
        assert ids == list(range(start, start + steps * batch_size))
        assert reader.rows_dropped == (rank + 1) * n // world_size - start - steps * batch_size
        seen += ids
    assert len(seen) == len(set(seen)) == n - reader.total_rows_dropped


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_drop_last_false_reads_every_row_once(dataset, world_size):
    paths, rows = dataset
    seen, counts = [], []
    for rank in range(world_size):
        reader = ParquetReader(paths, SCHEMA, 16, rank, world_size, drop_last=False)
        batches = list(reader)
        assert len(batches) == reader.num_batches and reader.rows_dropped == 0
        assert all(b.batch_size == 16 for b in batches[:-1]) and 0 < batches[-1].batch_size <= 16
        counts.append(len(batches))
        seen += [i for b in batches for i in row_ids(b)]
    assert sorted(seen) == list(range(len(rows)))
    assert max(counts) - min(counts) <= 1


def test_dataloader_workers_share_a_rank(dataset):
    paths, _ = dataset
    reader = ParquetReader(paths, SCHEMA, 8, rank=1, world_size=2)
    expected = [i for b in reader for i in row_ids(b)]
    loader = torch.utils.data.DataLoader(reader, batch_size=None, num_workers=2)
    got = [i for b in loader for i in row_ids(b)]
    assert sorted(got) == expected and len(got) == reader.num_batches * 8


# ----------------------------------------------------------------------------- content


def expected_ids(values, n_emb: int, max_len: int | None, keep: str) -> list[int]:
    """Pure-Python reference: nulls dropped, then truncated, then mod mapped."""
    if values is None:
        return []
    if not isinstance(values, list):
        values = [values]
    values = [v for v in values if v is not None]
    if max_len is not None and len(values) > max_len:
        values = values[:max_len] if keep == "first" else values[-max_len:]
    return [v % n_emb for v in values]


def test_tensors_match_a_pure_python_reading(dataset):
    paths, rows = dataset
    f = SCHEMA.features
    rules = {
        "row_id": (10**12, None, "first"),
        "tag": (10, None, "first"),
        "tags": (10, 3, "first"),
        "item_id": (1000, None, "first"),
        "hist": (1000, 4, "last"),
    }
    assert [s.name for s in f.pooled_features] == ["row_id", "tag", "tags"]
    assert [s.name for s in f.sequence_table_features] == ["hist", "item_id"]
    checked = 0
    for rank in range(2):
        for batch in ParquetReader(paths, SCHEMA, 16, rank, 2, drop_last=False):
            ids = row_ids(batch)
            B = len(ids)
            assert batch.dense.shape == (B, 2) and batch.dense.dtype == torch.float32
            assert batch.labels.shape == (B, 2) and batch.weights.shape == (B,)
            for kjt, keys in ((batch.sparse, ["row_id", "tag", "tags"]), (batch.sequence, ["hist", "item_id"])):
                assert kjt.keys() == keys and kjt.stride() == B
                assert kjt.values().dtype == torch.int64
                offset = 0
                for k, key in enumerate(keys):  # values are concatenated key-major
                    lengths = kjt.lengths()[k * B : (k + 1) * B].tolist()
                    want = [expected_ids(rows[i][key], *rules[key]) for i in ids]
                    assert lengths == [len(w) for w in want], key
                    total = sum(lengths)
                    assert kjt.values()[offset : offset + total].tolist() == [v for w in want for v in w], key
                    offset += total
            for j, i in enumerate(ids):
                row = rows[i]
                assert batch.dense[j].tolist() == pytest.approx([row["d0"], row["d1"] or 0.0], rel=1e-6)
                assert batch.labels[j].tolist() == [row["y0"], row["y1"]]
                assert batch.weights[j].item() == pytest.approx(1.0 if row["w"] is None else row["w"], rel=1e-6)
                checked += 1
    assert checked == len(rows)


def test_null_counters(dataset):
    paths, rows = dataset
    reader = ParquetReader(paths, SCHEMA, 1000, drop_last=False)
    batches = list(reader)
    per_column = reader.data_stats(per_column=True)
    assert per_column["null_dense_filled/d1"] == sum(r["d1"] is None for r in rows.values())
    assert per_column["null_ids_as_empty/tag"] == sum(r["tag"] is None for r in rows.values())
    assert per_column["null_ids_as_empty/tags"] == sum(r["tags"] is None for r in rows.values())
    assert per_column["null_weight_filled/w"] == sum(r["w"] is None for r in rows.values())
    assert per_column["null_list_ids_dropped/hist"] == sum(v is None for r in rows.values() for v in r["hist"])
    totals = reader.data_stats()
    assert totals["null_ids_as_empty"] == per_column["null_ids_as_empty/tag"] + per_column["null_ids_as_empty/tags"]
    assert totals["empty_files_skipped"] == 1  # SIZES has one empty file
    # every batch reports its own rows' events; they add up to the reader's totals
    summed: dict[str, int] = {}
    for b in batches:
        for key, value in b.stats.items():
            summed[key] = summed.get(key, 0) + value
    assert summed == {k: v for k, v in per_column.items() if k != "empty_files_skipped"}


def test_other_column_types(tmp_path):
    """uint64 ids, bool labels, int dense values and list<int32> are accepted."""
    schema = Schema(
        features=FeatureSchema(
            tables=[TableConfig("t", 7, 2)],
            dense=["x"],
            sparse=[SparseFeature("a", "t"), SparseFeature("b", "t", multi_valued=True, max_len=2)],
        ),
        tasks=[TaskConfig("y")],
    )
    big = 2**64 - 1
    table = pa.table(
        {
            "x": pa.array([1, 2, 3], pa.int16()),
            "a": pa.array([big, 5, 9], pa.uint64()),
            "b": pa.array([[1, 8, 15], [], None], pa.list_(pa.int32())),
            "y": pa.array([True, False, None]),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    (batch,) = read_batches(str(tmp_path), schema, 3)
    assert batch.dense[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert batch.labels[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert batch.weights.tolist() == [1.0, 1.0, 1.0]
    assert batch.sparse["a"].values().tolist() == [big % 7, 5, 2]
    assert batch.sparse["b"].lengths().tolist() == [2, 0, 0]
    assert batch.sparse["b"].values().tolist() == [1, 1]
    assert batch.sequence.keys() == [] and batch.sequence.stride() == 3


def test_batches_span_row_groups_and_files(tmp_path):
    rng = np.random.default_rng(1)
    paths = [write(tmp_path / f"{i}.parquet", make_rows(10 * i, 10, rng, nulls=False), 3) for i in range(3)]
    batches = list(ParquetReader([str(p) for p in paths], SCHEMA, 7, drop_last=False))
    assert [b.batch_size for b in batches] == [7, 7, 7, 7, 2]
    assert [i for b in batches for i in row_ids(b)] == list(range(30))


# ----------------------------------------------------------------------------- paths


def test_resolve_paths(dataset, tmp_path):
    paths, _ = dataset
    folder = Path(paths[0]).parent
    (folder / "_SUCCESS").write_text("")
    shutil.copy(paths[0], folder / ".hidden.parquet")
    assert resolve_paths(str(folder)) == sorted(paths)
    assert resolve_paths(f"file://{folder}") == sorted(paths)
    assert resolve_paths(str(folder / "part-0000[12].parquet")) == paths[1:3]
    assert resolve_paths(f"file://{folder}/part-0000[12].parquet") == paths[1:3]
    assert resolve_paths(paths[3]) == [paths[3]]
    assert resolve_paths(f"file://{paths[3]}") == [paths[3]]
    for missing in (str(tmp_path / "nope"), str(tmp_path / "*.parquet"), str(tmp_path), f"file://{tmp_path}/x"):
        with pytest.raises(DataError, match="no Parquet files match") as err:
            resolve_paths(missing)
        assert missing in str(err.value)
    # a URI-addressed reader reads like a path-addressed one
    reader = ParquetReader(f"file://{folder}", SCHEMA, 10)
    assert reader.paths == sorted(paths) and reader.num_batches == sum(SIZES) // 10


def test_remote_listing_and_uri_mapping():
    fs = pafs._MockFileSystem()
    for name in ("bucket/d/a.parquet", "bucket/d/b.parquet", "bucket/d/_tmp.parquet", "bucket/d/x.txt",
                 "bucket/d/sub/c.parquet"):
        fs.create_dir(name.rsplit("/", 1)[0])
        with fs.open_output_stream(name) as out:
            out.write(b"")
    assert _list_fs(fs, "bucket/d", None, "s3://bucket/d") == ["bucket/d/a.parquet", "bucket/d/b.parquet"]
    assert _list_fs(fs, "bucket/d", "b*.parquet", "s3://bucket/d/b*") == ["bucket/d/b.parquet"]
    assert _list_fs(fs, "bucket/d", "*/*.parquet", "s3://bucket/d/*/*") == ["bucket/d/sub/c.parquet"]
    assert _list_fs(fs, "bucket", "**/*.parquet", "s3://bucket/**/*")[-1] == "bucket/d/sub/c.parquet"
    with pytest.raises(DataError, match="no Parquet files match"):
        _list_fs(fs, "bucket", "*.parquet", "s3://bucket/*.parquet")
    assert _list_fs(fs, "bucket/d/a.parquet", None, "s3://bucket/d/a.parquet") == ["bucket/d/a.parquet"]
    with pytest.raises(DataError, match="s3://bucket/e"):
        _list_fs(fs, "bucket/e", None, "s3://bucket/e")
    assert _uri_prefix("s3://bucket/d/", "bucket/d", "s3://bucket/d/") == "s3://"
    assert _uri_prefix("hdfs://nn:8020/data", "/data", "hdfs://nn:8020/data") == "hdfs://nn:8020"


# ----------------------------------------------------------------------------- errors


def small_file(path: Path, schema: pa.Schema = ARROW) -> str:
    return str(write(path, make_rows(0, 20, np.random.default_rng(2), nulls=False), 8, schema))


def replace_field(name: str, new_type: pa.DataType) -> pa.Schema:
    return pa.schema([pa.field(f.name, new_type) if f.name == name else f for f in ARROW])


def test_missing_column_names_file_and_column(tmp_path):
    bad = small_file(tmp_path / "bad.parquet", pa.schema([f for f in ARROW if f.name != "d1"]))
    with pytest.raises(DataError, match=r"bad\.parquet: missing column 'd1' \(dense feature\)"):
        ParquetReader([bad], SCHEMA, 4)


@pytest.mark.parametrize(
    "column, arrow_type, hint",
    [
        ("tag", pa.float64(), "expected an integer or string column"),
        ("row_id", pa.list_(pa.int64()), "multi_valued"),
        ("tags", pa.int64(), "expected a list<integer> or list<string> column"),
        ("hist", pa.list_(pa.float32()), "sequence feature"),
        ("y1", pa.string(), "label of task 'y1'"),
    ],
)
def test_wrong_type_names_file_and_column(tmp_path, column, arrow_type, hint):
    rows = make_rows(0, 5, np.random.default_rng(3), nulls=False)
    if arrow_type == pa.string():
        rows[column] = [str(v) for v in rows[column]]
    elif pa.types.is_list(arrow_type) and column == "row_id":
        rows[column] = [[v] for v in rows[column]]
    elif column == "tags":
        rows[column] = [1] * 5
    bad = str(write(tmp_path / "bad.parquet", rows, 5, replace_field(column, arrow_type)))
    with pytest.raises(DataError, match=rf"bad\.parquet: column '{column}'") as err:
        ParquetReader([bad], SCHEMA, 4)
    assert hint in str(err.value)


def test_mismatched_files_name_both(tmp_path):
    good = small_file(tmp_path / "a.parquet")
    other = small_file(tmp_path / "b.parquet", replace_field("d0", pa.float64()))
    with pytest.raises(DataError) as err:
        ParquetReader([good, other], SCHEMA, 4)
    message = str(err.value)
    assert "b.parquet" in message and "a.parquet" in message and "'d0'" in message


def test_truncated_file_names_the_file(tmp_path):
    good = small_file(tmp_path / "a.parquet")
    data = Path(good).read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.parquet: not a readable Parquet file"):
        ParquetReader(str(tmp_path), SCHEMA, 4)


def test_corrupt_data_pages_name_the_file(tmp_path):
    rows = {k: v * 200 for k, v in make_rows(0, 20, np.random.default_rng(4), nulls=False).items()}
    rows["row_id"] = list(range(4000))
    path = write(tmp_path / "rot.parquet", rows, 4000)
    data = bytearray(path.read_bytes())
    data[100:20000] = b"\xab" * 19900  # footer intact, pages garbage
    path.write_bytes(bytes(data))
    reader = ParquetReader([str(path)], SCHEMA, 100)
    with pytest.raises(DataError, match=r"rot\.parquet: cannot read row group 0"):
        list(reader)


def test_argument_checks(dataset):
    paths, _ = dataset
    with pytest.raises(ValueError, match="rank"):
        ParquetReader(paths, SCHEMA, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        ParquetReader(paths, SCHEMA, 0)
    with pytest.raises(DataError):
        ParquetReader([], SCHEMA, 4)
