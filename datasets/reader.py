"""Streaming Parquet → :class:`~datasets.batch.Batch` reader.

Rows are split across ranks by position: with the files in sorted path order and their row
groups in file order, the N rows form one global sequence and rank r of W reads the
contiguous slice ``[r*N//W, (r+1)*N//W)``. Only the Parquet footers are needed to plan this;
each rank then reads only the row groups overlapping its slice, one at a time and only the
schema's columns, slicing at the edges. Batches may span row groups and files.

With ``drop_last=True`` (training) every rank yields exactly ``(N // W) // batch_size``
full batches, so ranks never disagree on the number of steps; the rows left at the end of
each rank's slice are dropped and counted (``rows_dropped``). With ``drop_last=False``
(evaluation) every row is read and each rank's last batch may be partial, so ranks may
differ by one batch; evaluation normally reads in a single process.

Inside a ``torch.utils.data.DataLoader`` with workers, worker w of n reads the contiguous
share ``[w*S//n, (w+1)*S//n)`` of the rank's S batches; the DataLoader interleaves them, so
every batch still comes exactly once (use ``batch_size=None`` in the DataLoader).

Column → tensor policies:

* dense, label and weight columns may be any float, integer or boolean type and become
  float32; nulls read as 0.0 (weights: 1.0) and are counted in ``null_counts``;
* id columns may be any integer type (scalar) or a list / large_list of integers
  (``multi_valued`` features and sequences). An id maps to row ``id mod num_embeddings``
  (floor modulo, so negative ids land in [0, num_embeddings) too). A null scalar id or null
  list is an absent value (length 0); null elements inside a list are dropped; all counted;
* multi-valued features keep their FIRST ``max_len`` ids; sequences (oldest → newest)
  keep their MOST RECENT ``max_len`` ids, the tail of the list;
* all files must give every needed column the same type (list field names aside).
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from datasets.batch import Batch
from datasets.schema import Schema, SequenceFeature, SparseFeature

__all__ = ["DataError", "ParquetReader", "read_batches", "resolve_paths"]

_GLOB_CHARS = "*?["


class DataError(ValueError):
    """A problem with the input files; the message names the file (and column)."""


# ----------------------------------------------------------------------------- paths


def _is_uri(spec: str) -> bool:
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").replace("-", "").isalnum()


def _visible_parquet(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.endswith(".parquet") and not base.startswith((".", "_"))


def resolve_paths(spec: str) -> list[str]:
    """The Parquet files named by ``spec``, sorted.

    ``spec`` is a directory (every ``*.parquet`` directly inside, hidden and ``_``-prefixed
    names skipped), a glob (``data/*/part-*.parquet``; ``**`` recurses), or a single file;
    either a local path or a URI that ``pyarrow.fs.FileSystem.from_uri`` understands
    (``file://``, ``s3://``, ``gs://``, ``hdfs://`` ...). Local and ``file://`` specs give
    local paths, other URIs give URIs of the same scheme and authority.

    Raises:
        DataError: nothing matches, naming ``spec``.
    """
    if not spec:
        raise DataError("empty data path")
    if _is_uri(spec):
        base, query = (spec.split("?", 1) + [""])[:2]
        glob_at = min((base.find(c) for c in _GLOB_CHARS if c in base), default=-1)
        root = base if glob_at < 0 else base[: base.rfind("/", 0, glob_at) + 1]
        try:
            fs, root_path = pafs.FileSystem.from_uri(root + (f"?{query}" if query else ""))
        except (pa.ArrowException, ValueError, OSError) as err:
            raise DataError(f"cannot open data path {spec!r}: {err}") from None
        if isinstance(fs, pafs.LocalFileSystem):
            return _resolve_local(os.path.join(root_path, base[len(root) :]) if glob_at >= 0 else root_path, spec)
        prefix = _uri_prefix(root, root_path, spec)
        suffix = f"?{query}" if query else ""
        return [prefix + p + suffix for p in _list_fs(fs, root_path, base[len(root) :] if glob_at >= 0 else None, spec)]
    return _resolve_local(spec, spec)


def _resolve_local(path: str, spec: str) -> list[str]:
    if any(c in path for c in _GLOB_CHARS):
        found = [p for p in globlib.glob(path, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(path):
        found = [str(p) for p in Path(path).iterdir() if p.is_file() and _visible_parquet(p.name)]
    else:
        found = [path] if os.path.isfile(path) else []
    if not found:
        raise DataError(f"no Parquet files match {spec!r}")
    return sorted(found)


def _uri_prefix(root_uri: str, root_path: str, spec: str) -> str:
    """The part of ``root_uri`` in front of the filesystem path ``root_path``."""
    uri, path = root_uri.rstrip("/"), root_path.rstrip("/")
    if not uri.endswith(path):
        raise DataError(f"cannot map paths of {spec!r} back to URIs (filesystem path {root_path!r})")
    return uri[: len(uri) - len(path)]


def _list_fs(fs: pafs.FileSystem, root: str, pattern: Optional[str], spec: str) -> list[str]:
    try:
        info = fs.get_file_info(root)
        if pattern is None and info.type == pafs.FileType.File:
            return [root]
        if info.type != pafs.FileType.Directory:
            raise DataError(f"no Parquet files match {spec!r}")
        recursive = pattern is not None and ("/" in pattern or "**" in pattern)
        entries = fs.get_file_info(pafs.FileSelector(root, recursive=recursive))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot list data path {spec!r}: {err}") from None
    base = root.rstrip("/") + "/"
    found = []
    for entry in entries:
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(base) :] if entry.path.startswith(base) else entry.base_name
        if pattern is None and _visible_parquet(rel) and "/" not in rel:
            found.append(entry.path)
        elif pattern is not None and _glob_match(rel, pattern):
            found.append(entry.path)
    if not found:
        raise DataError(f"no Parquet files match {spec!r}")
    return sorted(found)


def _glob_match(rel: str, pattern: str) -> bool:
    """Shell-style match of a relative path; ``*`` stays within one folder unless the
    pattern has ``**``, which matches any depth."""
    if "**" in pattern:
        return fnmatch.fnmatchcase(rel, pattern.replace("**/", "*").replace("**", "*"))
    return rel.count("/") == pattern.count("/") and fnmatch.fnmatchcase(rel, pattern)


def _open(path: str) -> pq.ParquetFile:
    """Open one Parquet file (local path or filesystem URI), reading its footer."""
    try:
        if _is_uri(path):
            fs, inner = pafs.FileSystem.from_uri(path)
            return pq.ParquetFile(fs.open_input_file(inner))
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None


# ----------------------------------------------------------------------------- schema check

_FLOAT, _ID, _LIST = "a float (or integer or boolean)", "an integer", "a list<integer>"


def _column_kinds(schema: Schema) -> dict[str, tuple[str, str]]:
    """Needed column → (expected kind, what the schema uses it for)."""
    f = schema.features
    kinds = {name: (_FLOAT, "dense feature") for name in f.dense}
    for s in f.sparse:
        kinds[s.name] = (_LIST, "multi-valued sparse feature") if s.multi_valued else (_ID, "sparse feature")
    for s in f.sequences:
        kinds[s.name] = (_LIST, "sequence feature")
    for t in schema.tasks:
        kinds[t.name] = (_FLOAT, f"label of task {t.name!r}")
    if f.weight_column:
        kinds[f.weight_column] = (_FLOAT, "weight column")
    return kinds


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _fits(kind: str, t: pa.DataType) -> bool:
    if kind == _FLOAT:
        return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)
    if kind == _ID:
        return pa.types.is_integer(t)
    return _is_list(t) and pa.types.is_integer(t.value_type)


def _type_key(t: pa.DataType) -> str:
    """Type identity across files, ignoring the name of a list's value field."""
    return f"{t.__class__.__name__}<{t.value_type}>" if _is_list(t) else str(t)


def check_file_schema(path: str, arrow_schema: pa.Schema, schema: Schema) -> None:
    """Raise DataError naming ``path`` and the column when a needed column is missing or of an
    incompatible type."""
    for name, (kind, role) in _column_kinds(schema).items():
        index = arrow_schema.get_field_index(name)
        if index < 0:
            have = arrow_schema.names
            shown = ", ".join(have[:20]) + (", ..." if len(have) > 20 else "")
            raise DataError(f"{path}: missing column {name!r} ({role}); the file has: {shown}")
        t = arrow_schema.field(index).type
        if not _fits(kind, t):
            hint = ""
            if kind == _ID and _is_list(t):
                hint = " (declare the feature multi_valued to read a list column)"
            raise DataError(f"{path}: column {name!r} ({role}) has type {t}; expected {kind} column{hint}")


# ----------------------------------------------------------------------------- Arrow → numpy


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row index, position within its row) of every element of ragged rows of ``lengths``."""
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    return rows, np.arange(len(rows), dtype=np.int64) - np.repeat(starts, lengths)


def _to_float(arr: pa.Array, fill: float) -> tuple[np.ndarray, int]:
    """[n] float32 and the number of nulls (read as ``fill``)."""
    nulls = arr.null_count
    arr = arr.cast(pa.float32())
    if nulls:
        arr = pc.fill_null(arr, pa.scalar(fill, type=pa.float32()))
    return np.array(arr.to_numpy(zero_copy_only=False), dtype=np.float32), nulls  # a writable copy


def _ids_mod(values: pa.Array, n: int) -> np.ndarray:
    """Integer ids (no nulls) → int64 ``id mod n``."""
    if pa.types.is_uint64(values.type):
        return (values.to_numpy(zero_copy_only=False) % np.uint64(n)).astype(np.int64)
    return np.mod(values.cast(pa.int64()).to_numpy(zero_copy_only=False), n)


@dataclass
class _Jagged:
    """Ragged ids of n rows: row i is ``values[offsets[i]:offsets[i+1]]`` (offsets int64 [n+1],
    not necessarily starting at 0 after slicing)."""

    offsets: np.ndarray
    values: np.ndarray

    def slice(self, a: int, b: int) -> "_Jagged":
        return _Jagged(self.offsets[a : b + 1], self.values)

    def parts(self) -> tuple[np.ndarray, np.ndarray]:
        """(lengths [n] int32, values [sum(lengths)] int64)."""
        return np.diff(self.offsets).astype(np.int32), self.values[self.offsets[0] : self.offsets[-1]]

    @staticmethod
    def from_lengths(lengths: np.ndarray, values: np.ndarray) -> "_Jagged":
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return _Jagged(offsets, values)

    @staticmethod
    def concat(pieces: Sequence["_Jagged"]) -> "_Jagged":
        lengths, values = zip(*(p.parts() for p in pieces))
        return _Jagged.from_lengths(np.concatenate(lengths), np.concatenate(values))


def _jagged(arr: pa.Array, feature: SparseFeature | SequenceFeature, n_emb: int, nulls: dict[str, int]) -> _Jagged:
    """One id column of n rows → truncated, mod-mapped ragged ids."""
    name, n = feature.name, len(arr)
    if not _is_list(arr.type):  # scalar id: length 1, or 0 when null
        if arr.null_count:
            nulls[name] = nulls.get(name, 0) + arr.null_count
            valid = arr.is_valid().to_numpy(zero_copy_only=False)
            return _Jagged.from_lengths(valid.astype(np.int64), _ids_mod(arr.drop_null(), n_emb))
        return _Jagged(np.arange(n + 1, dtype=np.int64), _ids_mod(arr, n_emb))
    if arr.null_count:
        nulls[name] = nulls.get(name, 0) + arr.null_count
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = arr.flatten()  # honours slicing and skips what null lists point at
    if flat.null_count:  # null ids inside lists are dropped
        nulls[name] = nulls.get(name, 0) + flat.null_count
        valid = flat.is_valid().to_numpy(zero_copy_only=False)
        rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
        lengths = np.bincount(rows[valid], minlength=n).astype(np.int64)
        flat = flat.filter(pa.array(valid))
    values = _ids_mod(flat, n_emb)
    max_len = feature.max_len
    if max_len is not None and lengths.size and lengths.max() > max_len:
        rows, pos = _positions(lengths)
        if isinstance(feature, SequenceFeature):
            keep = pos >= lengths[rows] - max_len  # the most recent ids
        else:
            keep = pos < max_len  # the first ids
        values, lengths = values[keep], np.minimum(lengths, max_len)
    return _Jagged.from_lengths(lengths, values)


@dataclass
class _Block:
    """n consecutive rows in tensor-ready numpy form.

    Attributes:
        dense: [n, Dd] float32. labels: [n, T] float32. weights: [n] float32.
        sparse / sequence: ragged ids per KJT key, in key order.
    """

    dense: np.ndarray
    sparse: list[_Jagged]
    sequence: list[_Jagged]
    labels: np.ndarray
    weights: np.ndarray

    @property
    def n(self) -> int:
        return self.labels.shape[0]

    def slice(self, a: int, b: int) -> "_Block":
        return _Block(
            self.dense[a:b],
            [j.slice(a, b) for j in self.sparse],
            [j.slice(a, b) for j in self.sequence],
            self.labels[a:b],
            self.weights[a:b],
        )

    @staticmethod
    def concat(blocks: Sequence["_Block"]) -> "_Block":
        return _Block(
            np.concatenate([b.dense for b in blocks]),
            [_Jagged.concat(js) for js in zip(*(b.sparse for b in blocks))],
            [_Jagged.concat(js) for js in zip(*(b.sequence for b in blocks))],
            np.concatenate([b.labels for b in blocks]),
            np.concatenate([b.weights for b in blocks]),
        )


def _kjt(keys: list[str], jagged: list[_Jagged], stride: int) -> KeyedJaggedTensor:
    """KJT with ``keys``; lengths [len(keys) * stride] int32 and values concatenated key-major."""
    if not keys:
        return KeyedJaggedTensor(
            keys=[], values=torch.empty(0, dtype=torch.int64), lengths=torch.empty(0, dtype=torch.int32), stride=stride
        )
    lengths, values = zip(*(j.parts() for j in jagged))
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(np.concatenate(lengths)),
    )


# ----------------------------------------------------------------------------- the reader


@dataclass(frozen=True)
class _RowGroup:
    file: int  # index into the sorted paths
    index: int  # row group index inside the file
    start: int  # global row index of its first row
    rows: int


class ParquetReader(IterableDataset):
    """Iterates :class:`~datasets.batch.Batch` es of this rank's share of the rows.

    Each batch (B = ``batch_size``; the last one smaller only with ``drop_last=False``):
    dense [B, Dd] float32; sparse KJT (keys ``schema.features.pooled_features``) and sequence
    KJT (keys ``schema.features.sequence_table_features``), int64 values, int32 lengths
    [K*B], stride B; labels [B, T] float32 in task order; weights [B] float32.

    Args:
        paths: Parquet files (local paths or URIs); read in sorted order. A single string
            is resolved with :func:`resolve_paths`.
        schema: the columns to read and how.
        batch_size: rows per batch.
        rank, world_size: this process's share, ``0 <= rank < world_size``.
        drop_last: True: exactly ``(N // world_size) // batch_size`` full batches on every
            rank. False: every row of the rank's slice, the last batch possibly partial.

    Attributes:
        paths: the files, sorted (the global row order).
        total_rows: rows in all files (from the footers).
        null_counts: nulls met so far, by column (counted in the process that iterates,
            so not visible from the parent of DataLoader workers).

    Raises:
        DataError: a file cannot be read, lacks a column, has a column of the wrong type,
            or gives a column another type than the first file does (at construction, from
            the footers); a row group cannot be decoded (during iteration).
    """

    def __init__(
        self,
        paths: list[str],
        schema: Schema,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(paths, (str, os.PathLike)):
            paths = resolve_paths(os.fspath(paths))
        if not paths:
            raise DataError("no Parquet files given")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.paths = sorted(os.fspath(p) for p in paths)
        self.schema = schema
        self.batch_size, self.rank, self.world_size, self.drop_last = batch_size, rank, world_size, drop_last
        f = schema.features
        self.sparse_features = list(f.pooled_features)
        self.sequence_features = list(f.sequence_table_features)
        self.columns = schema.columns
        self.null_counts: dict[str, int] = {}
        self._row_groups = self._plan()

        n, w, b = self.total_rows, world_size, batch_size
        self._start, stop = rank * n // w, (rank + 1) * n // w
        if drop_last:
            self._num_batches = (n // w) // b
            self._stop = self._start + self._num_batches * b
        else:
            self._num_batches = math.ceil((stop - self._start) / b)
            self._stop = stop
        self._rows_dropped = stop - self._stop

    def _plan(self) -> list[_RowGroup]:
        """Read every footer, check the schemas, and lay out the global row order."""
        groups: list[_RowGroup] = []
        first: Optional[tuple[str, dict[str, pa.DataType]]] = None
        start = 0
        for i, path in enumerate(self.paths):
            pf = _open(path)
            try:
                arrow_schema = pf.schema_arrow
                meta = pf.metadata
            except (pa.ArrowException, OSError) as err:
                raise DataError(f"{path}: not a readable Parquet file ({err})") from None
            finally:
                pf.close()
            check_file_schema(path, arrow_schema, self.schema)
            types = {c: arrow_schema.field(c).type for c in self.columns}
            if first is None:
                first = (path, types)
            else:
                for c in self.columns:
                    if _type_key(types[c]) != _type_key(first[1][c]):
                        raise DataError(
                            f"{path}: column {c!r} has type {types[c]} but {first[0]} has type {first[1][c]}; "
                            "all files must share one schema"
                        )
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                if rows:
                    groups.append(_RowGroup(i, g, start, rows))
                    start += rows
        self.total_rows = start
        return groups

    # -- sizes ------------------------------------------------------------------------

    @property
    def num_batches(self) -> int:
        """Batches this rank yields per pass (equal on all ranks when ``drop_last``)."""
        return self._num_batches

    def __len__(self) -> int:
        return self._num_batches

    @property
    def num_rows(self) -> int:
        """Rows this rank yields per pass."""
        return self._stop - self._start

    @property
    def rows_dropped(self) -> int:
        """Rows of this rank's slice that ``drop_last`` leaves out (0 when drop_last=False)."""
        return self._rows_dropped

    @property
    def total_rows_dropped(self) -> int:
        """Rows that no rank reads, summed over all ranks."""
        if not self.drop_last:
            return 0
        return self.total_rows - self.world_size * self._num_batches * self.batch_size

    # -- reading ----------------------------------------------------------------------

    def _worker_range(self) -> tuple[int, int]:
        """Global [lo, hi) row range for this DataLoader worker (the whole rank without one)."""
        info = torch.utils.data.get_worker_info()
        if info is None or info.num_workers == 1:
            return self._start, self._stop
        s, b = self._num_batches, self.batch_size
        w, nw = info.id, info.num_workers
        lo = self._start + (w * s // nw) * b
        hi = min(self._start + ((w + 1) * s // nw) * b, self._stop)
        return lo, hi

    def _blocks(self, lo: int, hi: int) -> Iterator[_Block]:
        """Blocks covering global rows [lo, hi), one per overlapping row group."""
        open_file: Optional[tuple[int, pq.ParquetFile]] = None
        try:
            for g in self._row_groups:
                a, b = max(lo, g.start), min(hi, g.start + g.rows)
                if a >= b:
                    if g.start >= hi:
                        break
                    continue
                path = self.paths[g.file]
                if open_file is None or open_file[0] != g.file:
                    if open_file is not None:
                        open_file[1].close()
                    open_file = (g.file, _open(path))
                try:
                    table = open_file[1].read_row_group(g.index, columns=self.columns)
                except (pa.ArrowException, OSError) as err:
                    raise DataError(f"{path}: cannot read row group {g.index} ({err})") from None
                if a - g.start != 0 or b - a != g.rows:
                    table = table.slice(a - g.start, b - a)
                yield self._convert(table, path)
        finally:
            if open_file is not None:
                open_file[1].close()

    def _convert(self, table: pa.Table, path: str) -> _Block:
        """Arrow rows → numpy block (no per-row Python)."""
        n = table.num_rows
        f = self.schema.features
        cols = {name: table.column(name).combine_chunks() for name in self.columns}

        def floats(name: str, fill: float) -> np.ndarray:
            values, nulls = _to_float(cols[name], fill)
            if nulls:
                self.null_counts[name] = self.null_counts.get(name, 0) + nulls
            return values

        def ids(feat: SparseFeature | SequenceFeature) -> _Jagged:
            return _jagged(cols[feat.name], feat, f.table(feat.table).num_embeddings, self.null_counts)

        dense = np.stack([floats(c, 0.0) for c in f.dense], axis=1) if f.dense else np.zeros((n, 0), np.float32)
        labels = np.stack([floats(t, 0.0) for t in self.schema.task_names], axis=1)
        weights = floats(f.weight_column, 1.0) if f.weight_column else np.ones(n, dtype=np.float32)
        try:
            sparse = [ids(s) for s in self.sparse_features]
            sequence = [ids(s) for s in self.sequence_features]
        except (pa.ArrowException, ValueError) as err:
            raise DataError(f"{path}: cannot convert id columns ({err})") from None
        return _Block(dense, sparse, sequence, labels, weights)

    def _to_batch(self, block: _Block) -> Batch:
        n = block.n
        return Batch(
            dense=torch.from_numpy(np.ascontiguousarray(block.dense)),
            sparse=_kjt([s.name for s in self.sparse_features], block.sparse, n),
            sequence=_kjt([s.name for s in self.sequence_features], block.sequence, n),
            labels=torch.from_numpy(np.ascontiguousarray(block.labels)),
            weights=torch.from_numpy(np.ascontiguousarray(block.weights)),
        )

    def __iter__(self) -> Iterator[Batch]:
        lo, hi = self._worker_range()
        size = self.batch_size
        carry: Optional[_Block] = None
        for block in self._blocks(lo, hi):
            pos = 0
            if carry is not None:  # top up the previous row group's remainder
                take = min(size - carry.n, block.n)
                carry, pos = _Block.concat([carry, block.slice(0, take)]), take
                if carry.n < size:
                    continue
                yield self._to_batch(carry)
                carry = None
            while block.n - pos >= size:
                yield self._to_batch(block.slice(pos, pos + size))
                pos += size
            if pos < block.n:
                carry = block.slice(pos, block.n)
        if carry is not None and carry.n:
            yield self._to_batch(carry)


def read_batches(
    paths: str | list[str],
    schema: Schema,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
) -> Iterator[Batch]:
    """Iterate the batches of ``paths`` (a spec for :func:`resolve_paths`, or a list of files)."""
    files = resolve_paths(paths) if isinstance(paths, str) else paths
    return iter(ParquetReader(files, schema, batch_size, rank, world_size, drop_last))
